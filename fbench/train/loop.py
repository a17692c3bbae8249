"""The thin training loop every fbench trainer shares.

The method's `TrainingTask` (fbench/plugins.py) owns its networks, optimisers, data recipe and
one step of its recipe (it calls backward and steps its own optimisers). The loop owns the
rest: seeding, device placement, epochs and steps, learning-rate schedules, validation,
progress bar, metric logs, image grids, checkpoints and `--resume`, and data-parallel runs
under torchrun (fbench/train/distributed.py).

Exact resumption (our design). A killed run restarted from its last checkpoint reaches the
same parameters as an uninterrupted one, bit for bit on the CPU:
- every epoch starts by seeding python, numpy and torch from (seed, epoch, rank), then asks
  the task for that epoch's loader; a task's loader must be a function of the epoch (and
  rank) only: `fbench.shards.stream` datasets are, through their seed and `set_epoch`;
- the checkpoint holds the modules, optimisers, schedulers, the task's own state, each
  rank's RNG states, and the data position (epoch, batches read in it);
- resuming reseeds the epoch, rebuilds its loader, reads and drops the batches already
  trained on (exact for any loader, at the cost of reading them again), then restores
  the RNG states saved with the checkpoint;
- a task's `on_epoch_start(epoch)` hook runs after the epoch's reseed and before its loader,
  once per epoch: a run resumed at an epoch's start calls it, one resumed mid-epoch does not
  (its effect is in the checkpoint). What it changes must live in the modules, optimisers or
  task state (e.g. SMIRK's `--official-optimizer-reset` clears the generator's Adam state).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fbench.config import to_plain
from fbench.io import CheckpointError, load_checkpoint, save_checkpoint, stale_temporaries
from fbench.plugins import TrainingTask
from fbench.train import distributed as D
from fbench.train.logs import MetricLog

CHECKPOINT_KIND = "fbench-train"
# loop settings whose change between a checkpoint and its resumption breaks exact continuation
EXACTNESS_KEYS = ("seed", "steps_per_epoch", "schedule", "min_lr_factor", "precision")
_PROTOCOL = ("setup", "modules", "configure_optimizers", "train_loader", "training_step", "val_loader",
             "validation_step", "visualize", "state_dict", "load_state_dict", "export")


@dataclass
class LoopConfig:
    """The loop's settings: section `loop` of every `fbench train` config (`-o loop.max_steps=10`)."""

    seed: int = 0
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:1
    max_steps: int = 1000  # training steps (one `training_step` each); 0: epochs x steps_per_epoch
    epochs: int = 0  # used when max_steps is 0
    steps_per_epoch: int = 0  # 0: len() of the epoch's loader (an endless stream needs a number)
    schedule: Literal["constant", "cosine", "cosine_epoch"] = "constant"  # cosine_epoch restarts each epoch
    min_lr_factor: float = 0.01  # cosine schedules end at this fraction of each group's lr
    log_every: int = 10  # steps between metrics.csv rows; 0: the last step only
    val_every: int = 0  # steps between validations; 0: at the end of every epoch
    val_batches: int = 0  # batches per validation; 0: the whole validation loader
    checkpoint_every: int = 500  # steps between checkpoints/last.pt; 0: at the end only
    keep_every: int = 0  # also keep checkpoints/step_<step>.pt every N steps; 0: never
    visualize_every: int = 0  # steps between PNG grids in images/; 0: never
    progress: bool = True  # tqdm bar (rank 0)
    # bf16: training and validation steps under torch.autocast (no loss scaling needed); fp16,
    # which needs a GradScaler around the task's own backward, is not offered
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.epochs < 0 or (self.max_steps == 0 and self.epochs == 0):
            raise ValueError("loop: set max_steps > 0, or max_steps: 0 and epochs > 0")
        for name in ("steps_per_epoch", "log_every", "val_every", "val_batches", "checkpoint_every", "keep_every",
                     "visualize_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"loop.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"loop.min_lr_factor must be in [0, 1], got {self.min_lr_factor}")


@dataclass(frozen=True)
class RunContext:
    """What a task learns of its run in `setup(run)`."""

    out: Path  # the run folder
    device: torch.device
    seed: int
    rank: int = 0
    world_size: int = 1
    shards: Path | None = None  # where `fbench prep` wrote the shards
    flame: Path | None = None  # --flame (None: fbench's default model)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # facts a task records in the run's config.yaml (section `run`), e.g. a loss disabled for a missing asset
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TaskBase:
    """Defaults for the optional parts of a `TrainingTask`: no validation, no images, no extra
    state, no export. `setup` keeps the run context as `self.run`."""

    run: RunContext

    def setup(self, run: RunContext) -> None:
        self.run = run

    def val_loader(self) -> Iterable[Any] | None:
        return None

    def validation_step(self, batch: Any, step: int) -> Mapping[str, float]:
        raise NotImplementedError(f"{type(self).__name__} has no validation_step")

    def visualize(self, batch: Any, step: int) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise CheckpointError(f"{type(self).__name__} keeps no state, the checkpoint has {sorted(state)}")

    def export(self, out: Path) -> list[Path]:
        return []

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch, before its loader (not again when a run resumes
        mid-epoch); changes must live in modules, optimisers or `state_dict` to resume exactly."""


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget an optimiser's per-parameter state (Adam's moments and step counts): what
    re-creating it over the same parameters does. Its param groups (learning rates, which the
    loop's schedules own) and its hooks (the data-parallel gradient averaging) stay."""
    optimizer.state.clear()


