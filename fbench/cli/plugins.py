"""Command groups filled from the plugin registries, and the commands built from plugins:
`fbench prep|fit-flame <pipeline>`, `fbench train <method>`, `fbench eval <benchmark>`."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import click

from fbench.cli.options import (
    CONTEXT,
    config_options,
    dataset_root,
    explicit_options,
    flame_option,
    load_command_config,
    user_errors,
)
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


_TRAIN_FLAGS = ("--shards", "--out", "--resume", "--init", "--device", "--flame", "--config", "--set", "--help")


def _train_option_decorators(method: MethodPlugin) -> list[tuple[str, str, Callable]]:
    """(click parameter name, config key, decorator) for the method's TrainOptions."""
    flags = [o.flag for o in method.train_options] + ([method.train_stages.flag] if method.train_stages else [])
    taken = sorted({f for f in flags if f in _TRAIN_FLAGS or flags.count(f) > 1})
    if taken:
        raise click.ClickException(f"method plugin {method.name!r}: train options {taken} clash with `fbench train`'s "
                                   "own options or with each other")
    out = []
    for i, opt in enumerate(method.train_options):
        dest = f"train_option_{i}"
        if opt.is_flag:
            decorator = click.option(f"{opt.flag}/--no-{opt.flag[2:]}", dest, default=None, help=opt.help)
        elif opt.path:
            decorator = click.option(opt.flag, dest, type=click.Path(path_type=Path), default=None, help=opt.help)
        else:
            decorator = click.option(opt.flag, dest, default=None, help=opt.help,
                                     type=click.Choice(opt.choices) if opt.choices else str)
        out.append((dest, opt.key, decorator))
    return out


