"""SMIRK's training task (methods/smirk/task.py): `fbench train smirk` on miniature FFHQ shards,
and its loss terms and cycle augmentation against plain re-computations of the official code
(georgeretsi/smirk c7de404, src/smirk_trainer.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from fbench.io import load_checkpoint
from methods.smirk.task import augment_expressions, cycle_loss, load_templates

SMALL = ["-o", "train.skip_missing=true", "-o", "train.batch_size=2", "-o", "train.workers=0",
         "-o", "train.samples_per_epoch=4", "-o", "generator_init_features=8", "-o", "generator_res_blocks=1",
         "-o", "loop.progress=false", "-o", "loop.log_every=1", "-o", "loop.device=cpu",
         "-o", "loop.checkpoint_every=1"]


def _cli(*args: str):
    from fbench.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def ffhq_shards(tmp_path_factory) -> Path:
    """4 synthetic FFHQ images prepped with MediaPipe (the synthetic heads are detected; SMIRK needs
    MediaPipe landmarks), FAN off: <root>/ffhq/{train,val}."""
    root = tmp_path_factory.mktemp("smirk_task")
    r = _cli("synth", "ffhq", "--out", str(root / "FFHQ"), "--n", "4")
    assert r.exit_code == 0, r.output
    r = _cli("prep", "ffhq", "--root", str(root / "FFHQ"), "--out", str(root / "shards"), "--landmarks", "detect",
             "--fan", "off", "--no-progress")
    assert r.exit_code == 0, r.output
    return root / "shards"


def _write_templates(root: Path, n_exp: int = 50) -> Path:
    rng = np.random.default_rng(1)
    for subject, cls in (("FaMoS_subject_001", "high_smile"), ("FaMoS_subject_002", "jaw"),
                         ("FaMoS_subject_002", "anger")):  # anger: not one of SMIRK's twelve classes
        folder = root / subject / cls
        folder.mkdir(parents=True)
        for i in range(2):
            np.save(folder / f"{i:06d}.npy", {"expression": rng.normal(size=n_exp).astype(np.float32),
                                              "jaw": np.zeros(3, np.float32), "pose": np.zeros(15, np.float32)},
                    allow_pickle=True)
    (root / "templates_manifest.json").write_text("{}")
    return root


def _rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(fh)]


def test_core_phase_trains_two_steps_and_exports(ffhq_shards, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGG weights: the perceptual loss is recorded off
    templates = _write_templates(tmp_path / "templates")
    full = tmp_path / "full"
    common = ["train", "smirk", "--shards", str(ffhq_shards), *SMALL, "-o", f"train.templates={templates}"]
    # one step per epoch: the second step begins epoch 1, where the generator's Adam state is kept
    r = _cli(*common, "--out", str(full), "-o", "loop.max_steps=2", "-o", "train.samples_per_epoch=2")
    assert r.exit_code == 0, r.output
    rows = _rows(full)
    assert [row["step"] for row in rows] == ["1", "2"]
    for key in ("landmark_loss_mp", "reconstruction_loss", "cycle_loss", "loss_first_path",
                "expression_regularization", "jaw_regularization"):
        assert all(math.isfinite(float(row[key])) for row in rows), key
    assert float(rows[0]["reconstruction_loss"]) > 0 and float(rows[0]["cycle_loss"]) > 0
    record = yaml.safe_load((full / "config.yaml").read_text())["run"]
    assert record["perceptual_loss"].startswith("perceptual loss DISABLED")
    assert record["cycle_templates"] == f"4 FaMoS expression templates from {templates}"
    assert "without lrs3, mead, celeba, mead_sides" in record["data_mix"] and "ffhq 1.000" in record["data_mix"]
    # official optimisers: encoder Adam at 0.25 x 1e-3 over the expression encoder only, generator betas (0.5, 0.999)
    ckpt = load_checkpoint(full / "checkpoints" / "last.pt")
    enc, gen = ckpt["optimizers"]["encoder"]["param_groups"][0], ckpt["optimizers"]["generator"]["param_groups"][0]
    assert enc["lr"] == pytest.approx(2.5e-4) and gen["lr"] == pytest.approx(1e-3)
    assert tuple(gen["betas"]) == (0.5, 0.999)
    # Adam steps: the first path steps both optimisers every step; the cycle the generator on step 0, the encoder on 1
    assert _adam_steps(ckpt) == {"encoder": 3, "generator": 3}
    from methods.smirk.model import SmirkEncoder

    n_expression = len(list(SmirkEncoder().expression_encoder.parameters()))
    assert len(enc["params"]) == n_expression
    # the exported SMIRK.pt is the official layout, read by the plugin, equal to the trained modules
    from methods.smirk.plugin import from_checkpoint

    model = from_checkpoint(full / "SMIRK.pt")
    assert model.generator is not None
    trained = ckpt["modules"]["smirk_encoder"]
    assert all(torch.equal(v, trained[k]) for k, v in model.encoder.state_dict().items())
    params = model.reconstruct(torch.rand(1, 3, 224, 224))
    assert params.expression.shape == (1, 50)


def _adam_steps(ckpt: dict) -> dict[str, int]:
    """The step count of each optimiser's Adam state (the same for all of its parameters)."""
    out = {}
    for name, opt in ckpt["optimizers"].items():
        steps = {int(state["step"]) for state in opt["state"].values()}
        assert len(steps) == 1, (name, steps)
        out[name] = steps.pop()
    return out


