"""The plugin types every registry holds, and the protocols methods and benchmarks meet.

- `PipelinePlugin` (group `fbench.pipelines`): a dataset pipeline, mounted as
  `fbench prep <name>` (stage "prep") and/or `fbench fit-flame <name>` (stage "fit").
  The plugin object is light: it holds one command maker per stage and builds a stage's
  command on first use (`command_for`), so listing pipelines or filtering them by stage
  never imports a pipeline's readers.
- `MethodPlugin` (group `fbench.methods`): `build(config) -> Reconstructor`,
  `from_checkpoint(path) -> Reconstructor`, `task(config) -> TrainingTask`.
- `BenchmarkPlugin` (group `fbench.benchmarks`): `evaluate(method, data_root, out_dir, config)`.

The registry checks these types (fbench/registry.py); the contract tests in
tests/test_contracts.py run every installed plugin through its protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep `import fbench.plugins` free of torch
    from torch import Tensor, nn
    from torch.optim import Optimizer

    from fbench.flame.params import FlameParams
    from fbench.train.loop import RunContext

PIPELINE_STAGES = ("prep", "fit")
LANDMARK_SOURCES = ("mediapipe", "fan", "any")


@dataclass(frozen=True)
class CropSpec:
    """How a method wants its input face cut: a square around a landmark box.

    side = `scale` x the mean of the landmark extent's width and height, centred on the
    extent's centre (SMIRK's `crop_face`), resized to `size` x `size` RGB in [0, 1].
    `landmarks` says which detector's points define the box ("any": MediaPipe, else FAN).
    The one function that applies it is `fbench.landmarks.crop.crop_for_method`.
    """

    size: int = 224
    scale: float = 1.4
    landmarks: str = "mediapipe"

    def __post_init__(self) -> None:
        if self.size < 16 or not self.scale > 0 or self.landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"bad CropSpec {self}: size >= 16, scale > 0, landmarks in {LANDMARK_SOURCES}")


@dataclass(frozen=True)
class ItemRef:
    """Where an image came from: dataset name, path relative to the dataset root, video frame.

    Benchmarks pass these beside the images. A real method must ignore them (it sees pixels
    only); they exist for reference methods that read ground truth (the `oracle`) and for
    caches keyed by item.
    """

    dataset: str
    source: str
    frame: int = -1


@runtime_checkable
class Reconstructor(Protocol):
    """What a method's model offers to benchmarks, `fbench reconstruct` and the demo."""

    crop: CropSpec
    n_exp: int

    def reconstruct(self, images: "Tensor", items: "Sequence[ItemRef] | None" = None) -> "FlameParams":
        """(B, 3, H, W) RGB in [0, 1], cut with `crop` -> FlameParams with batch B (on the CPU)."""
        ...