@dataclass
class TrainResult:
    step: int
    epoch: int
    out: Path
    last_checkpoint: Path | None
    metrics: dict[str, dict[str, Any]]
    exported: list[Path]


# ------------------------------------------------------------------------------- helpers


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # and every CUDA device


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return ((seed * 1_000_003 + epoch) * 65_537 + rank) % 2**63


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain containers (a `weights_only` checkpoint)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in (nested dicts, lists, tuples of) a batch moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def cosine_factor(k: int, period: int, floor: float) -> float:
    """torch's CosineAnnealingLR curve as a factor of the base lr: 1 at k=0, `floor` at k=period."""
    k = min(k, period)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * k / max(period, 1)))


def make_schedulers(optimizers: Mapping[str, torch.optim.Optimizer], loop: LoopConfig, total: int,
                    per_epoch: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """One LambdaLR per optimiser, stepped after every training step (SMIRK steps its cosine
    schedules per iteration, base_trainer.py:53-66; `cosine_epoch` restarts them every epoch
    as SMIRK's per-epoch `configure_optimizers` does, train.py:48, down to 1 % of the lr,
    base_trainer.py:55 and :66)."""
    if loop.schedule == "constant":
        return {}
    floor = loop.min_lr_factor
    if loop.schedule == "cosine":
        factor: Callable[[int], float] = lambda k: cosine_factor(k, total, floor)
    else:
        factor = lambda k: cosine_factor(k % per_epoch, per_epoch, floor)
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optimizers.items()}


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def _load_modules(modules: Mapping[str, torch.nn.Module], states: Mapping[str, Any], path: Path,
                  require_all: bool) -> tuple[list[str], list[str]]:
    """Load `states` into `modules` by name, strictly per module. `require_all` (a resume): the
    names must match exactly. Otherwise (an init) modules the checkpoint lacks keep their
    weights and checkpoint modules this task lacks are skipped, but at least one must match.
    Returns (task modules without weights, checkpoint modules skipped)."""
    unknown = sorted(set(states) - set(modules))
    if unknown and (require_all or len(unknown) == len(states)):
        raise CheckpointError(f"{path}: modules {unknown} are not in this task (it has {sorted(modules)})")
    missing = sorted(set(modules) - set(states))
    if missing and require_all:
        raise CheckpointError(f"{path}: no weights for modules {missing}")
    for name, state in states.items():
        if name not in modules:
            continue
        try:
            modules[name].load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: module {name!r} does not match ({str(exc).splitlines()[0]})") from None
    return missing, unknown


def read_train_checkpoint(path: Path) -> dict[str, Any]:
    data = load_checkpoint(path)
    meta = data.get("__fbench__", {})
    if meta.get("kind") != CHECKPOINT_KIND or "modules" not in data:
        raise CheckpointError(f"{path}: not an fbench training checkpoint (no `modules`; an `fbench train` run "
                              "writes them in RUN_DIR/checkpoints/)")
    return data


def _batches(loader: Iterable[Any], limit: int) -> Iterator[Any]:
    for i, batch in enumerate(loader):
        if limit and i >= limit:
            return
        yield batch


# ---------------------------------------------------------------------------------- loop


