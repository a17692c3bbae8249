"""A toy training task for the loop's tests, and a launcher that mounts it as `fbench train toy`.

The task: a linear model (8 -> 3) with dropout on synthetic data drawn from a generator
seeded by (seed, epoch, rank), trained with Adam. It draws from python's, numpy's and
torch's global RNGs in every step (noise in the targets, dropout), so an exact resume
needs every one of them restored, and its loader needs the data position.

`python tests/train_support.py ARGS` runs `fbench ARGS` with the toy method in the registry
(also under `torchrun`). `TOY_STALL_AT=N` makes step N hang after its optimiser step and
after writing `stalled` into the run folder: the kill test's moment to SIGKILL.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fbench.plugins import MethodPlugin, TrainOption, TrainStages
from fbench.train import RunContext, TaskBase, sync_gradients

TRUE_W = torch.linspace(-1, 1, 24).reshape(3, 8)


@dataclass
class ToyConfig:
    batch: int = 4  # per rank
    lr: float = 0.05
    n_batches: int = 3  # batches per epoch (len of the loader)
    dropout: float = 0.2
    clip: float = 0.0  # gradient clipping (after sync_gradients), 0: none
    noise: float = 0.01  # target noise from the global RNGs (0 for the data-parallel comparison)
    perceptual: bool = False  # load the VGG perceptual loss in setup (disabled and recorded without weights)


class ToyData(torch.utils.data.IterableDataset):
    """Batches of one epoch, drawn from a generator seeded by (seed, epoch); rank r of w takes
    rows r::w of each global batch, so w ranks of batch b see what one process of batch w*b sees."""

    def __init__(self, seed: int, epoch: int, n_batches: int, batch: int, rank: int, world: int) -> None:
        self.seed, self.epoch, self.n, self.batch, self.rank, self.world = seed, epoch, n_batches, batch, rank, world

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        for _ in range(self.n):
            x = torch.randn(self.batch * self.world, 8, generator=g)
            yield {"x": x[self.rank::self.world], "y": (x @ TRUE_W.T)[self.rank::self.world]}


class _OneModel(TaskBase):
    """`self.model` trained by Adam at `self.config.lr`."""

    model: nn.Module
    config: Any

    def modules(self) -> Mapping[str, nn.Module]:
        return {"model": self.model}

    def configure_optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        return {"adam": self.opt}


class ToyTask(_OneModel):
    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self.model = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(8, 3))
        self.seen: list[int] = []  # task state: steps run, checkpointed through state_dict

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        if self.config.perceptual:
            from fbench.losses import load_vgg_perceptual

            self.vgg = load_vgg_perceptual(notes=run.notes)

    def train_loader(self, epoch: int) -> Iterable[Any]:
        run: RunContext = self.run
        return torch.utils.data.DataLoader(ToyData(run.seed, epoch, self.config.n_batches,
                                                   self.config.batch,
                                                   run.rank, run.world_size), batch_size=None)

    def training_step(self, batch: Any, step: int) -> Mapping[str, float]:
        noise = self.config.noise * (random.random() + float(np.random.rand()))  # python and numpy global RNGs
        y = batch["y"] + noise * torch.randn_like(batch["y"])  # torch global RNG
        loss = ((self.model(batch["x"]) - y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        if self.config.clip:
            sync_gradients(self.model.parameters())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.opt.step()
        self.seen.append(step)
        if os.environ.get("TOY_STALL_AT") == str(step) and self.run.is_main:
            (self.run.out / "stalled").write_text(str(step))
            time.sleep(600)
        return {"loss": loss}  # a tensor: the loop converts it

    def val_loader(self) -> Iterable[Any] | None:
        return ToyData(self.run.seed + 7, 0, 2, self.config.batch, self.run.rank, self.run.world_size)

    def validation_step(self, batch: Any, step: int) -> Mapping[str, float]:
        return {"val_mse": float(((self.model(batch["x"]) - batch["y"]) ** 2).mean())}

    def visualize(self, batch: Any, step: int) -> torch.Tensor | None:
        w = self.model[1].weight.detach().cpu()
        img = (w - w.min()) / (w.max() - w.min() + 1e-9)
        return img.reshape(1, 1, 3, 8).expand(2, 3, 3, 8).repeat_interleave(4, -1).repeat_interleave(4, -2)

    def state_dict(self) -> dict[str, Any]:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = list(state["seen"])

    def export(self, out: Path) -> list[Path]:
        from fbench.io import save_checkpoint

        return [save_checkpoint(out / "toy.pt", {"model": self.model.state_dict()})]


@dataclass
class StagedToyConfig(ToyConfig):
    step: str = "1"  # the stage: "1" trains `model` with an extra module `aux`, "2" `model` alone
    reset_adam: bool = False  # clear the Adam state at every epoch start (on_epoch_start)
    crash_at: int = -1  # raise StopTraining in stage 2's step of this index (a stop mid-stage)
    gain: float = 1.0  # a free-text TrainOption
    note: str = ""  # a path TrainOption


class StopTraining(RuntimeError):
    """The staged toy's simulated interruption."""


