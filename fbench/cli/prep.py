"""`fbench prep <dataset>`: the one command builder every prep pipeline uses.

A pipeline module defines `command()` returning `prep_command(MySource(), help, choices=...)`;
its registry entry (a `fbench.plugins.PipelinePlugin` with stage "prep") calls it on first use.

Settings come from, in increasing precedence: PrepConfig's defaults, `--config FILE`,
`-o key=value`, and the options typed on the command line. The resolved config is written
to `OUT/<dataset>/config.yaml` beside the shards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from fbench.cli.options import CONTEXT, config_options, dataset_root, explicit_options, load_command_config
from fbench.shards.source import ANNOTATIONS_FILTER, Choice, DatasetSource

PREP_EXAMPLE = ("\b\nExamples:\n  fbench prep {name} --out shards/\n"
                "  fbench prep {name} --root /data/{name} --out shards/ --workers 8\n"
                "  fbench prep {name} --out shards/ --part 3/16   # job 3 of an array of 16\n"
                "  fbench shards merge-manifests shards/{name}     # after all parts\n"
                "  fbench shards inspect shards/{name}")

# option name -> PrepConfig key: typed options win over --config/-o
OPTION_KEYS = {"out": "out", "splits": "options.splits", "limit": "options.limit", "frame_stride": "frame_stride",
               "landmarks": "landmarks.landmarks", "fan": "landmarks.fan",
               "mediapipe_backend": "landmarks.mediapipe_backend", "crop_scale": "landmarks.crop_scale",
               "size": "landmarks.size", "maxcount": "maxcount", "jpeg_quality": "jpeg_quality", "workers": "workers",
               "part": "part", "progress": "progress"}


@dataclass(frozen=True)
class FileOption:
    """A dataset input beyond the root, `--<name> FILE` (BP4D's `--fits fits.h5`).

    The prep config records it under `options.filters[name]` as (absolute path, SHA-256 prefix of
    its bytes): it is part of the shards' content, so resuming with another file, or with the same
    file changed, is refused. `default` is used when the option is not given (relative to the
    working directory); a folder stands for `folder/<in_folder>`. A missing file is an error that
    names it and ends with `missing` (what makes the file)."""

    name: str
    help: str
    default: Path | None = None
    in_folder: str | None = None
    missing: str = ""

    def resolve(self, value: Path | None) -> tuple[str, str]:
        """(absolute path, content digest) of the file the option names; ClickException when there is none."""
        import hashlib

        path = Path(value) if value is not None else self.default
        if path is None:
            raise click.UsageError(f"--{self.name} FILE is required")
        if path.is_dir() and self.in_folder:
            path = path / self.in_folder
        if not path.is_file():
            given = "" if value is not None else f" (the default; pass --{self.name} FILE)"
            raise click.ClickException(f"--{self.name}: {path}{given} is not a file. {self.missing}".rstrip())
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return str(path.resolve()), digest.hexdigest()[:16]


def file_filter(options, name: str) -> tuple[Path, str] | None:
    """(path, digest) of the FileOption `name` recorded in a prep's SourceOptions (None without one)."""
    value = options.filters.get(name)
    if not value:
        return None
    if len(value) != 2:
        raise ValueError(f"options.filters.{name}: expected [path, digest], got {list(value)}")
    return Path(value[0]), value[1]


def _csv(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


def _part(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    from fbench.shards.prep import parse_part

    try:
        return parse_part(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _choice_callback(choice: Choice) -> Callable:
    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        values = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return choice.parse(values) or None
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return callback


def prep_options(f: Callable) -> Callable:
    """All prep options (input selection, landmarks, crops, shards, parallelism)."""
    options = [
        click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Dataset root, in the dataset's own layout (default: its configured place, see "
                          "`fbench assets`)."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("shards"),
                     show_default=True, help="Output root; shards go to OUT/<dataset>/<split>/."),
        click.option("--splits", callback=_csv, default=None, help="Comma-separated splits to prep (default: all)."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="At most N items per split (quick runs)."),
        click.option("--frame-stride", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Videos: keep every K-th frame (frame indices are kept)."),
        click.option("--landmarks", type=click.Choice(["detect", "annotations"]), default="detect", show_default=True,
                     help="detect: MediaPipe (+ FAN) plus any dataset annotations; annotations: only the "
                          "dataset's own landmarks, no detector (synthetic data)."),
        click.option("--fan", type=click.Choice(["auto", "off", "required"]), default="auto", show_default=True,
                     help="FAN 68 landmarks: auto = when its weights are in torch's hub cache; required = fail "
                          "up front without them."),
        click.option("--mediapipe-backend", type=click.Choice(["auto", "facemesh", "tasks"]), default="auto",
                     show_default=True, help="auto = Tasks FaceLandmarker when face_landmarker.task is installed, "
                                             "else the bundled FaceMesh."),
        click.option("--crop-scale", type=click.FloatRange(min=0, min_open=True), default=2.2, show_default=True,
                     help="Crop side = this x the landmark box (MediaPipe, else FAN, else annotations)."),
        click.option("--size", type=click.IntRange(min=16), default=448, show_default=True,
                     help="Crop size in pixels."),
        click.option("--maxcount", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Samples per shard."),
        click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Worker processes (each owns whole shards)."),
        click.option("--part", callback=_part, default="0/1", show_default=True,
                     help="i/N: prep part i of N (0-based), for job arrays; join with `fbench shards merge-manifests`."),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return config_options(f)


def run_prep_command(source: DatasetSource, config) -> None:
    """Run a prep and print its summary; errors the user can fix become click errors."""
    from fbench.config import save_config
    from fbench.faults import describe_os_error
    from fbench.landmarks.fan import FanUnavailable, missing_fan_files
    from fbench.shards.prep import PrepError, run_prep

    if config.landmarks.landmarks == "detect" and config.landmarks.fan == "auto":
        missing = missing_fan_files()
        if missing:
            click.echo(f"note: FAN is off ({', '.join(p.name for p in missing)} not in {missing[0].parent}): "
                       "fan.npy will be NaN; `fbench assets` says where to get the weights", err=True)
    try:
        result = run_prep(source, config)
    except (PrepError, FanUnavailable, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a read-only or full --out
        raise click.ClickException(describe_os_error(exc, config.out)) from exc
    save_config(config, config.out / source.name / "config.yaml")
    c = result.counts
    click.echo(f"{source.name}: {c['samples']} samples in {c['shards']} shards, {c['rejects']} rejects "
               f"({c['inputs']} inputs from {c['items']} items); MediaPipe {c['mp']}, FAN {c['fan']}, "
               f"annotations {c['ann']}, video frames without a face {c['no_face']}")
    if result.listing.get("summary"):
        click.echo(f"{source.name}: {result.listing['summary']}")
    click.echo(f"units: {result.units_run} done now, {result.units_skipped} already complete; "
               f"{result.elapsed_s:.1f} s")
    if c["unexpected_errors"]:
        click.echo(f"WARNING: {c['unexpected_errors']} inputs failed with unexpected errors (see {result.rejects})",
                   err=True)
    click.echo(f"manifest: {result.manifest}\nrejects : {result.rejects}\nconfig  : "
               f"{config.out / source.name / 'config.yaml'}")
    if c["inputs"] and not c["samples"]:
        raise click.ClickException(f"every input was rejected ({c['rejects']}); the reasons are in {result.rejects}")


def prep_command(source: DatasetSource, help: str, choices: Sequence[Choice] = (), annotation_table: bool = False,
                 examples: Sequence[str] = (), files: Sequence[FileOption] = ()) -> click.Command:
    """`fbench prep <source.name>`: the standard prep options, the dataset's filter options
    (`choices`, values checked against the dataset's vocabulary), with `annotation_table`
    `--annotations TABLE` (per-frame landmarks for video datasets), and the dataset's input files
    beyond the root (`files`, each `--<name> FILE`, reaching the source as `file_filter(options, name)`).
    `examples`: dataset-specific command lines added to the standard examples of --help."""
    from fbench.shards.prep import PrepConfig

    @click.pass_context
    def command(ctx: click.Context, root: Path | None, config_path: Path | None, overrides: tuple[str, ...],
                **kw: Any) -> None:
        explicit = explicit_options(ctx, OPTION_KEYS)
        filters: dict[str, tuple[str, ...]] = {}
        for choice in choices:
            if kw.get(choice.name):
                filters[choice.name] = kw[choice.name]
        table = kw.get(ANNOTATIONS_FILTER)
        if table is not None:
            # Absolute, so the manifest records which table made the landmarks, and resumes compare it.
            filters[ANNOTATIONS_FILTER] = (str(Path(table).resolve()),)
        if filters:
            explicit["options.filters"] = filters
        config = load_command_config(PrepConfig, config_path, overrides, explicit)
        config = dataclasses.replace(config, root=dataset_root(source.name, root if root is not None else config.root))
        if files:  # resolved (and digested) now: typed, else the config's (a run's config.yaml), else the default
            given = {o.name: kw.get(o.name) if kw.get(o.name) is not None else
                     (Path(config.options.filters[o.name][0]) if config.options.filters.get(o.name) else None)
                     for o in files}
            resolved = {option.name: option.resolve(given[option.name]) for option in files}
            config = dataclasses.replace(config, options=dataclasses.replace(
                config.options, filters={**config.options.filters, **resolved}))
        if (annotation_table and config.landmarks.landmarks == "annotations"
                and ANNOTATIONS_FILTER not in config.options.filters):
            click.echo(f"note: {source.name} has no landmark annotations of its own; without --annotations every "
                       "frame is kept with NaN landmarks, cropped to the centred frame square", err=True)
        run_prep_command(source, config)

    doc = help + "\n\n" + PREP_EXAMPLE.format(name=source.name) + "".join(f"\n  {line}" for line in examples)
    f = prep_options(command)
    if annotation_table:
        f = click.option(f"--{ANNOTATIONS_FILTER}", ANNOTATIONS_FILTER, default=None,
                         type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="Per-frame 68-point landmarks (HDF5 table with columns path, frame, landmarks68 "
                              "and optional face_visible; a synthetic dataset's fbench_ground_truth.h5 is one): "
                              "they become the annotation landmarks of the videos' frames.")(f)
    for option in reversed(files):
        f = click.option(f"--{option.name}", option.name, default=None,
                         type=click.Path(exists=False, path_type=Path),
                         help=option.help + (f" [default: {option.default}]" if option.default else ""))(f)
    for choice in reversed(choices):
        f = click.option(f"--{choice.name.replace('_', '-')}", choice.name, default=None,
                         callback=_choice_callback(choice),
                         help=f"{choice.help} " + (f"One of: {', '.join(choice.choices)}." if choice.single else
                                                   f"Comma-separated, from: {', '.join(choice.choices)}."))(f)
    return click.command(source.name, help=doc, context_settings=CONTEXT)(f)