def _stage_selection(stages: Any, typed: str | None, overrides: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """The stage value chosen (the typed flag, else an `-o KEY=<all>` override) and the overrides
    without that one (the `all` value is no value of the config key)."""
    if typed is not None:
        return typed, overrides
    prefix = f"{stages.key}="
    values = [o[len(prefix):].strip() for o in overrides if o.startswith(prefix)]
    if values and values[-1] == stages.all:
        return stages.all, tuple(o for o in overrides if not o.startswith(prefix))
    return None, overrides


def train_command(method: MethodPlugin) -> click.Command:
    """`fbench train <method>` from a method's config and training task, with the method's own
    options (`train_options`) and stages (`train_stages`: one stage is a normal run in RUN/, the
    `all` value runs each stage into RUN/<stage>/, fbench/train/stages.py)."""
    name = method.name
    stages = method.train_stages
    extra_options = _train_option_decorators(method)
    staged_help = "" if stages is None else (
        f"\n\n{stages.flag} {stages.all} runs the stages {', '.join(stages.names)} in order into RUN_DIR/<stage>/, "
        "each starting from the previous stage's network weights; --resume then skips the finished stages and "
        "continues the unfinished one.")
    staged_example = "" if stages is None else (
        f"\n  fbench train {name} {stages.flag} {stages.all} --out runs/{name}"
        f"\n  fbench train {name} --out runs/{name} --resume   # a {stages.flag} {stages.all} run too")

    def command_help() -> str:
        return (f"Train {name}: {method.summary}\n\n"
                "Writes RUN_DIR/config.yaml (resolved settings, `loop` for the training loop), "
                "checkpoints/last.pt, metrics.csv, summary.json and images/. Rerun with --resume after "
                "a stop: it continues from the last checkpoint exactly." + staged_help + "\n\n"
                f"\b\nExamples:\n  fbench train {name}\n"
                f"  fbench train {name} --shards shards/ --out runs/{name} -o loop.max_steps=20000\n"
                f"  fbench train {name} --out runs/{name} --resume\n"
                f"  fbench train {name} --init runs/{name}-pre/checkpoints/last.pt --out runs/{name}-core"
                + staged_example + "\n"
                f"  torchrun --nproc_per_node 2 -m fbench train {name} --device cuda")

    def add_method_options(f: Callable) -> Callable:
        for _, _, decorator in reversed(extra_options):
            f = decorator(f)
        if stages is not None:
            f = click.option(stages.flag, "train_stage", type=click.Choice(stages.choices), default=None,
                             help=f"Stage to train (config key {stages.key}); {stages.all}: every stage in order, "
                                  f"into RUN_DIR/<stage>/.")(f)
        return f

    @click.command(name, context_settings=CONTEXT, help=command_help())
    @click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=Path("shards"),
                  show_default=True, help="Shard root (`fbench prep --out` writes <root>/<dataset>/<split>/).")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help=f"Run folder [default: runs/{name}].")
    @click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoints/last.pt (its "
                                                 "config.yaml is the config unless --config is given).")
    @click.option("--init", "init", type=click.Path(path_type=Path), default=None,
                  help="Start from network weights (fresh optimisers, step 0): a run folder or its "
                       "checkpoints/last.pt (modules matched by name), or a released-layout checkpoint (e.g. "
                       "SMIRK.pt, TEASER.pt) for a method whose config has train.init_from.")
    @click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto (config key loop.device; default auto).")
    @add_method_options
    @flame_option
    @config_options
    @user_errors(ValueError, ShardReadError)
    @click.pass_context
    def command(ctx: click.Context, shards: Path, out: Path | None, resume: bool, init: Path | None,
                device: str | None, flame: Path | None, config_path: Path | None, overrides: tuple[str, ...],
                train_stage: str | None = None, **options: Any) -> None:
        from fbench.train.distributed import env_world, process_group_up, shutdown
        from fbench.train.stages import plan_stages, staged_record

        if method.task is None:
            raise click.ClickException(f"{name}: this method plugin has no training task; it can be "
                                       "evaluated and run (`fbench eval`, `fbench reconstruct`) but not trained by fbench")
        if resume and init is not None:
            raise click.UsageError("--resume continues a run; --init starts a new one: pass one of them")
        main_rank = env_world()[0] == 0
        say = (lambda s: click.echo(s, err=True)) if main_rank else (lambda s: None)
        out = out if out is not None else Path("runs") / name
        from fbench.config import typed_value

        config_class = train_config_class(method.config)
        typed = {}
        for option, (dest, key, _) in zip(method.train_options, extra_options):
            for key, value in explicit_options(ctx, {dest: key}).items():
                # a flag as true/false, a path as text; text (a choice) as the config field's type wants it
                typed[key] = value if option.is_flag else str(value) if option.path \
                    else typed_value(config_class, key, value)
        shards_typed = ctx.get_parameter_source("shards") != click.core.ParameterSource.DEFAULT
        if device is not None:
            typed["loop.device"] = device
        init = _route_init(init, config_class, typed, say)
        run = functools.partial(_train_run, method, say=say, shards=shards, shards_typed=shards_typed, flame=flame)

        def own_config(path: Path | None) -> Path | None:  # a resumed run's config unless --config is given
            if not resume or config_path is not None:
                return config_path
            if path is not None:
                say(f"config: {path} (the run's own)")
            return path

        def single(typed: dict[str, Any]) -> None:
            path = own_config(out / "config.yaml" if (out / "config.yaml").is_file() else None)
            run(out, resume=resume, init=init, overrides=overrides, typed=typed, config_path=path, recorded=resume)

        if stages is None:
            single(typed)
            return
        chosen, overrides = _stage_selection(stages, train_stage, overrides)
        if chosen is None and resume and staged_record(out) is not None:
            chosen = stages.all  # `--resume` of a run of all stages
        if chosen != stages.all:
            if chosen is not None:
                typed[stages.key] = typed_value(config_class, stages.key, chosen)
                if resume and staged_record(out) is not None:
                    raise click.UsageError(f"{out} holds a run of all stages ({out / 'stages.json'}): resume it with "
                                           f"{stages.flag} {stages.all} (or none), or one stage with --out "
                                           f"{out}/{chosen}")
            single(typed)
            return
        plans = plan_stages(out, stages.names, resume, init, write=main_rank)  # every rank, rank 0 writes
        group_before = process_group_up()
        try:  # under torchrun the stages share one process group (started by the first stage)
            _run_stages(plans, run, stages, say, main_rank, out, resume, overrides, typed, own_config, config_class)
        finally:
            if not group_before:
                shutdown()
        say(f"{name}: stages {', '.join(stages.names)} done in {out}")

    return command