class StagedToyTask(ToyTask):
    """The toy in two stages (`--step 1|2|both`). `state_dict` keeps the weights `model` had when
    the stage began (`start`) and the Adam step counts seen at each step (`adam_steps`)."""

    config: StagedToyConfig

    def __init__(self, config: StagedToyConfig) -> None:
        super().__init__(config)
        self.aux = nn.Linear(3, 3) if config.step == "1" else None
        self.start: list[float] = []
        self.adam_steps: list[int] = []
        self.epochs_started: list[int] = []

    def modules(self) -> Mapping[str, nn.Module]:
        return {"model": self.model, **({"aux": self.aux} if self.aux is not None else {})}

    def on_epoch_start(self, epoch: int) -> None:
        from fbench.train import reset_optimizer_state

        self.epochs_started.append(epoch)
        if self.config.reset_adam:
            reset_optimizer_state(self.opt)

    def training_step(self, batch: Any, step: int) -> Mapping[str, float]:
        if not self.start:
            self.start = self.model[1].weight.detach().flatten().tolist()
        if self.config.step == "2" and step == self.config.crash_at:
            raise StopTraining(f"stopped in stage 2 at step {step}")
        state = self.opt.state.get(self.model[1].weight, {})
        self.adam_steps.append(int(state["step"]) if "step" in state else 0)
        return super().training_step(batch, step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start": list(self.start), "adam_steps": list(self.adam_steps),
                "epochs_started": list(self.epochs_started), "gain": self.config.gain}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.start, self.adam_steps = list(state["start"]), list(state["adam_steps"])
        self.epochs_started = list(state["epochs_started"])


def _unavailable(*args: Any) -> Any:
    raise NotImplementedError("the toy method trains only")


TOY = MethodPlugin(name="toy", summary="a linear toy model (tests)", config=ToyConfig, build=_unavailable,
                   from_checkpoint=_unavailable, task=ToyTask)
STAGED_TOY = MethodPlugin(
    name="stagedtoy", summary="the toy in two stages (tests)", config=StagedToyConfig, build=_unavailable,
    from_checkpoint=_unavailable, task=StagedToyTask,
    train_options=(TrainOption("--reset-adam", "reset_adam", "Clear Adam's state every epoch.", is_flag=True),
                   TrainOption("--gain", "gain", "A number (free text, read as YAML)."),
                   TrainOption("--note-file", "note", "A path.", path=True)),
    train_stages=TrainStages("--step", "step", ("1", "2")))
UNTRAINABLE = MethodPlugin(name="frozen", summary="a method without a training task (tests)", config=ToyConfig,
                           build=_unavailable, from_checkpoint=_unavailable, task=None)


def mount(methods: Mapping[str, MethodPlugin] | None = None) -> dict[str, Any]:
    """A methods registry holding the toy plugins; returns the registries dict entry to set."""
    from importlib.metadata import EntryPoint

    from fbench.registry import SPECS, Registry

    methods = methods or {"toy": TOY, "frozen": UNTRAINABLE, "shardtoy": SHARD_TOY, "stagedtoy": STAGED_TOY}
    module = sys.modules[__name__].__name__
    for attr, plugin in methods.items():
        globals()[f"_plugin_{attr}"] = plugin
    return Registry(SPECS["methods"], [EntryPoint(n, f"{module}:_plugin_{n}", "fbench.methods") for n in methods])




