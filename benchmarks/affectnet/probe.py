"""EMOCA's emotion probe: an MLP on a frozen method's expression + jaw features (valence, arousal, 8 classes).

Everything here follows radekd91/inferno (EMOCA's code), EmotionRecognition app, config
`emodeca_coarse.yaml` and what it includes:

- Inputs: expression and jaw pose only (model/backbone/coarse_emodeca.yaml:9-13:
  use_identity false, use_expression true, use_global_pose false, use_jaw_pose true).
- MLP: `num_mlp_layers: 4` hidden layers of `mlp_dim: 2048` with `mlp_norm_layer: BatchNorm1d`
  (coarse_emodeca.yaml:17-20; hidden sizes = num_mlp_layers x [mlp_dim], inferno/models/EmoDECA.py:84-90);
  each hidden layer is Linear, BatchNorm1d, LeakyReLU(0.2), then a final Linear
  (inferno/models/MLP.py:42, 50-58). Outputs 8 class scores + valence + arousal
  (EmoDECA.py:92-100, n_expression 8 from data/datasets/affectnet_cluster_emonet_cleaned.yaml:11).
- Activations: log_softmax for the classes, none for valence/arousal
  (model/settings/vae_affectnet.yaml:35-39).
- Losses (vae_affectnet.yaml:13-30): expression `nll_loss`; `v_mse: 1`, `a_mse: 1`,
  `va_lpcc: 1`, `va_lccc: 1`, where va_lpcc = 1 - (a_pcc + v_pcc)/2 and likewise for CCC
  (inferno/models/EmotionRecognitionModuleBase.py:660-663); `va_loss_scheme: shake`: in a
  training step the four valence/arousal term weights are drawn uniformly and normalised to sum
  to 1 (EmotionRecognitionModuleBase.py:829-836); validation uses the configured weights.
  EMOCA's CCC in the loss uses Bessel-corrected standard deviations
  (inferno/utils/emotion_metrics.py:146-165); fbench's loss uses the same (torch default).
- Training (learning/...): Adam, lr 1e-4 (optimizer/adam.yaml:3-4); batch 64
  (batching/single_gpu_coarse.yaml:3); at most 50 epochs, validation every 0.2 epoch
  (training/default.yaml:3-4); early stopping on the total validation loss, patience 10
  validation checks, the best checkpoint kept (callbacks/early_stopping.yaml:4-5;
  training/train_emodeca.py:232, 257-260); `drop_last: true` for training batches
  (affectnet_cluster_emonet_cleaned.yaml:21).

fbench's choices (EMOCA early-stops on the AffectNet validation split, which is also where
everyone reports, since the test split is not public): early stopping uses a seeded
`holdout_fraction` of the training rows, so the validation split is never seen in training.
On datasets smaller than one batch the batch shrinks to the training set.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)
N_CLASSES = 8


@dataclass
class ProbeConfig:
    mlp_layers: int = 4
    mlp_dim: int = 2048
    learning_rate: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 50
    val_check_interval: float = 0.2
    patience: int = 10
    holdout_fraction: float = 0.1
    seed: int = 0
    threads: int = 0  # torch intra-op threads while training (0: torch's setting; 1 is fastest for small MLPs on busy cores)


class EmotionMLP(nn.Module):
    def __init__(self, in_size: int, layers: int, dim: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        sizes = [in_size] + [dim] * layers
        for a, b in itertools.pairwise(sizes):
            blocks += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.LeakyReLU(0.2)]
        blocks.append(nn.Linear(sizes[-1], N_CLASSES + 2))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = self.net(x)
        return F.log_softmax(y[:, :N_CLASSES], dim=1), y[:, N_CLASSES], y[:, N_CLASSES + 1]


def _pcc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dx, dy = x - x.mean(), y - y.mean()
    # clamp: a constant batch (a method that predicts one face) has no gradient through sqrt(0)
    return (dx * dy).sum() / (dx.pow(2).sum() * dy.pow(2).sum()).clamp_min(1e-12).sqrt()


def _ccc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # EMOCA's CCC_torch: 2 pcc sx sy / (sx^2 + sy^2 + (mx - my)^2) with Bessel-corrected sx, sy;
    # pcc sx sy is the Bessel-corrected covariance, written so (no square root at zero spread).
    dx, dy = x - x.mean(), y - y.mean()
    n1 = max(x.numel() - 1, 1)
    cov, vx, vy = (dx * dy).sum() / n1, dx.pow(2).sum() / n1, dy.pow(2).sum() / n1
    return 2 * cov / (vx + vy + (x.mean() - y.mean()).pow(2)).clamp_min(1e-12)


def probe_loss(out, expression: torch.Tensor, valence: torch.Tensor, arousal: torch.Tensor,
               weights: dict[str, float]) -> torch.Tensor:
    logp, v, a = out
    terms = {"v_mse": F.mse_loss(v, valence), "a_mse": F.mse_loss(a, arousal),
             "va_lpcc": 1 - 0.5 * (_pcc(v, valence) + _pcc(a, arousal)),
             "va_lccc": 1 - 0.5 * (_ccc(v, valence) + _ccc(a, arousal))}
    return F.nll_loss(logp, expression) + sum(weights[k] * t for k, t in terms.items())


VA_WEIGHTS = {"v_mse": 1.0, "a_mse": 1.0, "va_lpcc": 1.0, "va_lccc": 1.0}


def _shake(rng: np.random.Generator) -> dict[str, float]:
    w = rng.random(len(VA_WEIGHTS))
    return dict(zip(VA_WEIGHTS, (w / w.sum()).tolist()))


@dataclass
class TrainedProbe:
    model: EmotionMLP
    best_val_loss: float
    steps: int
    stopped_early: bool

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.model.eval()
        with torch.no_grad():
            logp, v, a = self.model(torch.as_tensor(features, dtype=torch.float32))
        return logp.argmax(1).numpy(), v.numpy().astype(np.float64), a.numpy().astype(np.float64)


def train_probe(features: np.ndarray, expression: np.ndarray, valence: np.ndarray, arousal: np.ndarray,
                config: ProbeConfig) -> TrainedProbe:
    """Train on `features` (N, D) with labels; early-stop on a seeded hold-out of these rows."""
    if config.threads:
        from fbench.synth.faces import torch_threads

        with torch_threads(config.threads):
            return _train(features, expression, valence, arousal, config)
    return _train(features, expression, valence, arousal, config)


def _train(features: np.ndarray, expression: np.ndarray, valence: np.ndarray, arousal: np.ndarray,
           config: ProbeConfig) -> TrainedProbe:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n = len(features)
    order = rng.permutation(n)
    n_hold = max(2, int(round(config.holdout_fraction * n)))
    if n - n_hold < 2:
        raise ValueError(f"{n} training rows are too few for the probe (need a hold-out and 2+ training rows)")
    hold, train = order[:n_hold], order[n_hold:]
    x = torch.as_tensor(features, dtype=torch.float32)
    e = torch.as_tensor(expression, dtype=torch.long)
    v = torch.as_tensor(valence, dtype=torch.float32)
    a = torch.as_tensor(arousal, dtype=torch.float32)
    model = EmotionMLP(x.shape[1], config.mlp_layers, config.mlp_dim)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, amsgrad=False)
    batch = min(config.batch_size, len(train))
    per_epoch = len(train) // batch  # drop_last
    check_every = max(1, int(round(config.val_check_interval * per_epoch)))
    best, best_state, bad, step, stopped = float("inf"), None, 0, 0, False

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(probe_loss(model(x[hold]), e[hold], v[hold], a[hold], VA_WEIGHTS))

    for _ in range(config.max_epochs):
        perm = torch.as_tensor(rng.permutation(train))
        for b in range(per_epoch):
            idx = perm[b * batch:(b + 1) * batch]
            model.train()
            loss = probe_loss(model(x[idx]), e[idx], v[idx], a[idx], _shake(rng))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % check_every == 0:
                current = val_loss()
                if current < best:
                    best, best_state, bad = current, copy.deepcopy(model.state_dict()), 0
                else:
                    bad += 1
                    if bad >= config.patience:
                        stopped = True
                        break
        if stopped:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    log.info("probe: %d steps, best hold-out loss %.4f%s", step, best, " (stopped early)" if stopped else "")
    return TrainedProbe(model, best, step, stopped)
