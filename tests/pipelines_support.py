"""Helpers for the prep-pipeline tests (test_pipelines_*.py): run `fbench prep` through the CLI,
read the shards back, and compare their landmarks with a synthetic dataset's ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from click.testing import CliRunner

from fbench.landmarks import invert_affine, transform_points
from fbench.shards.manifest import read_rejects
from fbench.shards.reader import iter_samples, shard_paths
from fbench.shards.schema import ShardSample


def prep_cli(dataset: str, root: Path, out: Path, *args: str, ok: bool = True) -> tuple[str, int]:
    """`fbench prep <dataset> --root ROOT --out OUT --no-progress ARGS` via fbench.cli.main: (output, exit code)."""
    from fbench.cli import main

    result = CliRunner().invoke(main, ["prep", dataset, "--root", str(root), "--out", str(out), "--no-progress",
                                       *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result.output, result.exit_code


def synth_cli(dataset: str, out: Path, flame_dir: Path, *args: str) -> str:
    """`fbench synth DATASET --out OUT --flame FLAME ARGS` through fbench.cli.main (exit 0 asserted): its output."""
    from fbench.cli import main

    result = CliRunner().invoke(main, ["synth", dataset, "--out", str(out), "--flame", str(flame_dir), *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def load_prepped(out: Path, dataset: str) -> tuple[dict, list[ShardSample], list[dict]]:
    """(manifest, samples in shard order, rejects) of a prepped dataset."""
    folder = out / dataset
    manifest = json.loads((folder / "manifest.json").read_text())
    samples = list(iter_samples(shard_paths(folder), decode_image=False))
    return manifest, samples, read_rejects(folder / "rejects.jsonl")


def source_landmarks(sample: ShardSample) -> np.ndarray:
    """The sample's annotation landmarks mapped back to source pixels through its stored affine."""
    assert sample.ann is not None, sample.key
    return transform_points(invert_affine(sample.affine), sample.ann).astype(np.float64)


def check_counts(manifest: dict, samples: Sequence[ShardSample], rejects: Sequence[dict]) -> None:
    """samples + rejects = inputs, per split and in total, and the files agree with the manifest."""
    for split, c in manifest["counts"].items():
        assert c["samples"] + c["rejects"] == c["inputs"], (split, c)
        assert c["samples"] == sum(s.meta["split"] == split for s in samples), split
        assert c["rejects"] == sum(r["split"] == split for r in rejects), split
    t = manifest["total"]
    assert t["samples"] + t["rejects"] == t["inputs"] and t["unexpected_errors"] == 0
    assert (t["samples"], t["rejects"]) == (len(samples), len(rejects))
    keys = [s.key for s in samples]
    assert len(set(keys)) == len(keys)


def mediapipe_error(sample: ShardSample, landmarks_mp: np.ndarray, landmarks68: np.ndarray) -> float:
    """Median distance between the sample's MediaPipe points (SMIRK's 105, mapped back to source
    pixels) and the ground truth's, as a fraction of the face's size (mean extent of its 68 points)."""
    from fbench.landmarks.indices import SMIRK_MEDIAPIPE_INDICES

    back = transform_points(invert_affine(sample.affine), sample.mp)[list(SMIRK_MEDIAPIPE_INDICES), :2]
    size = float(np.ptp(landmarks68, axis=0).mean())
    return float(np.median(np.linalg.norm(back - landmarks_mp, axis=1)) / size)


def check_crop_pixels(out: Path, dataset: str, root: Path, limit: int = 4) -> float:
    """The stored JPEG crops of the first `limit` image samples are their source files under the
    stored affine to 0.1 px (pixel_check: an independent skimage warp of the file read with PIL).
    Returns the worst offset in crop pixels."""
    from PIL import Image

    from pixel_check import assert_crop_matches_affine

    worst, seen = 0.0, 0
    for s in iter_samples(shard_paths(out / dataset)):
        if s.meta.get("frame_index") is not None or seen >= limit:
            continue
        with Image.open(root / s.meta["source_path"]) as im:
            source = np.asarray(im.convert("RGB"))
        worst = max(worst, assert_crop_matches_affine(s.image, source, s.affine, s.key))
        seen += 1
    assert seen >= min(limit, 1)
    return worst


# `fbench fit-flame bp4d` settings for tests: few iterations (FAST; seconds per task), or enough for the
# expression-accuracy proof (ACCURATE; about twice as long).
BP4D_FIT_FAST = ("-o", "scan.identity_frames=1", "-o", "scan.identity_rounds=1",
                 "-o", "scan.identity_lbfgs.max_iterations=30", "-o", "scan.frame_rounds=1",
                 "-o", "scan.lbfgs.max_iterations=20", "-o", "scan.max_points=2000")
BP4D_FIT_ACCURATE = ("-o", "scan.identity_frames=4", "-o", "scan.identity_rounds=2", "-o", "scan.frame_rounds=1",
                     "-o", "scan.max_points=2000")


def shared_bp4d_fits(tmp_path_factory, root: Path, flame_dir: Path, settings: Sequence[str] = BP4D_FIT_FAST) -> Path:
    """`fbench fit-flame bp4d` of a synthetic root with `settings`, run once per session and shared (read
    only): the folder holding its fits.h5."""
    import hashlib

    from fbench.cli import main

    tag = hashlib.sha1("\0".join([str(root), *settings]).encode()).hexdigest()[:10]
    out = tmp_path_factory.getbasetemp() / f"shared-bp4d-fits-{tag}"
    if not (out / "fits.h5").is_file():
        result = CliRunner().invoke(main, ["fit-flame", "bp4d", "--root", str(root), "--out", str(out), "--flame",
                                           str(flame_dir), "--no-progress", *settings], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return out