def ddp_worker(rank: int, world: int, port: int, out: str, config: ToyConfig, steps: int,
               resume: bool = False) -> None:
    """One rank of a data-parallel toy run started by `torch.multiprocessing.spawn` (as torchrun would)."""
    from fbench.train import LoopConfig, train

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    train(lambda: ToyTask(config), LoopConfig(max_steps=steps, progress=False, checkpoint_every=2, device="cpu",
                                              log_every=1), Path(out), resume=resume)


# ------------------------------------------------------------------ a toy task on real shards


@dataclass
class ShardToyConfig:
    dataset: str = "toyimg"  # <shards>/<dataset>/train/*.tar
    batch: int = 4
    batches_per_epoch: int = 3
    workers: int = 1  # DataLoader worker processes (their streams must resume too)
    lr: float = 0.05


def shard_toy_transform(sample: Any, rng: np.random.Generator) -> dict[str, Any]:
    """A sample's mean colour (plus noise from the reader's generator) and a target from it."""
    x = sample.image.reshape(-1, 3).mean(0).astype(np.float32) / 255.0 + rng.normal(0, 0.01, 3).astype(np.float32)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(np.array([x @ np.array([1.0, -2.0, 0.5])],
                                                                     dtype=np.float32))}


class ShardToyTask(_OneModel):
    """Linear regression on features of samples streamed from `fbench prep`-format shards through
    `fbench.shards.stream.MixedShardDataset`, the way a method's task reads its data."""

    def __init__(self, config: ShardToyConfig) -> None:
        self.config = config
        self.model = nn.Linear(3, 1)

    def train_loader(self, epoch: int) -> Iterable[Any]:
        from fbench.shards.stream import MixedShardDataset, shard_set

        sets = [shard_set(self.config.dataset, self.run.shards / self.config.dataset)]
        data = MixedShardDataset(sets, shard_toy_transform, batch_size=self.config.batch,
                                 batches_per_epoch=self.config.batches_per_epoch, shuffle_buffer=8, seed=self.run.seed)
        data.set_epoch(epoch)
        return torch.utils.data.DataLoader(data, batch_size=None, num_workers=self.config.workers)

    def training_step(self, batch: Any, step: int) -> Mapping[str, float]:
        y = batch["y"] + 0.01 * torch.randn_like(batch["y"])
        loss = ((self.model(batch["x"]) - y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "x_sum": float(batch["x"].sum())}


def write_toy_shards(root: Path, dataset: str = "toyimg", shards: int = 3, per_shard: int = 6) -> Path:
    """`<root>/<dataset>/train/<dataset>-train-%06d.tar` of small coloured squares, fbench's schema."""
    from fbench.shards.schema import encode_jpeg, encode_sample
    from fbench.shards.writer import ShardFile

    rng = np.random.default_rng(0)
    for s in range(shards):
        out = ShardFile(root / dataset / "train" / f"{dataset}-train-{s:06d}.tar")
        for i in range(per_shard):
            image = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (16, 16, 3)).copy()
            out.write(encode_sample(f"{dataset}_{s}_{i}", encode_jpeg(image, 95), np.full((478, 3), np.nan),
                                    np.full((68, 2), np.nan), None, {"dataset": dataset, "split": "train"}))
        out.commit()
    return root


SHARD_TOY = MethodPlugin(name="shardtoy", summary="a linear toy model on shards (tests)", config=ShardToyConfig,
                         build=_unavailable, from_checkpoint=_unavailable, task=ShardToyTask)


if __name__ == "__main__":
    import fbench.registry as registry_module

    sys.modules.setdefault("train_support", sys.modules["__main__"])
    registry_module._REGISTRIES["methods"] = mount()
    from fbench.cli import main

    main(sys.argv[1:], prog_name="fbench")