def _route_init(init: Path | None, config_class: type, typed: dict[str, Any],
                say: Callable[[str], None]) -> Path | None:
    """What `--init` names, as the loop's `init` (a training checkpoint: modules by name) or, for a
    released-layout checkpoint, the method's own `train.init_from` (put in `typed`; the task reads
    it in setup). A run folder means its checkpoints/last.pt."""
    from fbench.io import CheckpointError
    from fbench.train.loop import read_train_checkpoint

    if init is None or not init.exists():
        return init  # the loop names a missing file
    if init.is_dir():
        last = init / "checkpoints" / "last.pt"
        if not last.is_file():
            raise click.UsageError(f"--init {init}: a folder, but no {last} (an `fbench train` run writes it)")
        return last
    try:
        read_train_checkpoint(init)
        return init
    except CheckpointError:
        section = next((f for f in dataclasses.fields(config_class) if f.name == "train"), None)
        make = getattr(section, "default_factory", dataclasses.MISSING)
        if make is dataclasses.MISSING or not hasattr(make(), "init_from"):
            raise
    say(f"--init {init}: a released-layout checkpoint, read by the method (train.init_from)")
    typed["train.init_from"] = str(init)
    return None


def _run_stages(plans: list[Any], run: Callable[..., None], stages: Any, say: Callable[[str], None], main_rank: bool,
                out: Path, resume: bool, overrides: tuple[str, ...], typed: dict[str, Any],
                own_config: Callable[[Path | None], Path | None], config_class: type) -> None:
    from fbench.config import typed_value
    from fbench.train.stages import mark_stage_done

    for plan in plans:
        label = f"stage {plan.name} ({plan.index + 1}/{len(plans)})"
        if plan.done:
            say(f"{label}: finished, skipped ({plan.out})")
            continue
        say(f"{label}: " + ("resuming" if plan.resume else
                            f"from {plan.init}" if plan.init is not None else "from scratch") + f" in {plan.out}")
        run(plan.out, resume=plan.resume, init=plan.init, overrides=overrides,
            typed={**typed, stages.key: typed_value(config_class, stages.key, plan.name)}, config_path=own_config(plan.resume_config()), recorded=resume,
            stage={"stage": plan.name, "stages": list(stages.names)}, keep_process_group=True)
        if main_rank:
            mark_stage_done(out, plan.name)


def _train_run(method: MethodPlugin, out: Path, *, resume: bool, init: Path | None, overrides: tuple[str, ...],
               typed: dict[str, Any], config_path: Path | None, recorded: bool, say: Callable[[str], None],
               shards: Path, shards_typed: bool, flame: Path | None, stage: dict[str, Any] | None = None,
               keep_process_group: bool = False) -> None:
    """One training run into `out` (a single run, or one stage of a staged run). `recorded`: take
    the shards and FLAME recorded in the config's `run` section unless typed (a resumed run's)."""
    from fbench.config import save_config
    from fbench.train import train

    name = method.name
    config = load_command_config(train_config_class(method.config), config_path, overrides, typed)
    if recorded:  # the run's own shards and FLAME unless typed again
        facts = config.run if isinstance(config.run, dict) else {}
        if not shards_typed and facts.get("shards"):
            shards = Path(facts["shards"])
        if flame is None and facts.get("flame"):
            flame = Path(facts["flame"])
    say(f"shards: {shards.resolve()}" + ("" if shards.is_dir() else " (no such folder yet: `fbench prep "
                                                                      "<dataset> --out` writes there)"))
    say(f"run: {out.resolve()}")

    def write_config(run: Any) -> None:
        facts = {"method": name, "shards": str(shards), "out": str(out), "flame": str(flame or ""),
                 "init": str(init or ""), "resumed": resume, "device": str(run.device),
                 "world_size": run.world_size, **(stage or {}), **run.notes}
        save_config(dataclasses.replace(config, run=facts), out / "config.yaml")

    result = train(lambda: method.task(config), config.loop, out, shards=shards, flame=flame, resume=resume,
                   init=init, save_config=write_config, echo=say, keep_process_group=keep_process_group)
    say(f"{name}: {result.step} steps; checkpoint {result.last_checkpoint}; metrics {out / 'metrics.csv'}"
        + "".join(f"; exported {p}" for p in result.exported))


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