def test_official_optimizer_reset_restarts_the_generator_adam_each_epoch(ffhq_shards, tmp_path, monkeypatch,
                                                                         one_torch_thread):
    # train.py:47-48 + base_trainer.py:57-62: a new generator Adam each epoch, the encoder's kept (39-41).
    # The same two one-step epochs as the core test above, which keeps both (3 and 3 Adam steps).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "reset"
    r = _cli("train", "smirk", "--shards", str(ffhq_shards), *SMALL, "--out", str(run), "--official-optimizer-reset",
             "-o", "loop.max_steps=2", "-o", "train.samples_per_epoch=2", "-o", "loop.keep_every=1")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["official_optimizer_reset"] is True
    assert _adam_steps(load_checkpoint(run / "checkpoints" / "step_0000001.pt")) == {"encoder": 1, "generator": 2}
    # epoch 1 began with a fresh generator Adam: one first-path step (the cycle froze it on step 1)
    assert _adam_steps(load_checkpoint(run / "checkpoints" / "last.pt")) == {"encoder": 3, "generator": 1}


def _same_parameters(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["modules"].keys() == cb["modules"].keys()
    for name in ca["modules"]:
        wa, wb = ca["modules"][name], cb["modules"][name]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name}: resumed parameters differ"
    assert ca["position"] == cb["position"]
    assert _rows(a) == _rows(b)


@pytest.mark.slow
def test_core_phase_resumes_to_the_parameters_of_an_uninterrupted_run(ffhq_shards, tmp_path, monkeypatch,
                                                                       one_torch_thread):
    # (fast variant: the pretrain test.) Stop after step 1, resume to 3: step 2 freezes the
    # generator in the cycle, step 3 the encoder; the cycle's RNG draws come back with the run's states.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    common = ["train", "smirk", "--shards", str(ffhq_shards), *SMALL]
    assert _cli(*common, "--out", str(tmp_path / "full"), "-o", "loop.max_steps=3").exit_code == 0
    assert _cli(*common, "--out", str(tmp_path / "part"), "-o", "loop.max_steps=1").exit_code == 0
    r = _cli("train", "smirk", "--out", str(tmp_path / "part"), "--resume", "-o", "loop.max_steps=3")
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    _same_parameters(tmp_path / "full", tmp_path / "part")