@runtime_checkable
class TrainingTask(Protocol):
    """What `fbench train <method>` drives with the core training loop (fbench/train/).

    The loop owns devices, seeding, steps, schedules, checkpoints, logs and DDP; the
    task owns the model, its optimisers, its data recipe and one step of its recipe (it
    calls backward and steps its own optimisers, since some methods alternate several).
    `fbench.train.TaskBase` implements the optional parts (no validation, no images, no
    extra state, no export). Order of calls, once per process: `setup`, `modules`,
    `configure_optimizers`; then per epoch `train_loader(epoch)` and per batch
    `training_step`; `val_loader`/`validation_step` and `visualize` at their cadence.
    Optional, not part of the protocol's check: `on_epoch_start(epoch)`, called before each
    epoch's `train_loader` (not again for an epoch a run resumes in the middle of; TaskBase
    has a no-op), e.g. to reset an optimiser's state as a trainer that re-creates its
    optimisers every epoch does (`fbench.train.reset_optimizer_state`).
    """

    def setup(self, run: "RunContext") -> None:
        """The run's device, seed, rank and world size, shard root, FLAME folder, loop settings."""
        ...

    def modules(self) -> Mapping[str, "nn.Module"]:
        """Trained networks by name: moved to the device, checkpointed, broadcast from rank 0."""
        ...

    def configure_optimizers(self) -> Mapping[str, "Optimizer"]:
        """Optimisers by name, called once per run; the loop schedules their learning rates."""
        ...

    def train_loader(self, epoch: int) -> Iterable[Any]:
        """This rank's batches of one epoch, a function of (epoch, run seed, rank) only, so a
        resumed run sees the same data (e.g. a `fbench.shards.stream` dataset after `set_epoch`)."""
        ...

    def training_step(self, batch: Any, step: int) -> Mapping[str, float]:
        """One step on a batch already on the device: forward, backward, optimiser steps; the
        metrics to log. `step` counts completed steps (0 for the first)."""
        ...

    def val_loader(self) -> Iterable[Any] | None:
        """Validation batches of this rank, or None for no validation."""
        ...

    def validation_step(self, batch: Any, step: int) -> Mapping[str, float]:
        """Metrics of one validation batch (under no_grad, modules in eval mode); averaged by the loop."""
        ...

    def visualize(self, batch: Any, step: int) -> "Tensor | None":
        """Images (N, 3, H, W) or one grid (3, H, W) in [0, 1] for images/step_<step>.png, or None."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Task state beyond modules and optimisers (e.g. its own generators) for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def export(self, out: Path) -> list[Path]:
        """Final files in the run folder after training (e.g. the method's release checkpoint)."""
        ...


@dataclass(frozen=True, eq=False)
class PipelinePlugin:
    """A dataset pipeline with one command per stage it offers: `fbench prep <name>` (stage
    "prep") and/or `fbench fit-flame <name>` (stage "fit"); BP4D has both (fit the 3D scans,
    then prep the 2D frames joined to those fits).

    `commands` maps each stage to a function returning its click command; a stage's maker is
    called on first use of `command_for(stage)` and its command kept, so a pipeline module can
    declare its plugin without importing its readers, and listing or filtering by stage
    (`stages`) imports nothing. Plugins compare by identity (each is one registry entry).
    """

    name: str
    summary: str
    commands: Mapping[str, Callable[[], Any]] = field(repr=False)  # stage -> () -> click.Command
    synth: str | None = None  # the `fbench synth` dataset that writes this pipeline's layout
    _built: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # stage -> command, once made

    def __post_init__(self) -> None:
        stages = dict(self.commands)
        unknown = [s for s in stages if s not in PIPELINE_STAGES]
        if not stages or unknown:
            raise ValueError(f"pipeline {self.name!r}: commands must map stages from {PIPELINE_STAGES} to command "
                             f"makers, got stages {sorted(stages) or 'none'}")
        bad = [s for s, maker in stages.items() if not callable(maker)]
        if bad:
            raise ValueError(f"pipeline {self.name!r}: the command maker of stage(s) {bad} is not callable")
        ordered = {s: stages[s] for s in PIPELINE_STAGES if s in stages}
        object.__setattr__(self, "commands", MappingProxyType(ordered))

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this pipeline offers, in PIPELINE_STAGES order (e.g. ("prep", "fit"))."""
        return tuple(self.commands)

    def command_for(self, stage: str) -> Any:  # click.Command
        """The click command of `stage` (built on first use, then the same object)."""
        if stage not in self.commands:
            raise KeyError(f"pipeline {self.name!r} has no {stage!r} command (its stages: {', '.join(self.stages)})")
        if stage not in self._built:
            self._built[stage] = self.commands[stage]()
        return self._built[stage]


@dataclass(frozen=True)
class TrainOption:
    """A method-specific option of `fbench train <method>` that sets one config key.

    `TrainOption("--skip-missing", "train.skip_missing", "...", is_flag=True)` adds the flag
    `--skip-missing`, which sets `train.skip_missing: true`. A typed value has the precedence of
    every typed option (over `-o` and `--config`); an option left out changes nothing. `choices`
    restricts the value; `path` makes it a filesystem path (not checked for existence)."""

    flag: str
    key: str
    help: str
    choices: tuple[str, ...] | None = None
    is_flag: bool = False
    path: bool = False

    def __post_init__(self) -> None:
        if not self.flag.startswith("--") or len(self.flag) < 3 or not self.key:
            raise ValueError(f"TrainOption {self.flag!r} -> {self.key!r}: a --long flag and a config key")
        if self.is_flag and (self.choices or self.path):
            raise ValueError(f"TrainOption {self.flag}: a flag takes no choices or path")


@dataclass(frozen=True)
class TrainStages:
    """A method trained in stages, each a normal run (e.g. SMIRK's pretraining then core training).

    `TrainStages("--phase", "train.phase", ("pretrain", "core"))` adds `--phase
    pretrain|core|both` to `fbench train <method>`, setting the config key `train.phase`. One
    stage name is a single run in RUN/. The `all` value runs every stage in order into
    RUN/<stage>/, each later stage starting from the network weights of the previous stage's
    checkpoints/last.pt (the loop's `init`); `--resume` skips finished stages and continues the
    unfinished one (fbench/train/stages.py)."""

    flag: str
    key: str
    names: tuple[str, ...]
    all: str = "both"

    def __post_init__(self) -> None:
        if not self.flag.startswith("--") or not self.key or not self.names:
            raise ValueError(f"TrainStages {self.flag!r} -> {self.key!r}: a --long flag, a config key, stage names")
        if len(set(self.names)) != len(self.names) or self.all in self.names:
            raise ValueError(f"TrainStages {self.flag}: stage names {self.names} must be distinct and differ from "
                             f"{self.all!r}")
        bad = [n for n in self.names if not n or "/" in n or n.startswith(".")]
        if bad:
            raise ValueError(f"TrainStages {self.flag}: stage names {bad} cannot be folder names")

    @property
    def choices(self) -> tuple[str, ...]:
        return (*self.names, self.all)


@dataclass(frozen=True)
class MethodPlugin:
    """A reconstruction method (SMIRK, TEASER, FIELDS, ...).

    `train_options` and `train_stages` add method-specific options to `fbench train <method>`
    (see TrainOption, TrainStages)."""

    name: str
    summary: str
    config: type  # a dataclass; `fbench.config.load_config(config, file, overrides)` fills it
    build: Callable[[Any], Reconstructor]
    from_checkpoint: Callable[[Path], Reconstructor]
    task: Callable[[Any], TrainingTask] | None = None  # None: the method cannot be trained by fbench
    checkpoint_asset: str | None = None  # name in fbench.assets of its released checkpoint
    save: Callable[[Any, Path], Path] | None = None  # write a model as a checkpoint `from_checkpoint` reads
    train_options: tuple[TrainOption, ...] = ()  # method-specific `fbench train` options
    train_stages: TrainStages | None = None  # a method trained in stages (`--phase both`)


@dataclass(frozen=True)
class BenchmarkPlugin:
    """A benchmark: `fbench eval <name> --method M`; reaches methods only through the registry."""

    name: str
    summary: str
    config: type
    evaluate: Callable[[Reconstructor, Path, Path, Any], Mapping[str, Any]]
    dataset: str | None = None  # the catalogued dataset (fbench.assets) whose root is the default --root


PLUGIN_TYPES = {"pipelines": PipelinePlugin, "methods": MethodPlugin, "benchmarks": BenchmarkPlugin}