def train(make_task: Callable[[], Any], loop: LoopConfig, out: str | Path, *, shards: Path | None = None,
          flame: Path | None = None, resume: bool = False, init: Path | None = None,
          save_config: Callable[[RunContext], None] | None = None,
          echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> TrainResult:
    """Train the task `make_task()` builds (called after seeding, so its initial weights
    are a function of `loop.seed`) and return where the run ended.

    `resume` continues from `out/checkpoints/last.pt`; `init` starts from the module weights of
    another run's checkpoint (fresh optimisers, step 0; modules matched by name, those on one
    side only are said and skipped). `save_config(run)` writes the
    resolved config (rank 0, before the first step). Under torchrun every rank runs this;
    rank 0 writes the files."""
    out = Path(out)
    _, _, local_rank = D.env_world()
    device = resolve_device(loop.device, local_rank)
    info = D.init_distributed(device)
    try:
        return _train(make_task, loop, out, device, info, shards, flame, resume, init, save_config, echo)
    finally:
        D.close_distributed(info)


def _train(make_task: Callable[[], Any], loop: LoopConfig, out: Path, device: torch.device, info: D.DistInfo,
           shards: Path | None, flame: Path | None, resume: bool, init: Path | None,
           save_config: Callable[[RunContext], None] | None, echo: Callable[[str], None]) -> TrainResult:
    main = info.is_main
    say = echo if main else (lambda s: None)
    seed_everything(loop.seed)  # the same on every rank: identical initial weights
    task = make_task()
    if not isinstance(task, TrainingTask):
        missing = [m for m in _PROTOCOL if not callable(getattr(task, m, None))]
        raise TypeError(f"{type(task).__name__} is not a fbench.plugins.TrainingTask (missing {missing}; "
                        "fbench.train.TaskBase provides the optional ones)")
    run = RunContext(out=out, device=device, seed=loop.seed, rank=info.rank, world_size=info.world_size,
                     shards=shards, flame=flame, loop=loop)
    task.setup(run)
    modules = dict(task.modules())
    for module in modules.values():
        module.to(device)
    optimizers = dict(task.configure_optimizers())  # once per run (our choice; SMIRK re-creates them per epoch,
    # which a task reproduces in its on_epoch_start hook with reset_optimizer_state)
    epoch_start = getattr(task, "on_epoch_start", None)  # optional (TaskBase has it)

    # epoch length and run length
    per_epoch = loop.steps_per_epoch
    if per_epoch == 0:
        seed_everything(epoch_seed(loop.seed, 0, info.rank))
        try:
            per_epoch = len(task.train_loader(0))  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("loop.steps_per_epoch: the training loader has no length (an endless stream); "
                             "set -o loop.steps_per_epoch=N") from None
        if per_epoch == 0:
            raise ValueError("the training loader is empty")
    total = loop.max_steps or loop.epochs * per_epoch
    schedulers = make_schedulers(optimizers, loop, total, per_epoch)

    step = epoch = skip = 0
    rng_saved: dict[str, Any] | None = None
    ckpt_path = _checkpoint_path(out)
    if resume:
        data = read_train_checkpoint(ckpt_path)
        _load_modules(modules, data["modules"], ckpt_path, require_all=True)
        for kind, objs in (("optimizers", optimizers), ("schedulers", schedulers)):
            if set(data.get(kind, {})) != set(objs):
                raise CheckpointError(f"{ckpt_path}: {kind} {sorted(data.get(kind, {}))} differ from this run's "
                                      f"{sorted(objs)} (a different loop.schedule or task?)")
            for name, obj in objs.items():
                obj.load_state_dict(data[kind][name])
        task.load_state_dict(data.get("task", {}))
        pos = data["position"]
        step, epoch, skip = int(pos["step"]), int(pos["epoch"]), int(pos["batch"])
        rngs = data.get("rng", [])
        if len(rngs) == info.world_size:
            rng_saved = rngs[info.rank]
        elif skip:
            say(f"warning: {ckpt_path} was written by {len(rngs)} processes, this run has {info.world_size}; "
                "random streams restart from the epoch's seed (not an exact continuation)")
        saved_loop = data["__fbench__"].get("loop", {})
        changed = [k for k in EXACTNESS_KEYS if k in saved_loop and saved_loop[k] != getattr(loop, k)]
        if changed:
            say(f"warning: loop {', '.join(f'{k} {saved_loop[k]!r} -> {getattr(loop, k)!r}' for k in changed)} "
                f"since {ckpt_path}: the continuation will differ from an uninterrupted run")
        if main:
            for tmp in stale_temporaries(ckpt_path.parent):  # a checkpoint write the kill interrupted
                tmp.unlink(missing_ok=True)
        say(f"resuming {ckpt_path} at step {step} (epoch {epoch}, batch {skip})")
        if step >= total:
            say(f"the run has done its {total} steps; raise -o loop.max_steps to train on")
    elif init is not None:
        data = read_train_checkpoint(Path(init))
        missing, skipped = _load_modules(modules, data["modules"], Path(init), require_all=False)
        say(f"initial weights from {init}" + (f" (modules {missing} keep their fresh weights)" if missing else "")
            + (f" (its modules {skipped} are not in this task: skipped)" if skipped else ""))
    D.broadcast_state(modules.values())
    hooks = [D.average_gradients_before_step(opt) for opt in optimizers.values()] if D.active() else []

    log = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if save_config is not None:
            save_config(run)
        log = MetricLog(out, resume_step=step if resume else None)
    D.barrier()

    def checkpoint(at: int, ep: int, batch: int) -> Path | None:
        rngs = D.all_gather_objects(rng_state())  # every rank's streams, for an exact resume
        if not main:
            return None
        state = {"modules": {k: m.state_dict() for k, m in modules.items()},
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                 "task": task.state_dict(), "rng": rngs,
                 "position": {"step": at, "epoch": ep, "batch": batch}}
        meta = {"kind": CHECKPOINT_KIND, "step": at, "world_size": info.world_size, "loop": to_plain(loop)}
        path = save_checkpoint(ckpt_path, state, meta)
        if loop.keep_every and at % loop.keep_every == 0:
            save_checkpoint(out / "checkpoints" / f"step_{at:07d}.pt", state, meta)
        return path

    def autocast() -> Any:
        if loop.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def set_mode(training: bool) -> None:
        for module in modules.values():
            module.train(training)

    def validate(at: int, ep: int) -> None:
        loader = task.val_loader()
        if loader is None:
            return
        set_mode(False)
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad(), autocast():
            for batch in _batches(loader, loop.val_batches):
                for k, v in task.validation_step(to_device(batch, device), at).items():
                    sums[k] = sums.get(k, 0.0) + float(v)  # under no_grad: tensors convert quietly
                count += 1
        set_mode(True)
        means = D.mean_over_ranks(sums, count)
        if log is not None and means:
            log.write(at, ep, "val", time.monotonic() - started, means)

    def visualize(batch: Any, at: int) -> None:
        if not main:
            return
        set_mode(False)
        with torch.no_grad():
            image = task.visualize(batch, at)
        set_mode(True)
        if image is None:
            return
        from torchvision.utils import make_grid

        from fbench.render.files import save_png

        grid = image if image.dim() == 3 else make_grid(image.detach().float().cpu(), nrow=math.ceil(
            math.sqrt(image.shape[0])), padding=2)
        save_png(grid, out / "images" / f"step_{at:07d}.png")

    last: Path | None = None
    last_epoch = epoch
    started = time.monotonic()
    window: dict[str, list[float]] = {}
    if main and loop.progress:
        from tqdm import tqdm

        bar: Any = tqdm(total=total, initial=step, unit="step", desc="train", dynamic_ncols=True)
    else:
        bar = nullcontext()
    set_mode(True)
    try:
        while step < total:
            seed_everything(epoch_seed(loop.seed, epoch, info.rank))
            if not skip and epoch_start is not None:  # a mid-epoch resume already has its effect
                epoch_start(epoch)
            loader = task.train_loader(epoch)
            batches = iter(loader)
            for _ in range(skip):  # data already trained on before the checkpoint
                next(batches, None)
            if rng_saved is not None and skip:
                set_rng_state(rng_saved)  # mid-epoch; at an epoch's start the reseed above is the state
            rng_saved = None
            in_epoch = skip
            skip = 0
            for batch in batches:
                batch = to_device(batch, device)
                with autocast():
                    metrics = task.training_step(batch, step)
                for sched in schedulers.values():
                    sched.step()
                step += 1
                in_epoch += 1
                for k, v in metrics.items():
                    window.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))
                if log is not None and ((loop.log_every and step % loop.log_every == 0) or step == total):
                    row = {k: sum(v) / len(v) for k, v in window.items()}
                    row.update({f"lr_{k}": o.param_groups[0]["lr"] for k, o in optimizers.items()})
                    log.write(step, epoch, "train", time.monotonic() - started, row)
                    window.clear()
                    if main and loop.progress:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[:3]})
                if main and loop.progress:
                    bar.update(1)
                end_of_epoch = in_epoch >= per_epoch
                if (loop.val_every and step % loop.val_every == 0) or (not loop.val_every and end_of_epoch):
                    validate(step, epoch)
                if loop.visualize_every and step % loop.visualize_every == 0:
                    visualize(batch, step)
                if (loop.checkpoint_every and step % loop.checkpoint_every == 0) or step == total:
                    # the position of the next batch: the next epoch's first after this epoch's last
                    last = checkpoint(step, epoch + 1 if end_of_epoch else epoch, 0 if end_of_epoch else in_epoch)
                if end_of_epoch or step >= total:
                    break  # before drawing a batch that would not be used
            if in_epoch < per_epoch and step < total:
                say(f"warning: epoch {epoch}'s loader ended after {in_epoch} of {per_epoch} batches")
                if not loop.val_every:
                    validate(step, epoch)
                last = checkpoint(step, epoch + 1, 0)
            last_epoch = epoch
            epoch += 1
    finally:
        for hook in hooks:
            hook.remove()
        if main and loop.progress:
            bar.close()
    exported = task.export(out) if main else []
    D.barrier()
    return TrainResult(step=step, epoch=last_epoch, out=out, last_checkpoint=last,
                       metrics=log.latest if log is not None else {}, exported=list(exported))