def test_pretrain_phase_trains_the_encoder_alone_and_resumes_exactly(ffhq_shards, tmp_path, one_torch_thread):
    run = tmp_path / "pre"
    r = _cli("train", "smirk", "--shards", str(ffhq_shards), "--out", str(run), *SMALL,
             "-o", "train.phase=pretrain", "-o", "loop.max_steps=2")
    assert r.exit_code == 0, r.output
    assert "MICA shape loss DISABLED" in r.output
    rows = _rows(run)
    assert len(rows) == 2 and all(math.isfinite(float(row["loss_first_path"])) for row in rows)
    assert "cycle_loss" not in rows[0] and "reconstruction_loss" not in rows[0]
    # config_pretrain.yaml: lr 2e-4 x 0.25, every encoder part optimised, no generator
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(ckpt["modules"]) == {"smirk_encoder"}
    group = ckpt["optimizers"]["encoder"]["param_groups"][0]
    assert group["lr"] == pytest.approx(5e-5) and len(group["params"]) == len(ckpt["modules"]["smirk_encoder"]) - \
        sum(1 for k in ckpt["modules"]["smirk_encoder"] if k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert "MICA" in yaml.safe_load((run / "config.yaml").read_text())["run"]["mica_loss"]
    from methods.smirk.plugin import from_checkpoint

    assert from_checkpoint(run / "SMIRK.pt").generator is None
    # stop after step 1 (a mid-epoch position), resume to 2: the same parameters and metrics
    part = tmp_path / "part"
    r = _cli("train", "smirk", "--shards", str(ffhq_shards), "--out", str(part), *SMALL,
             "-o", "train.phase=pretrain", "-o", "loop.max_steps=1")
    assert r.exit_code == 0, r.output
    r = _cli("train", "smirk", "--out", str(part), "--resume", "-o", "loop.max_steps=2")
    assert r.exit_code == 0 and "at step 1 (epoch 0, batch 1)" in r.output, r.output
    _same_parameters(run, part)


def test_missing_smirk_datasets_are_named(ffhq_shards, tmp_path):
    r = _cli("train", "smirk", "--shards", str(ffhq_shards), "--out", str(tmp_path / "x"), "-o", "train.workers=0",
             "-o", "loop.progress=false", "-o", "loop.device=cpu", "-o", "loop.max_steps=1")
    assert r.exit_code != 0
    text = r.output + repr(r.exception)
    assert "SMIRK mix needs shards for: lrs3" in text and "celeba" in text


# --------------------------------------------------------------------- against the official formulas


def _official_augment(feats, templates, gids):
    """smirk_trainer.py:199-242, transcribed line by line (device and Ke handling dropped)."""
    ff = {k: v.clone() for k, v in feats.items()}
    n, d = ff["expression_params"].shape
    pm = torch.bernoulli(torch.ones((len(gids[0]), d)) * 0.5)
    new = torch.randn((len(gids[0]), d)) * (1 + 2 * torch.rand((len(gids[0]), 1))) * pm + ff["expression_params"][gids[0]]
    ff["expression_params"][gids[0]] = torch.clamp(new, -4.0, 4.0) + (0 + 0.2 * torch.rand((len(gids[0]), 1))) * \
        torch.randn((len(gids[0]), d))
    ff["expression_params"][gids[1]] = (0.25 + 1.25 * torch.rand((len(gids[1]), 1))) * \
        ff["expression_params"][gids[1]][torch.randperm(len(gids[1]))] + \
        (0 + 0.2 * torch.rand((len(gids[1]), 1))) * torch.randn((len(gids[1]), d))
    for i in range(len(gids[2])):
        expression = random.choice(templates)
        ff["expression_params"][gids[2][i], :50] = (0.25 + 1.25 * torch.rand((1, 1))) * torch.Tensor(expression)
    ff["expression_params"][gids[2]] += (0 + 0.2 * torch.rand((len(gids[2]), 1))) * torch.randn((len(gids[2]), d))
    scale_mask = torch.Tensor([1, .1, .1]).view(1, 3) * torch.bernoulli(torch.ones(n) * 0.5).view(-1, 1)
    ff["jaw_params"] = ff["jaw_params"] + torch.randn(ff["jaw_params"].size()) * 0.2 * scale_mask
    ff["jaw_params"][..., 0] = torch.clamp(ff["jaw_params"][..., 0], 0.0, 0.5)
    ff["eyelid_params"] += (-1 + 2 * torch.rand(size=ff["eyelid_params"].size())) * 0.25
    ff["eyelid_params"] = torch.clamp(ff["eyelid_params"], 0.0, 1.0)
    ff["expression_params"][gids[3]] *= 0.0
    ff["expression_params"][gids[3]] += (0 + 0.2 * torch.rand((len(gids[3]), 1))) * torch.randn((len(gids[3]), d))
    ff["jaw_params"][gids[3]] *= 0.0
    ff["eyelid_params"][gids[3]] = torch.rand(size=ff["eyelid_params"][gids[3]].size())
    return ff


def _feats(n: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"expression_params": torch.randn(n, 50, generator=g) * 2, "jaw_params": torch.rand(n, 3, generator=g) * 0.9,
            "eyelid_params": torch.rand(n, 2, generator=g), "shape_params": torch.randn(n, 300, generator=g),
            "pose_params": torch.randn(n, 3, generator=g) * 0.1, "cam": torch.rand(n, 3, generator=g)}


def test_cycle_augmentation_groups_match_the_official_code():
    feats = _feats()
    templates = [np.random.default_rng(i).normal(size=50).astype(np.float32) * 3 for i in range(5)]
    gids = list(torch.randperm(12, generator=torch.Generator().manual_seed(0)).split(3))
    torch.manual_seed(7), random.seed(7)
    want = _official_augment(feats, templates, gids)
    torch.manual_seed(7), random.seed(7)
    got, groups = augment_expressions(feats, templates, groups=gids)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    assert not got["expression_params"].requires_grad and torch.equal(feats["shape_params"], got["shape_params"])
    # ranges: jaw opening in [0, 0.5], eyelids in [0, 1], zero-expression group small, jaw closed
    assert got["jaw_params"][:, 0].min() >= 0 and got["jaw_params"][:, 0].max() == 0.5  # inputs reach 0.9
    assert got["eyelid_params"].min() >= 0 and got["eyelid_params"].max() <= 1
    zero = groups[3]
    assert torch.all(got["jaw_params"][zero] == 0) and got["expression_params"][zero].abs().max() < 0.2 * 6
    # default grouping: four quarters of a permutation
    torch.manual_seed(1)
    _, groups = augment_expressions(feats)
    assert [len(g) for g in groups] == [3, 3, 3, 3] and sorted(torch.cat(groups).tolist()) == list(range(12))


def test_cycle_augmentation_without_templates_uses_random_offsets_in_the_third_group():
    feats = _feats(8)
    gids = list(torch.arange(8).split(2))
    torch.manual_seed(2)
    got, _ = augment_expressions(feats, None, groups=gids)
    g = gids[2]
    assert not torch.allclose(got["expression_params"][g], feats["expression_params"][g])
    assert got["expression_params"][g].abs().max() <= 4.0 + 0.2 * 6  # clamped to [-4, 4] plus the small noise


def test_cycle_loss_is_the_official_formula():
    a, b = _feats(4), _feats(4)
    b = {k: v + 0.1 * torch.randn_like(v) for k, v in b.items()}
    base = F.mse_loss(a["expression_params"], b["expression_params"]) + 10 * F.mse_loss(a["jaw_params"], b["jaw_params"])
    eyelid = 10 * F.mse_loss(a["eyelid_params"], b["eyelid_params"])
    shape = F.mse_loss(a["shape_params"], b["shape_params"])
    assert cycle_loss(a, b) == pytest.approx(float(base + eyelid), rel=1e-6)
    assert cycle_loss(a, b, use_eyelids=False) == pytest.approx(float(base), rel=1e-6)
    assert cycle_loss(a, b, with_shape=True) == pytest.approx(float(base + eyelid + shape), rel=1e-6)


def test_templates_are_read_from_the_official_layout_and_classes(tmp_path):
    root = _write_templates(tmp_path / "t")
    got = load_templates(root)
    assert len(got) == 4 and all(t.shape == (50,) for t in got)  # the `anger` folder is not one of SMIRK's classes
    want = np.load(root / "FaMoS_subject_001" / "high_smile" / "000000.npy", allow_pickle=True).item()["expression"]
    assert np.array_equal(got[0], want)


def test_training_step_alternates_freezing_and_clips_the_generator(ffhq_shards, tmp_path, monkeypatch,
                                                                   one_torch_thread):
    # base_trainer.py:258-268 and smirk_trainer.py:349-391: the first path steps both optimisers;
    # the cycle path steps the generator (gradient norm clipped to 0.1, shape in the cycle loss)
    # on even steps, the encoder (generator output detached, no shape term) on odd steps.
    import methods.smirk.task as task_module

    task, batch = _task_and_batch(ffhq_shards, tmp_path, monkeypatch)
    opts = task.opts
    calls: list[tuple[str, object]] = []
    for name, opt in opts.items():
        original = opt.step

        def step(*a, _name=name, _orig=original, **k):
            if _name == "generator":
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in task.generator.parameters()
                                                             if p.grad is not None]))
                calls.append((_name, float(norm)))
            else:
                calls.append((_name, None))
            return _orig(*a, **k)
        opt.step = step
    flags = []
    real_loss = task_module.cycle_loss

    def spy(recon, target, use_eyelids=True, with_shape=False):
        flags.append((with_shape, recon["expression_params"].requires_grad,
                      any(p.requires_grad for p in task.encoder.parameters())))
        return real_loss(recon, target, use_eyelids, with_shape)
    monkeypatch.setattr(task_module, "cycle_loss", spy)
    logs = task.training_step(batch, 0)
    assert [c[0] for c in calls] == ["encoder", "generator", "generator"]
    assert calls[2][1] <= 0.1 + 1e-6  # clipped (smirk_trainer.py:379)
    assert flags == [(True, True, False)]  # encoder frozen, generator output not detached, shape term in
    assert all(math.isfinite(v) for v in logs.values())
    calls.clear()
    task.training_step(batch, 1)
    assert [c[0] for c in calls] == ["encoder", "generator", "encoder"]
    assert flags[1] == (False, True, True)  # generator frozen (its output detached), encoder trains
    # the phase's frozen encoder parts come back frozen, the optimised ones trainable, the generator trainable
    assert all(p.requires_grad for p in task.encoder.expression_encoder.parameters())
    assert not any(p.requires_grad for p in task.encoder.shape_encoder.parameters())
    assert all(p.requires_grad for p in task.generator.parameters())


