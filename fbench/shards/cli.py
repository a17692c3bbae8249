"""Command line for shards: the `fbench shards` group and the building blocks of `fbench prep <dataset>`.

Mount in fbench/cli.py with `main.add_command(shards_group)`. A pipeline plugin is
`prep_plugin(MySource(), summary)`; its command comes from `prep_command(source)` (or a
pipeline decorates its own command with `prep_options` and calls `config_from_options` +
`run_prep_command`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from fbench.landmarks.annotate import LandmarkConfig
from fbench.shards.source import DatasetSource, SourceOptions

PREP_EXAMPLE = ("\b\nExamples:\n  fbench prep {name} --root /data/{name} --out shards/ --workers 8\n"
                "  fbench prep {name} --root /data/{name} --out shards/ --part 3/16   # job 3 of an array of 16\n"
                "  fbench shards merge-manifests shards/{name}                      # after all parts\n"
                "  fbench shards inspect shards/{name}")


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


def prep_options(f: Callable) -> Callable:
    """All prep options (input selection, landmarks, crops, shards, parallelism) on a click command.
    The command receives them as keyword arguments; `config_from_options(**kwargs)` makes the PrepConfig."""
    options = [
        click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                     help="Dataset root, in the dataset's own layout."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Output root; shards go to OUT/<dataset>/<split>/."),
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
    return f


def config_from_options(filters: Mapping[str, tuple[str, ...]] | None = None, **kw: Any):
    """PrepConfig from `prep_options` keyword arguments (+ dataset-specific filters)."""
    from fbench.shards.prep import PrepConfig

    landmarks = LandmarkConfig(landmarks=kw["landmarks"], fan=kw["fan"], mediapipe_backend=kw["mediapipe_backend"],
                               crop_scale=kw["crop_scale"], size=kw["size"])
    options = SourceOptions(splits=kw["splits"], limit=kw["limit"], filters=dict(filters or {}))
    return PrepConfig(root=kw["root"], out=kw["out"], landmarks=landmarks, options=options,
                      frame_stride=kw["frame_stride"], maxcount=kw["maxcount"], jpeg_quality=kw["jpeg_quality"],
                      workers=kw["workers"], part=kw["part"], progress=kw["progress"])


def run_prep_command(source: DatasetSource, config) -> None:
    """Run a prep and print its summary; errors the user can fix become click errors."""
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
    c = result.counts
    click.echo(f"{source.name}: {c['samples']} samples in {c['shards']} shards, {c['rejects']} rejects "
               f"({c['inputs']} inputs from {c['items']} items); MediaPipe {c['mp']}, FAN {c['fan']}, "
               f"annotations {c['ann']}, video frames without a face {c['no_face']}")
    click.echo(f"units: {result.units_run} done now, {result.units_skipped} already complete; "
               f"{result.elapsed_s:.1f} s")
    if c["unexpected_errors"]:
        click.echo(f"WARNING: {c['unexpected_errors']} inputs failed with unexpected errors (see {result.rejects})",
                   err=True)
    click.echo(f"manifest: {result.manifest}\nrejects : {result.rejects}")
    if c["inputs"] and not c["samples"]:
        raise click.ClickException(f"every input was rejected ({c['rejects']}); the reasons are in {result.rejects}")


def prep_command(source: DatasetSource, help: str | None = None,
                 filter_options: Mapping[str, str] | None = None) -> click.Command:
    """A complete `fbench prep <dataset>` command for a source. `filter_options` maps extra
    comma-separated options to their help (e.g. {"views": "MEAD camera views, e.g. front,left_30"});
    their values reach `source.items` as `options.filters`."""
    filter_options = dict(filter_options or {})

    def command(**kw: Any) -> None:
        filters = {}
        for name in filter_options:
            value = kw.pop(name, None)
            if value:
                filters[name] = value
        run_prep_command(source, config_from_options(filters=filters, **kw))

    doc = (help or f"Prep {source.name} into landmark-annotated WebDataset shards.") + "\n\n" + \
        PREP_EXAMPLE.format(name=source.name)
    command.__doc__ = doc
    f = prep_options(command)
    for name, text in reversed(list(filter_options.items())):
        f = click.option(f"--{name.replace('_', '-')}", name, callback=_csv, default=None, help=text)(f)
    return click.command(source.name, help=doc)(f)


@dataclass(frozen=True)
class PrepPlugin:
    """A `fbench.pipelines` registry entry for a prep pipeline (name, summary, stage, command).

    In pipelines/<dataset>.py:  `plugin = prep_plugin(FFHQSource(), "FFHQ 70k faces, 68 landmarks")`
    and in pyproject.toml:      `[project.entry-points."fbench.pipelines"] ffhq = "pipelines.ffhq:plugin"`."""

    name: str
    summary: str
    command: click.Command
    source: DatasetSource
    stage: str = "prep"


def prep_plugin(source: DatasetSource, summary: str, help: str | None = None,
                filter_options: Mapping[str, str] | None = None) -> PrepPlugin:
    return PrepPlugin(source.name, summary, prep_command(source, help or summary, filter_options), source)


# ---------------------------------------------------------------------------------- fbench shards


@click.group("shards")
def shards_group() -> None:
    """Inspect and combine prepped WebDataset shards.

    \b
    Examples:
      fbench shards inspect shards/ffhq                  # counts + one sample drawn to a PNG
      fbench shards merge-manifests shards/lrs3          # join manifest.part-*.json of a job array
    """


@shards_group.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--sample", "index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which sample to draw (its position in the shards, in order).")
@click.option("--key", default=None, help="Draw the sample with this key instead.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the drawing (default: ./inspect-<key>.png).")
def inspect_command(path: Path, index: int, key: str | None, png: Path | None) -> None:
    """Print counts of a prepped dataset (or one shard) and draw a sample with its landmarks.

    PATH is a dataset folder (OUT/<dataset>), a manifest.json or a .tar. Landmarks are drawn
    in green (MediaPipe), orange (FAN) and blue (dataset annotations).

    \b
    Example:
      fbench shards inspect shards/ffhq --sample 10 --png ffhq10.png
    """
    from fbench.shards.manifest import ManifestError, load_manifest, read_rejects
    from fbench.shards.reader import ShardReadError, iter_raw, shard_paths
    from fbench.shards.schema import decode_sample

    manifest = None
    if path.is_dir() or path.suffix == ".json":
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            raise click.ClickException(str(exc)) from exc
    try:
        shards = shard_paths(path)
    except ShardReadError as exc:
        raise click.ClickException(str(exc)) from exc
    if manifest is not None:
        click.echo(f"dataset {manifest['dataset']}: {manifest['total']['samples']} samples in "
                   f"{len(manifest['shards'])} shards, {manifest['total']['rejects']} rejects, "
                   f"{manifest['total']['inputs']} inputs")
        for split, c in manifest["counts"].items():
            click.echo(f"  {split:<10} samples {c['samples']:>8}  rejects {c['rejects']:>6}  shards {c['shards']:>5}  "
                       f"MediaPipe {c['mp']:>8}  FAN {c['fan']:>8}  annotations {c['ann']:>8}  no face {c['no_face']:>6}")
        click.echo(f"  landmark sources: {manifest['landmark_sources']}")
        base = path if path.is_dir() else path.parent
        rejects = read_rejects(base / "rejects.jsonl")
        if rejects:
            reasons = Counter(r["reason"].split(": ", 1)[-1].split(" (")[0] for r in rejects)
            click.echo("  rejects: " + "; ".join(f"{n} x {why}" for why, n in reasons.most_common(5)))
    chosen, counted = None, 0
    try:
        for shard in shards:
            for raw in iter_raw(shard):
                if chosen is None and ((key is not None and raw["__key__"] == key) or (key is None and counted == index)):
                    chosen = raw
                counted += 1
            if chosen is not None and manifest is not None:
                break
    except ShardReadError as exc:
        raise click.ClickException(str(exc)) from exc
    if manifest is None:
        click.echo(f"{path}: {counted} samples")
    if chosen is None:
        raise click.ClickException(f"no sample {'with key ' + key if key else index} in {path}")
    sample = decode_sample(chosen)
    png = png or Path(f"inspect-{sample.key}.png")
    write_inspection(sample, png)
    meta = sample.meta
    click.echo(f"sample {sample.key}: {meta['source_path']}" + (f" frame {meta['frame_index']}" if meta.get("frame_index") is not None else "")
               + f", split {meta['split']}, box from {meta['box_source']}, landmarks {meta['landmarks']}, labels {meta['labels']}")
    click.echo(f"wrote {png}")


def write_inspection(sample, png: Path) -> None:
    """Draw a sample's landmarks on its crop and write a PNG (atomically)."""
    import cv2

    from fbench.landmarks.draw import COLORS, draw_points
    from fbench.shards.io import atomic_write_bytes

    image = draw_points(sample.image, sample.mp, COLORS["mp"], radius=1)
    image = draw_points(image, sample.fan, COLORS["fan"], radius=2)
    image = draw_points(image, sample.ann, COLORS["ann"], radius=2)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise click.ClickException("PNG encoding failed")
    atomic_write_bytes(png, buf.tobytes())


