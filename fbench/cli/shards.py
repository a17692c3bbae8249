"""`fbench shards`: inspect prepped shards and join the manifests of a job array."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from fbench.cli.options import CONTEXT


@click.group("shards", context_settings=CONTEXT)
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
    from fbench.io import atomic_write_bytes

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
    from fbench.io import atomic_write_json, atomic_write_lines, dumps_json
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