def test_frozen_networks_run_in_eval_mode_in_the_cycle_path(ffhq_shards, tmp_path, monkeypatch, one_torch_thread):
    # utils.py:46-51: the official freeze_module sets requires_grad False AND eval mode, so in the
    # cycle path the frozen encoder (even steps) or generator (odd steps) normalises with its
    # BatchNorm running statistics and leaves them as they are; each step starts in train mode.
    task, batch = _task_and_batch(ffhq_shards, tmp_path, monkeypatch)
    modes: dict[str, list[bool]] = {"generator": [], "pose": [], "expression": []}
    for name, module in (("generator", task.generator), ("pose", task.encoder.pose_encoder),
                         ("expression", task.encoder.expression_encoder)):
        module.register_forward_pre_hook(lambda m, args, _n=name: modes[_n].append(m.training))
    stats = task.encoder.pose_encoder.state_dict()
    bn = [k for k in stats if k.endswith("running_mean")][0]
    seen = {}
    real_cycle = task.cycle_step

    def cycle(*a, **k):
        seen["before"] = task.encoder.pose_encoder.state_dict()[bn].clone()
        out = real_cycle(*a, **k)
        seen["after"] = task.encoder.pose_encoder.state_dict()[bn].clone()
        return out
    task.cycle_step = cycle
    task.training_step(batch, 0)  # encoder frozen in the cycle path
    assert modes == {"generator": [True, True], "pose": [True, False], "expression": [True, False]}
    assert torch.equal(seen["before"], seen["after"])  # eval mode: the running statistics are kept
    assert task.encoder.training and task.generator.training
    for v in modes.values():
        v.clear()
    task.training_step(batch, 1)  # generator frozen in the cycle path
    assert modes == {"generator": [True, False], "pose": [True, True], "expression": [True, True]}
    assert not torch.equal(seen["before"], seen["after"])  # train mode: the encoder's statistics move
    assert all(m.training for m in task.encoder.modules()) and all(m.training for m in task.generator.modules())


