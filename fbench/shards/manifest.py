"""manifest.json and rejects.jsonl: building them from unit records, and merging parts.

A manifest holds no timestamps or worker counts, so a resumed run, an uninterrupted run and
the merge of a run split into parts give byte-identical manifests when their shards are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fbench.io import read_json
from fbench.shards.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
FORMAT = "fbench-shards"
COUNT_FIELDS = ("items", "inputs", "samples", "rejects", "mp", "fan", "ann", "no_face", "unexpected_errors", "shards")
PART_MANIFEST = re.compile(r"^manifest\.part-(\d{4})-of-(\d{4})\.json$")


class ManifestError(ValueError):
    """A manifest (or a set of part manifests) is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ManifestNames:
    manifest: str
    rejects: str


def manifest_names(part: tuple[int, int]) -> ManifestNames:
    i, n = part
    if n == 1:
        return ManifestNames(MANIFEST, REJECTS)
    return ManifestNames(f"manifest.part-{i:04d}-of-{n:04d}.json", f"rejects.part-{i:04d}-of-{n:04d}.jsonl")


def _empty_counts() -> dict[str, int]:
    return {k: 0 for k in COUNT_FIELDS}


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for k in COUNT_FIELDS:
        into[k] += counts.get(k, 0)


def build_manifest(*, dataset: str, config, sources: dict[str, str | None], versions: dict[str, str],
                   identity: str, splits: Sequence[str], records: Sequence[dict[str, Any]],
                   units_in_plan: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Manifest and rejects of the units in `records` (in plan order)."""
    counts = {s: _empty_counts() for s in splits}
    shards, rejects = [], []
    for rec in records:
        c = counts[rec["split"]]
        for k in ("items", "inputs", "samples", "mp", "fan", "ann", "no_face", "unexpected_errors"):
            c[k] += rec[k]
        c["rejects"] += len(rec["rejects"])
        rejects.extend(rec["rejects"])
        if rec["shard"]:
            c["shards"] += 1
            shards.append({"path": rec["shard"], "split": rec["split"], "unit": rec["index"],
                           "samples": rec["samples"], "sha256": rec["sha256"], "bytes": rec["bytes"]})
    total = _empty_counts()
    for c in counts.values():
        _add(total, c)
    part = list(config.part) if config.part[1] > 1 else None
    manifest = {
        "format": FORMAT, "schema": SCHEMA_VERSION, "dataset": dataset, "identity": identity, "part": part,
        "root": str(Path(config.root).absolute()), "splits": list(splits), "config": config.content(),
        "landmark_sources": sources, "versions": versions,
        "units": {"plan": units_in_plan, "here": len(records)},
        "counts": counts, "total": total, "shards": shards,
    }
    return manifest, rejects


def load_manifest(path: Path) -> dict[str, Any]:
    """A manifest from a file, or from a dataset folder's manifest.json."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (a prep run writes one when it finishes; parts need "
                            f"`fbench shards merge-manifests`)")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not an fbench shard manifest")
    return manifest


def read_rejects(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def find_parts(dataset_dir: Path) -> list[Path]:
    return sorted(p for p in Path(dataset_dir).iterdir() if PART_MANIFEST.match(p.name))


def merge_manifests(paths: Sequence[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Join the part manifests of one run (all N parts, same settings) into the manifest and
    rejects an undivided run writes. Rejects are read from each part's rejects file beside it."""
    if not paths:
        raise ManifestError("no part manifests given")
    parts = []
    for path in paths:
        m = load_manifest(path)
        if not m.get("part"):
            raise ManifestError(f"{path}: not a part manifest (it has no 'part')")
        parts.append((Path(path), m))
    first = parts[0][1]
    n = first["part"][1]
    for path, m in parts:
        if m["identity"] != first["identity"] or m["dataset"] != first["dataset"]:
            raise ManifestError(f"{path}: made with different settings or dataset than {parts[0][0]}; "
                                "parts of one run must share every setting")
        if m["part"][1] != n:
            raise ManifestError(f"{path}: part of a {m['part'][1]}-way split, others are {n}-way")
    seen = sorted(m["part"][0] for _, m in parts)
    if seen != list(range(n)):
        missing = sorted(set(range(n)) - set(seen))
        dup = sorted({i for i in seen if seen.count(i) > 1})
        raise ManifestError(f"need each of parts 0..{n - 1} exactly once; missing {missing}, repeated {dup}")
    split_order = {s: k for k, s in enumerate(first["splits"])}
    splits = sorted({s for _, m in parts for s in m["splits"]}, key=lambda s: split_order.get(s, len(split_order)))
    counts = {s: _empty_counts() for s in splits}
    shards, rejects = [], []
    for path, m in sorted(parts, key=lambda pm: pm[1]["part"][0]):
        for s, c in m["counts"].items():
            _add(counts[s], c)
        shards.extend(m["shards"])
        rej_name = path.name.replace("manifest.", "rejects.", 1).replace(".json", ".jsonl")
        rejects.extend(read_rejects(path.parent / rej_name))
    order = {s: k for k, s in enumerate(splits)}
    shards.sort(key=lambda r: (order[r["split"]], r["unit"]))
    rejects = sorted(rejects, key=lambda r: (order[r["split"]], r["unit"]))  # stable: keeps order within a unit
    here = sum(m["units"]["here"] for _, m in parts)
    if here != first["units"]["plan"]:
        raise ManifestError(f"parts hold {here} units, the plan has {first['units']['plan']}")
    total = _empty_counts()
    for c in counts.values():
        _add(total, c)
    merged = {**first, "part": None, "splits": splits, "units": {"plan": first["units"]["plan"], "here": here},
              "counts": counts, "total": total, "shards": shards}
    return merged, rejects
