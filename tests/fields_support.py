"""Shards for FIELDS' tests: synthetic FFHQ and AffectNet prepped with MediaPipe, and BP4D-style
shards whose samples carry their true FLAME parameters as fit targets (`labels.fit`, the field
`methods.fields.data.bp4d_targets` reads)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from click.testing import CliRunner

from fbench.shards.reader import shard_paths
from fbench.shards.writer import ShardFile
from fbench.synth.ground_truth import read_ground_truth


def cli(*args: str):
    from fbench.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def prep(dataset: str, root: Path, out: Path, n: int, seed: int = 0) -> None:
    folder = {"ffhq": "FFHQ", "affectnet": "AffectNet"}[dataset]
    r = cli("synth", dataset, "--out", str(root / folder), "--n", str(n), "--seed", str(seed))
    assert r.exit_code == 0, r.output
    r = cli("prep", dataset, "--root", str(root / folder), "--out", str(out), "--landmarks", "detect",
            "--fan", "off", "--no-progress")
    assert r.exit_code == 0, r.output


def relabel_as_bp4d(shards: Path, data_root: Path, out: Path) -> Path:
    """Copy the prepped samples of `shards` into `out/train/bp4d-train-000000.tar` as dataset
    "bp4d" and the labels `fbench prep bp4d --fits` writes (labels.flame, fit_key, fit.converged),
    the fit being the ground-truth expression, jaw and eyelids of each image."""
    gt = read_ground_truth(data_root)
    by_path = {p: i for i, p in enumerate(gt.paths)}
    target = out / "train" / "bp4d-train-000000.tar"
    writer = ShardFile(target)
    for path in shard_paths(shards):
        with tarfile.open(path) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, sample in members.items():
            meta = json.loads(sample["json"])
            row = by_path[meta["source_path"]]
            meta["dataset"] = "bp4d"
            meta["labels"] = {"fit_key": gt.keys[row], "fit": {"converged": True},
                              "flame": {f: gt.flame[f][row].tolist() for f in ("expression", "jaw", "eyelids")}}
            sample["json"] = json.dumps(meta).encode()
            writer.write({"__key__": "bp4d_" + key, **sample})
    writer.commit()
    return out