def _task_and_batch(shards: Path, tmp_path: Path, monkeypatch, phase: str = "core"):
    from fbench.train import RunContext
    from methods.smirk.plugin import SmirkConfig, SmirkTrainConfig
    from methods.smirk.task import SmirkTask

    config = SmirkConfig(generator_init_features=8, generator_res_blocks=1,
                         train=SmirkTrainConfig(phase=phase, batch_size=2, workers=0, samples_per_epoch=4,
                                                skip_missing=True))
    task = SmirkTask(config)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    task.setup(RunContext(out=tmp_path, device=torch.device("cpu"), seed=0, shards=shards))
    task.opts = task.configure_optimizers()
    return task, next(iter(task.train_loader(0)))


def test_cycle_path_reuses_the_first_paths_vertices_with_the_results_of_re_rendering(ffhq_shards, tmp_path,
                                                                                     monkeypatch, one_torch_thread):
    # The official cycle path re-renders the detached encoder output (smirk_trainer.py:252-254)
    # and reads only its image-space vertices; the task reuses the first path's instead. Two
    # tasks from one seed: re-rendering as the official code does and reusing give the same
    # parameters, buffers and losses, bit for bit (one step: the vertices only feed the cycle's
    # masking, whichever half of the alternation trains).
    import random

    from methods.smirk import masking

    results, renders, meshes, first_mesh = [], [], {}, []
    real_masking = masking.cycle_masked_image

    def cycle_masking(*a, **k):  # the meshes the points move between: first path's, augmented
        meshes[len(results)] = (a[3], a[4])
        return real_masking(*a, **k)
    monkeypatch.setattr(masking, "cycle_masked_image", cycle_masking)
    for reuse in (True, False):
        torch.manual_seed(0)
        task, batch = _task_and_batch(ffhq_shards, tmp_path / str(reuse), monkeypatch)
        real_render, real_cycle = task.render, task.cycle_step

        def render(*a, _real=real_render, **k):
            renders.append(reuse)
            return _real(*a, **k)

        def official_cycle(batch, enc, freeze_encoder, freeze_generator, vertices=None, _task=task, _real=real_cycle):
            with torch.no_grad():
                fresh = _task.render({k: v.detach() for k, v in enc.items()}, landmarks=False)
            assert vertices is not None and torch.equal(vertices, fresh["transformed_vertices"])
            assert torch.equal(_task.project(enc), fresh["transformed_vertices"])
            first_mesh.append(fresh["transformed_vertices"])
            return _real(batch, enc, freeze_encoder, freeze_generator, fresh["transformed_vertices"])
        task.render = render
        if not reuse:
            task.cycle_step = official_cycle
        torch.manual_seed(1)
        random.seed(1)
        logs = task.training_step(batch, 0)
        state = {f"{name}.{k}": v.clone() for name, m in task.modules().items() for k, v in m.state_dict().items()}
        results.append((logs, state))
    assert results[0][0] == results[1][0]
    assert results[0][1].keys() == results[1][1].keys()
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])
    assert torch.equal(meshes[0][0], first_mesh[0]) and torch.equal(meshes[1][0], first_mesh[0])
    assert not torch.equal(meshes[0][1], first_mesh[0])
    assert renders.count(True) == 2 and renders.count(False) == 3  # first path + augmented face


