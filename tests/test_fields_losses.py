"""FIELDS' losses (methods/fields/losses.py, fbench/losses/parameters.py) and emotion head, each
against a plain re-computation (numpy, or the formula written out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fbench import metrics
from fbench.losses import parameter_loss
from methods.fields.head import N_EMOTIONS, EmotionHead, EmotionHeadConfig
from methods.fields.losses import (
    FieldsLossConfig,
    base_regulariser,
    emotion_loss,
    exaggeration_loss,
    gt3d_loss,
)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def test_parameter_loss_norms_and_validity_match_numpy():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 7, generator=g, dtype=torch.float64)
    target[3, 2] = float("nan")  # a row without a target
    valid = torch.tensor([True, False, True, True, True])
    keep = np.array([True, False, True, False, True])
    d = _np(pred)[keep] - _np(target)[keep]
    assert parameter_loss(pred, target, valid).item() == pytest.approx(float((d ** 2).mean()), rel=1e-12)
    assert parameter_loss(pred, target, valid, "l1").item() == pytest.approx(float(np.abs(d).mean()), rel=1e-12)
    beta = 0.1
    huber = np.where(np.abs(d) < beta, 0.5 * d ** 2 / beta, np.abs(d) - 0.5 * beta)
    assert parameter_loss(pred, target, valid, "smooth_l1", beta).item() == pytest.approx(float(huber.mean()),
                                                                                           rel=1e-12)
    loss = parameter_loss(pred, target, valid)
    loss.backward()
    assert (pred.grad[1] == 0).all() and (pred.grad[3] == 0).all() and torch.isfinite(pred.grad).all()
    none = parameter_loss(pred, target, torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="norm"):
        parameter_loss(pred, target, norm="l3")  # type: ignore[arg-type]


def _batch(n: int = 8, n_exp: int = 10, seed: int = 1) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    enc = {"expression_params": torch.randn(n, n_exp, generator=g, requires_grad=True),
           "jaw_params": torch.randn(n, 3, generator=g, requires_grad=True),
           "eyelid_params": torch.rand(n, 2, generator=g, requires_grad=True),
           "shape_params": torch.randn(n, 6, generator=g, requires_grad=True)}
    batch = {"flag_gt3d": torch.tensor([True, True, False, True, False, False, True, False])[:n],
             "gt_expression": torch.randn(n, n_exp, generator=g), "gt_jaw": torch.randn(n, 3, generator=g),
             "gt_eyelids": torch.rand(n, 2, generator=g),
             "flag_emotion_class": torch.tensor([True, True, True, False, True, True, False, True])[:n],
             "emotion_class": torch.tensor([0, 3, 5, -1, 1, 7, -1, 2])[:n],
             "flag_va": torch.tensor([True, True, False, False, True, True, True, True])[:n],
             "valence": torch.tensor([0.05, 0.6, 0.0, 0.0, -0.2, 0.9, 0.3, -0.4])[:n],
             "arousal": torch.tensor([0.02, 0.5, 0.0, 0.0, 0.1, -0.7, 0.3, 0.2])[:n]}
    return enc, batch


def test_gt3d_loss_is_expression_plus_weighted_jaw_and_eyelids_on_bp4d_rows_only():
    enc, batch = _batch()
    config = FieldsLossConfig(gt3d_jaw_weight=10.0, gt3d_eyelid_weight=3.0)
    total, terms = gt3d_loss(enc, batch, config)
    rows = batch["flag_gt3d"].numpy()
    mse = lambda a, b: float(((_np(a)[rows] - _np(b)[rows]) ** 2).mean())  # noqa: E731
    want = mse(enc["expression_params"], batch["gt_expression"]) + 10.0 * mse(enc["jaw_params"], batch["gt_jaw"]) \
        + 3.0 * mse(enc["eyelid_params"], batch["gt_eyelids"])
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert terms["gt3d_jaw"].item() == pytest.approx(mse(enc["jaw_params"], batch["gt_jaw"]), rel=1e-5)
    total.backward()
    assert (enc["expression_params"].grad[~batch["flag_gt3d"]] == 0).all()
    assert (enc["expression_params"].grad[batch["flag_gt3d"]] != 0).any()
    # L1 norm and no eyelids
    total, terms = gt3d_loss(enc, batch, FieldsLossConfig(gt3d_norm="l1", gt3d_eyelid_weight=0.0))
    l1 = lambda a, b: float(np.abs(_np(a)[rows] - _np(b)[rows]).mean())  # noqa: E731
    assert "gt3d_eyelids" not in terms
    assert total.item() == pytest.approx(l1(enc["expression_params"], batch["gt_expression"])
                                         + 10.0 * l1(enc["jaw_params"], batch["gt_jaw"]), rel=1e-5)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))


def _plain_emotion_loss(logits, v, a, batch, config: FieldsLossConfig) -> float:
    cls_rows = batch["flag_emotion_class"].numpy()
    va_rows = batch["flag_va"].numpy()
    y = batch["emotion_class"].numpy()
    tv, ta = batch["valence"].numpy().astype(np.float64), batch["arousal"].numpy().astype(np.float64)
    ce = -_log_softmax(_np(logits))[np.arange(len(y)), np.maximum(y, 0)]
    if config.intensity_aware:
        s = np.minimum(1.0, np.hypot(tv, ta) / config.intensity_va_ref)
        w = np.where((y == 0) | ~va_rows, 1.0, config.intensity_floor + (1 - config.intensity_floor) * s)
    else:
        w = np.ones(len(y))
    class_term = (w[cls_rows] * ce[cls_rows]).sum() / w[cls_rows].sum()
    pv, pa = _np(v)[va_rows], _np(a)[va_rows]
    mse = 0.5 * (((pv - tv[va_rows]) ** 2).mean() + ((pa - ta[va_rows]) ** 2).mean())
    ccc = 0.5 * ((1 - metrics.ccc(tv[va_rows], pv)) + (1 - metrics.ccc(ta[va_rows], pa)))
    return config.emo_class_weight * class_term + config.emo_va_mse_weight * mse + config.emo_va_ccc_weight * ccc


@pytest.mark.parametrize("aware", [True, False])
def test_emotion_loss_matches_a_plain_recomputation(aware):
    _, batch = _batch()
    g = torch.Generator().manual_seed(2)
    pred = {"logits": torch.randn(8, N_EMOTIONS, generator=g, requires_grad=True),
            "valence": torch.randn(8, generator=g, requires_grad=True),
            "arousal": torch.randn(8, generator=g, requires_grad=True)}
    config = FieldsLossConfig(intensity_aware=aware, emo_class_weight=0.7, emo_va_mse_weight=1.3,
                              emo_va_ccc_weight=0.4)
    total, terms = emotion_loss(pred, batch, config)
    want = _plain_emotion_loss(pred["logits"], pred["valence"], pred["arousal"], batch, config)
    assert total.item() == pytest.approx(want, rel=1e-5)
    total.backward()
    no_label = ~batch["flag_emotion_class"]
    assert (pred["logits"].grad[no_label] == 0).all() and (pred["valence"].grad[~batch["flag_va"]] == 0).all()


def test_intensity_weighting_down_weights_weak_non_neutral_rows_only():
    # two rows with the same cross-entropy: a weak "happy" (s = 0.2) and a neutral; the weak row's
    # weight is floor + (1 - floor) s, the neutral's 1, so the loss moves towards the neutral row's CE
    logits = torch.tensor([[0.0, 2.0, 0, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0, 0, 0]])
    batch = {"flag_emotion_class": torch.tensor([True, True]), "emotion_class": torch.tensor([1, 0]),
             "flag_va": torch.tensor([True, True]), "valence": torch.tensor([0.15, 0.0]),
             "arousal": torch.tensor([0.0, 0.0])}
    pred = {"logits": logits, "valence": torch.zeros(2), "arousal": torch.zeros(2)}
    config = FieldsLossConfig(intensity_va_ref=0.75, intensity_floor=0.25, emo_va_mse_weight=0, emo_va_ccc_weight=0)
    _, terms = emotion_loss(pred, batch, config)
    ce = -_log_softmax(logits.double().numpy())[[0, 1], [1, 0]]
    w = np.array([0.25 + 0.75 * 0.2, 1.0])
    assert terms["emo_class"].item() == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-6)


def test_exaggeration_penalty_only_beyond_the_base_magnitude_and_scaled_by_low_intensity():
    exp = torch.tensor([[3.0, 4.0], [1.0, 0.0], [6.0, 8.0], [0.0, 0.0]], requires_grad=True)  # norms 5, 1, 10, 0
    base = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 20.0], [1.0, 0.0]])  # norms 2, 2, 20, 1
    batch = {"flag_va": torch.tensor([True, True, True, False]), "valence": torch.tensor([0.3, 0.0, 0.0, 0.0]),
             "arousal": torch.tensor([0.0, 0.0, 0.0, 0.0])}
    config = FieldsLossConfig(intensity_va_ref=0.75)
    loss = exaggeration_loss(exp, base, batch, config)
    s0 = 0.3 / 0.75
    want = ((1 - s0) * (5 - 2) ** 2 + 0.0 + 0.0) / 3  # row 1 under its base, row 2 under, row 3 unlabelled
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert (exp.grad[1:] == 0).all() and (exp.grad[0] != 0).all()


def test_base_regulariser_sums_the_chosen_parameters_mse_to_the_frozen_base():
    enc, _ = _batch()
    base = {k: (v.detach() + 0.5 * torch.randn_like(v)).requires_grad_(True) for k, v in enc.items()}
    loss = base_regulariser(enc, base, ("expression", "jaw"))
    want = sum(float(((_np(enc[k]) - _np(base[k])) ** 2).mean()) for k in ("expression_params", "jaw_params"))
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert base["expression_params"].grad is None and enc["eyelid_params"].grad is None


def test_the_head_reads_its_configured_inputs_and_has_affectnets_eight_classes():
    from benchmarks.affectnet.probe import N_CLASSES
    from pipelines.affectnet import N_EMOTIONS as PIPELINE_EMOTIONS

    assert N_EMOTIONS == N_CLASSES == PIPELINE_EMOTIONS == 8
    enc, _ = _batch()
    head = EmotionHead(EmotionHeadConfig(inputs=("expression", "shape"), hidden=(16,)), n_exp=10, n_shape=6)
    out = head(enc)
    assert out["logits"].shape == (8, 8) and out["valence"].shape == (8,) and out["arousal"].shape == (8,)
    x = torch.cat([enc["expression_params"], enc["shape_params"]], 1)
    y = head.mlp(x)
    assert torch.equal(out["valence"], y[:, 0]) and torch.equal(out["logits"], y[:, 2:])
    # the jaw is not an input of this head: changing it changes nothing
    moved = dict(enc, jaw_params=enc["jaw_params"] + 1)
    assert torch.equal(head(moved)["logits"], out["logits"])
    with_jaw = EmotionHead(EmotionHeadConfig(), n_exp=10, n_shape=6)
    assert with_jaw.in_size == 10 + 3 + 6
    with pytest.raises(ValueError, match="emotion_head.inputs"):
        EmotionHeadConfig(inputs=("expression", "pose"))


def test_emotion_head_learns_emotion_from_true_flame_parameters(one_torch_thread):
    """The head and L_emo, isolated from the encoder: a fresh EmotionHead (default config) trained
    with the real `emotion_loss` (default FieldsLossConfig, intensity-aware) on the TRUE FLAME
    parameters of a synthetic AffectNet's emotion rows (`affectnet.annotations`, the labels and
    parameters `affectnet.write` renders) must classify held-out rows far above chance and the
    majority class, and predict valence with CCC well above 0."""
    from fbench.synth.affectnet import annotations

    torch.manual_seed(0)
    ann = annotations(seed=0, n=600)
    keep = torch.as_tensor((ann.emotion < N_EMOTIONS) & (ann.valence != -2) & (ann.arousal != -2))
    p = ann.params
    params = {"expression_params": p.expression[keep], "jaw_params": p.jaw[keep], "shape_params": p.shape[keep]}
    n = int(keep.sum())
    batch = {"emotion_class": torch.as_tensor(ann.expression)[keep],  # the written (noisy) class
             "valence": torch.as_tensor(ann.valence, dtype=torch.float32)[keep],
             "arousal": torch.as_tensor(ann.arousal, dtype=torch.float32)[keep],
             "flag_emotion_class": torch.ones(n, dtype=torch.bool), "flag_va": torch.ones(n, dtype=torch.bool)}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, test = perm[: 2 * n // 3], perm[2 * n // 3:]

    def rows(d, idx):
        return {k: v[idx] for k, v in d.items()}

    head = EmotionHead(EmotionHeadConfig(), n_exp=p.expression.shape[1], n_shape=p.shape.shape[1])
    config = FieldsLossConfig()
    assert config.intensity_aware
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    x_train, y_train = rows(params, train), rows(batch, train)
    for _ in range(300):
        opt.zero_grad()
        loss, _ = emotion_loss(head(x_train), y_train, config)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(rows(params, test))
    labels = batch["emotion_class"][test].numpy()
    acc = float((pred["logits"].argmax(1).numpy() == labels).mean())
    majority = float(np.bincount(labels, minlength=N_EMOTIONS).max() / len(labels))
    ccc_v = metrics.ccc(batch["valence"][test].numpy(), pred["valence"].numpy())
    # Measured (seed 0, 540 emotion rows, 180 held out): accuracy 0.483 against majority 0.150 and chance
    # 0.125; valence CCC 0.588. (The training loss is ~0 by step 100: with the 300 shape parameters the
    # default head memorises 360 rows, so held-out accuracy sits below the label model's ~0.9 ceiling.)
    # Mutations seen failing: emotion_loss without its class term -> accuracy 0.128; without its V/A
    # terms -> valence CCC 0.020.
    assert acc > 0.35 and acc > majority + 0.2, (acc, majority)
    assert ccc_v > 0.3, ccc_v
