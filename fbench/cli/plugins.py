"""Command groups filled from the plugin registries, and the commands built from plugins:
`fbench prep|fit-flame <pipeline>`, `fbench train <method>`, `fbench eval <benchmark>`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from fbench.cli.options import CONTEXT, config_options, dataset_root, flame_option, load_command_config, user_errors
from fbench.plugins import BenchmarkPlugin, MethodPlugin
from fbench.registry import PluginError, registry
from fbench.shards.reader import ShardReadError


class PluginGroup(click.Group):
    """A click group whose subcommands come from one registry, built only when used.

    `make(plugin)` turns a plugin into its command; `stage` keeps only pipelines offering that
    stage (pipeline plugins are light records, so filtering imports no pipeline code)."""

    def __init__(self, *args: Any, registry_kind: str, make: Callable[[Any], click.Command], stage: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, context_settings=CONTEXT, **kwargs)
        self.registry_kind, self.make, self.stage = registry_kind, make, stage

    def _plugin(self, name: str) -> Any | None:
        reg = registry(self.registry_kind)
        if name not in reg:
            return None
        plugin = reg.get(name)
        return plugin if self.stage is None or self.stage in plugin.stages else None

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = []
        for name in registry(self.registry_kind).names():
            try:
                if self._plugin(name) is not None:
                    names.append(name)
            except PluginError as exc:
                click.echo(f"warning: {exc}", err=True)
        return sorted(set(super().list_commands(ctx)) | set(names))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        try:
            plugin = self._plugin(name)
        except PluginError as exc:
            raise click.ClickException(str(exc)) from exc
        return None if plugin is None else self.make(plugin)


# ------------------------------------------------------------------------------------ train


_TRAIN_CONFIGS: dict[type, type] = {}


def train_config_class(method_config: type) -> type:
    """The config `fbench train` resolves: the method's config dataclass plus a `loop` section
    (fbench.train.LoopConfig) and `run`, a record of the run's facts (written, never read:
    so the config.yaml of a run can be passed back with `--config`). A method config that
    declares its own `loop` field keeps it. The task receives an instance of this subclass."""
    from fbench.train import LoopConfig

    if method_config in _TRAIN_CONFIGS:
        return _TRAIN_CONFIGS[method_config]
    names = {f.name for f in dataclasses.fields(method_config)}
    extra: list[tuple[str, Any, Any]] = []
    if "loop" not in names:
        extra.append(("loop", LoopConfig, dataclasses.field(default_factory=LoopConfig)))
    if "run" not in names:
        extra.append(("run", dict[str, Any], dataclasses.field(default_factory=dict)))
    cls = method_config if not extra else dataclasses.make_dataclass(
        f"{method_config.__name__}Train", extra, bases=(method_config,),
        frozen=method_config.__dataclass_params__.frozen)
    _TRAIN_CONFIGS[method_config] = cls
    return cls


def train_command(method: MethodPlugin) -> click.Command:
    """`fbench train <method>` from a method's config and training task."""
    name = method.name

    @click.command(name, context_settings=CONTEXT,
                   help=f"Train {name}: {method.summary}\n\n"
                        "Writes RUN_DIR/config.yaml (resolved settings, `loop` for the training loop), "
                        "checkpoints/last.pt, metrics.csv, summary.json and images/. Rerun with --resume after "
                        "a stop: it continues from the last checkpoint exactly.\n\n"
                        f"\b\nExamples:\n  fbench train {name}\n"
                        f"  fbench train {name} --shards shards/ --out runs/{name} -o loop.max_steps=20000\n"
                        f"  fbench train {name} --out runs/{name} --resume\n"
                        f"  fbench train {name} --init runs/{name}-pre/checkpoints/last.pt --out runs/{name}-core\n"
                        f"  torchrun --nproc_per_node 2 -m fbench train {name} --device cuda")
    @click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=Path("shards"),
                  show_default=True, help="Shard root (`fbench prep --out` writes <root>/<dataset>/<split>/).")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help=f"Run folder [default: runs/{name}].")
    @click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoints/last.pt (its "
                                                 "config.yaml is the config unless --config is given).")
    @click.option("--init", "init", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Start from the network weights of another run's checkpoint (fresh optimisers, step 0).")
    @click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto (config key loop.device; default auto).")
    @flame_option
    @config_options
    @user_errors(ValueError, ShardReadError)
    @click.pass_context
    def command(ctx: click.Context, shards: Path, out: Path | None, resume: bool, init: Path | None,
                device: str | None, flame: Path | None, config_path: Path | None, overrides: tuple[str, ...]) -> None:
        from fbench.config import save_config
        from fbench.train import train
        from fbench.train.distributed import env_world

        if method.task is None:
            raise click.ClickException(f"{name}: this method plugin has no training task; it can be "
                                       "evaluated and run (`fbench eval`, `fbench reconstruct`) but not trained by fbench")
        if resume and init is not None:
            raise click.UsageError("--resume continues a run; --init starts a new one: pass one of them")
        main_rank = env_world()[0] == 0
        say = (lambda s: click.echo(s, err=True)) if main_rank else (lambda s: None)
        out = out if out is not None else Path("runs") / name
        if resume and config_path is None and (out / "config.yaml").is_file():
            config_path = out / "config.yaml"
            say(f"config: {config_path} (the run's own)")
        config = load_command_config(train_config_class(method.config), config_path, overrides,
                                     {"loop.device": device} if device is not None else None)
        if resume:  # the run's own shards and FLAME unless typed again
            recorded = config.run if isinstance(config.run, dict) else {}
            if ctx.get_parameter_source("shards") == click.core.ParameterSource.DEFAULT and recorded.get("shards"):
                shards = Path(recorded["shards"])
            if flame is None and recorded.get("flame"):
                flame = Path(recorded["flame"])
        say(f"shards: {shards.resolve()}" + ("" if shards.is_dir() else " (no such folder yet: `fbench prep "
                                                                          "<dataset> --out` writes there)"))
        say(f"run: {out.resolve()}")

        def write_config(run: Any) -> None:
            facts = {"method": name, "shards": str(shards), "out": str(out), "flame": str(flame or ""),
                     "init": str(init or ""), "resumed": resume, "device": str(run.device),
                     "world_size": run.world_size, **run.notes}
            save_config(dataclasses.replace(config, run=facts), out / "config.yaml")

        result = train(lambda: method.task(config), config.loop, out, shards=shards, flame=flame, resume=resume,
                       init=init, save_config=write_config, echo=say)
        say(f"{name}: {result.step} steps; checkpoint {result.last_checkpoint}; metrics {out / 'metrics.csv'}"
            + "".join(f"; exported {p}" for p in result.exported))

    return command


# ------------------------------------------------------------------------------------- eval


def method_reconstructor(method: MethodPlugin, checkpoint: Path | None, options: tuple[str, ...],
                         data_root: Path | None = None) -> Any:
    """The model a benchmark scores: `--checkpoint`, else the method's catalogued checkpoint,
    else (methods without weights, e.g. reference methods) built from its config. A config field
    `data_root` left empty is set to the benchmark's dataset root."""
    from fbench.assets import get_asset

    if checkpoint is not None or method.checkpoint_asset is not None:
        if checkpoint is None:
            asset = get_asset(method.checkpoint_asset)
            checkpoint = asset.paths()[0]
            if not checkpoint.is_file():
                raise click.ClickException(f"{method.name}: no checkpoint at {checkpoint} (the {asset.name} asset); pass "
                                       f"--checkpoint FILE or put {checkpoint.name} there (obtain: {asset.source})")
        return method.from_checkpoint(checkpoint)
    config = load_command_config(method.config, None, options)
    if data_root is not None and "data_root" in {f.name for f in dataclasses.fields(config)} \
            and not getattr(config, "data_root"):
        config = dataclasses.replace(config, data_root=str(data_root))
    return method.build(config)


def eval_command(benchmark: BenchmarkPlugin) -> click.Command:
    """`fbench eval <benchmark> --method M` from a benchmark's `evaluate`."""

    @click.command(benchmark.name, context_settings=CONTEXT,
                   help=f"Score a method on {benchmark.name}: {benchmark.summary}\n\n\b\nExamples:\n"
                        f"  fbench eval {benchmark.name} --method smirk\n"
                        f"  fbench eval {benchmark.name} --method smirk --checkpoint runs/smirk/SMIRK.pt "
                        f"--root /data/{benchmark.name} --out results/\n"
                        f"  fbench eval {benchmark.name} --method oracle   # ground truth of a synthetic dataset")
    @click.option("--method", "method_name", required=True, help="A method plugin (`fbench list` shows them).")
    @click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="The method's checkpoint (default: its catalogued one, see `fbench assets`).")
    @click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Benchmark data root (default: the configured dataset root, see `fbench assets`).")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help=f"Results folder [default: results/{benchmark.name}/<method>].")
    @click.option("--method-option", "method_options", multiple=True, metavar="KEY=VALUE",
                  help="A setting of the method's config (methods built without a checkpoint), repeatable.")
    @flame_option
    @config_options
    @user_errors(ValueError)
    def command(method_name: str, checkpoint: Path | None, root: Path | None, out: Path | None,
                method_options: tuple[str, ...], flame: Path | None, config_path: Path | None,
                overrides: tuple[str, ...]) -> None:
        from fbench.config import save_config

        try:
            method = registry("methods").get(method_name)
        except PluginError as exc:
            raise click.ClickException(str(exc)) from exc
        # What the command knows of the run goes into the benchmark config's fields of these
        # names (results are filed and cached under them).
        facts = {"method_name": method_name, "checkpoint": str(checkpoint or ""), "flame": str(flame or "")}
        fields = {f.name for f in dataclasses.fields(benchmark.config)}
        config = load_command_config(benchmark.config, config_path, overrides,
                                     {k: v for k, v in facts.items() if k in fields})
        root = dataset_root(benchmark.dataset or benchmark.name, root)
        out = out if out is not None else Path("results") / benchmark.name / method_name
        model = method_reconstructor(method, checkpoint, method_options, data_root=root)
        metrics = benchmark.evaluate(model, root, out, config)
        if not (out / "config.yaml").is_file():  # benchmarks write theirs with run facts; else the settings
            save_config(config, out / "config.yaml",
                        extra={"run": {"method": method_name, "checkpoint": checkpoint, "root": root}})
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        click.echo(f"{benchmark.name} / {method_name}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()))
        click.echo(f"results: {out}")

    return command