def test_first_path_terms_and_weights_match_the_official_code(ffhq_shards, tmp_path, monkeypatch, one_torch_thread):
    # smirk_trainer.py:57-72, 97-101, 134-154 with config_train.yaml:30-43 (shape not optimised: no shape term)
    from methods.smirk import masking

    task, batch = _task_and_batch(ffhq_shards, tmp_path, monkeypatch)
    g = torch.Generator().manual_seed(0)
    batch["landmarks_fan"] = torch.rand(2, 68, 2, generator=g) * 2 - 1
    batch["flag_landmarks_fan"] = torch.tensor([True, False])
    task.encoder.eval(), task.generator.eval()
    with torch.no_grad():  # a non-zero shape (the head starts at zero): its regulariser must still not count
        task.encoder.shape_encoder.shape_layers[-1].bias.normal_(0, 0.1, generator=g)
    torch.manual_seed(5)
    loss, terms, _ = task.first_path(batch)
    loss, terms = loss.detach(), {k: v.detach() for k, v in terms.items()}
    with torch.no_grad():
        e = task.encoder(batch["img"])
        rend = task.render(e)
        fan = F.mse_loss(rend["landmarks_fan"][batch["flag_landmarks_fan"], :17],
                         batch["landmarks_fan"][batch["flag_landmarks_fan"], :17])
        mp = F.mse_loss(rend["landmarks_mp"], batch["landmarks_mp"])
        exp_reg = torch.mean(e["expression_params"] ** 2)
        jaw_reg = torch.mean(e["jaw_params"] ** 2)
        torch.manual_seed(5)
        task.encoder(batch["img"])  # nothing random in the encoder: the seed lines up with first_path's masking
        masked = masking.masked_image(batch["img"], batch["mask"], rend["rendered_img"], rend["transformed_vertices"],
                                      task.flame.faces, task.probabilities)
        recon = F.l1_loss(task.generator(torch.cat([rend["rendered_img"], masked], 1)), batch["img"])
    assert float(terms["landmark_loss_fan"]) == pytest.approx(float(fan), rel=1e-5)
    assert float(terms["landmark_loss_mp"]) == pytest.approx(float(mp), rel=1e-5)
    assert float(terms["expression_regularization"]) == pytest.approx(float(exp_reg), rel=1e-5)
    assert float(terms["jaw_regularization"]) == pytest.approx(float(jaw_reg), rel=1e-5)
    assert float(terms["reconstruction_loss"]) == pytest.approx(float(recon), rel=1e-5)
    want = 100 * (fan + mp) + 1e-3 * exp_reg + 1e-2 * jaw_reg + 10 * recon
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(terms["shape_regularization"]) > 0
    assert "perceptual_vgg_loss" not in terms  # no VGG weights: disabled
    # pretrain: landmarks x 100 + expression regularisation x 1e-2 only (config_pretrain.yaml:36-45)
    pre, batch = _task_and_batch(ffhq_shards, tmp_path / "pre", monkeypatch, phase="pretrain")
    pre.encoder.eval()
    loss, terms, _ = pre.first_path(batch)
    loss, terms = loss.detach(), {k: v.detach() for k, v in terms.items()}
    want = 100 * (terms["landmark_loss_fan"] + terms["landmark_loss_mp"]) + 1e-2 * terms["expression_regularization"]
    assert float(loss) == pytest.approx(float(want), rel=1e-6) and "reconstruction_loss" not in terms