@shards_group.command("merge-manifests")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Manifest to write (default: manifest.json beside the parts); rejects.jsonl goes beside it.")
def merge_manifests_command(paths: tuple[Path, ...], out: Path | None) -> None:
    """Join the part manifests of a prep run split with --part i/N.

    PATHS are a dataset folder (all manifest.part-*.json in it) or the part manifest files.
    The result is the manifest.json and rejects.jsonl an undivided run writes.

    \b
    Example:
      fbench shards merge-manifests shards/lrs3
    """
    from fbench.shards.io import atomic_write_json, atomic_write_lines, dumps_json
    from fbench.shards.manifest import MANIFEST, REJECTS, ManifestError, find_parts, merge_manifests

    files: list[Path] = []
    for p in paths:
        files.extend(find_parts(p) if p.is_dir() else [p])
    if not files:
        raise click.ClickException(f"no manifest.part-*.json in {', '.join(map(str, paths))}")
    try:
        manifest, rejects = merge_manifests(files)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    out = out or files[0].parent / MANIFEST
    atomic_write_lines(out.parent / REJECTS, [dumps_json(r) for r in rejects])
    atomic_write_json(out, manifest)
    t = manifest["total"]
    click.echo(f"merged {len(files)} parts: {t['samples']} samples in {t['shards']} shards, {t['rejects']} rejects")
    click.echo(f"wrote {out} and {out.parent / REJECTS}")


__all__ = ["shards_group", "prep_options", "config_from_options", "run_prep_command", "prep_command",
           "prep_plugin", "PrepPlugin", "write_inspection"]