def test_init_from_an_official_layout_checkpoint(tmp_path, monkeypatch):
    # train.py:38-39 (`resume` with load_encoder / load_fuse_generator): encoder and generator weights
    from fbench.train import RunContext
    from methods.smirk.plugin import SmirkConfig, SmirkTrainConfig, build, save
    from methods.smirk.task import SmirkTask

    source = build(SmirkConfig.tiny())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    path = save(source, tmp_path / "start.pt")
    config = SmirkConfig(generator_init_features=8, generator_res_blocks=1,
                         train=SmirkTrainConfig(init_from=str(path), cycle_loss=0.0))
    task = SmirkTask(config)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    task.setup(RunContext(out=tmp_path, device=torch.device("cpu"), seed=0))
    for mine, theirs in ((task.encoder, source.encoder), (task.generator, source.generator)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    bad = save(build(SmirkConfig(generator=False)), tmp_path / "encoder_only.pt")
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="encoder_only.pt"):
        SmirkTask(SmirkConfig(train=SmirkTrainConfig(init_from=str(bad)))).setup(
            RunContext(out=tmp_path, device=torch.device("cpu"), seed=0))


def test_both_phases_chain_pretrain_into_core(ffhq_shards, tmp_path, monkeypatch, one_torch_thread):
    # `--phase both`: RUN/pretrain then RUN/core from pretrain's last weights (one step each here)
    import json

    from methods.smirk.plugin import from_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "both"
    r = _cli("train", "smirk", "--shards", str(ffhq_shards), *SMALL[2:], "--skip-missing", "--phase", "both",
             "-o", "loop.max_steps=1", "--out", str(run))
    assert r.exit_code == 0, r.output
    assert "modules ['smirk_generator'] keep their fresh weights" in r.output
    assert json.loads((run / "stages.json").read_text())["done"] == ["pretrain", "core"]
    assert from_checkpoint(run / "pretrain" / "SMIRK.pt").generator is None
    assert from_checkpoint(run / "core" / "SMIRK.pt").generator is not None
    record = yaml.safe_load((run / "core" / "config.yaml").read_text())
    assert record["train"]["phase"] == "core" and record["train"]["skip_missing"] is True
    assert record["run"]["init"] == str(run / "pretrain" / "checkpoints" / "last.pt")
    # core does not optimise the shape and pose encoders (config_train.yaml:41-43): their parameters end as
    # pretraining left them (BatchNorm statistics move), the expression encoder's moved on
    pre = load_checkpoint(run / "pretrain" / "checkpoints" / "last.pt")["modules"]["smirk_encoder"]
    core = load_checkpoint(run / "core" / "checkpoints" / "last.pt")["modules"]["smirk_encoder"]
    frozen = [k for k in pre if k.startswith(("shape_encoder.", "pose_encoder."))
              and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert frozen and all(torch.equal(pre[k], core[k]) for k in frozen)
    assert not all(torch.equal(pre[k], core[k]) for k in pre if k.startswith("expression_encoder."))


@pytest.mark.slow
def test_a_both_phases_run_stopped_in_core_resumes_exactly(ffhq_shards, tmp_path, monkeypatch, one_torch_thread):
    # (fast variants: the chaining test above; the staged toy in test_train_loop.py.) Stopped after
    # core's first step (its checkpoint), resumed: pretrain skipped, core continued to an uninterrupted run's state.
    from methods.smirk.task import SmirkTask

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    common = ["train", "smirk", "--shards", str(ffhq_shards), *SMALL[2:], "--skip-missing", "--phase", "both",
              "-o", "loop.max_steps=2"]
    full, part = tmp_path / "full", tmp_path / "part"
    r = _cli(*common, "--out", str(full))
    assert r.exit_code == 0, r.output
    real = SmirkTask.training_step

    class Stop(RuntimeError):
        pass

    def stop_in_core(self, batch, step):
        if self.phase == "core" and step == 1:
            raise Stop
        return real(self, batch, step)

    monkeypatch.setattr(SmirkTask, "training_step", stop_in_core)
    with pytest.raises(Stop):
        _cli(*common, "--out", str(part))
    monkeypatch.setattr(SmirkTask, "training_step", real)
    r = _cli("train", "smirk", "--out", str(part), "--resume")
    assert r.exit_code == 0, r.output
    assert "stage pretrain (1/2): finished, skipped" in r.output and "at step 1 (epoch 0, batch 1)" in r.output
    _same_parameters(full / "pretrain", part / "pretrain")
    _same_parameters(full / "core", part / "core")


# ------------------------------------------------------------------------------- data parallel


def _parameters(state: dict) -> dict:
    """A module state without BatchNorm statistics (kept per rank, as the loop documents)."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _rank_stream_keys(shards: Path, tmp_path: Path, monkeypatch, rank: int, world: int, batches: int) -> list:
    """The sample keys of the first training batches that rank `rank` of `world` reads (workers=0)."""
    from fbench.train import RunContext
    from methods.smirk.plugin import SmirkConfig, SmirkTrainConfig
    from methods.smirk.task import SmirkTask

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    task = SmirkTask(SmirkConfig(generator=False, train=SmirkTrainConfig(
        phase="pretrain", batch_size=2, workers=0, samples_per_epoch=4, skip_missing=True)))
    task.setup(RunContext(out=tmp_path, device=torch.device("cpu"), seed=0, rank=rank, world_size=world,
                          shards=shards))
    keys = [list(batch["key"]) for _, batch in zip(range(batches), task.train_loader(0))]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    return keys


@pytest.mark.slow
def test_torchrun_trains_smirk_on_two_gloo_processes(ffhq_shards, tmp_path, monkeypatch):
    # (fast variants: the spawned two-rank toy in test_train_loop.py, and the gradient averaging of
    # SMIRK's step below.) tests/rank_probe records what each worker trained on and ended with.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    env = dict(__import__("os").environ, PYTHONPATH=f"{root / 'tests' / 'rank_probe'}:{root}", OMP_NUM_THREADS="1",
               FBENCH_RANK_PROBE=str(probe), TORCH_HOME=str(tmp_path / "torch"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fbench", "train", "smirk", "--shards", str(ffhq_shards), "--out", str(out), *SMALL,
           "-o", "loop.max_steps=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    # rank 0 writes (and speaks); the run knows it had two processes
    assert done.stderr.count("run: ") == 1 and done.stderr.count("perceptual loss DISABLED") == 1
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["__fbench__"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["world_size"] == 2
    assert [row["step"] for row in _rows(out)] == ["1", "2"] and (out / "SMIRK.pt").is_file()
    # both ranks end with the same parameters, the ones rank 0 saved
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, saved in ckpt["modules"].items():
        a, b = _parameters(ranks[0]["modules"][name]), _parameters(ranks[1]["modules"][name])
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: the ranks' parameters differ"
        assert all(torch.equal(a[k], saved[k]) for k in a)
    assert not all(torch.equal(v, ranks[0]["modules"]["smirk_generator"][k])  # and they trained
                   for k, v in _parameters(build_tiny_generator_state()).items())
    # each rank read its own stream of the shards: the one a reader of that rank draws, not the other's
    for r in (0, 1):
        assert ranks[r]["keys"] == _rank_stream_keys(ffhq_shards, tmp_path / f"r{r}", monkeypatch, r, 2, 2)
    assert ranks[0]["keys"] != ranks[1]["keys"]


def build_tiny_generator_state() -> dict:
    """The generator's initial weights in a run of seed 0 (the loop seeds before building the task)."""
    from fbench.train import seed_everything
    from methods.smirk.plugin import SmirkConfig
    from methods.smirk.task import SmirkTask

    seed_everything(0)
    return SmirkTask(SmirkConfig(generator_init_features=8, generator_res_blocks=1)).generator.state_dict()


def test_a_smirk_step_steps_every_optimiser_with_rank_averaged_gradients(ffhq_shards, tmp_path, monkeypatch,
                                                                         one_torch_thread):
    # In-process stand-in for the torchrun test: a fake second rank whose gradients are all 1. Every
    # optimiser step of SMIRK's step (first path: both; cycle: the generator, clipped) must use
    # gradients averaged over the ranks, and the generator's clipping must see the averaged ones
    # (smirk_trainer.py:377-379 clips the gradient DDP averaged).
    import torch.distributed as dist

    from fbench.train import distributed as D

    monkeypatch.setattr(D, "active", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.add_(torch.ones_like(t)))
    task, batch = _task_and_batch(ffhq_shards, tmp_path, monkeypatch)
    hooks = [D.average_gradients_before_step(opt) for opt in task.opts.values()]
    stepped: list[tuple[str, bool, float]] = []
    for name, opt in task.opts.items():
        original = opt.step

        def step(*a, _name=name, _opt=opt, _orig=original, **k):
            out = _orig(*a, **k)  # the pre-step hook averages inside
            grads = [p for group in _opt.param_groups for p in group["params"] if p.grad is not None]
            synced = all(D._SYNCED.get(id(p)) is not None and D._SYNCED[id(p)][0]() is p.grad
                         and D._SYNCED[id(p)][1] == p.grad._version for p in grads)
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in grads])))
            stepped.append((_name, synced and bool(grads), norm))
            return out
        opt.step = step
    try:
        task.training_step(batch, 0)
    finally:
        for hook in hooks:
            hook.remove()
    assert [(n, ok) for n, ok, _ in stepped] == [("encoder", True), ("generator", True), ("generator", True)]
    assert stepped[2][2] <= task.t.generator_clip + 1e-6  # clipped after averaging (all-ones would be far larger)
