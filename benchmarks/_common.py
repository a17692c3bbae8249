"""What both benchmarks share: atomic result files, the resolved config, skip bookkeeping."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fbench.config import save_config
from fbench.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)
MIN_ITEMS_FOR_FAIL_CHECK = 4


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(_plain(dict(data)), indent=2) + "\n")


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def write_config(path: Path, config: Any, **extra: Any) -> Path:
    """The resolved config plus run facts (`run:`), as YAML."""
    return save_config(config, path, extra={"run": _plain(extra)})


def save_npz(path: Path, **arrays: Any) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def check_failures(n_ok: int, skipped: Counter, max_skip_fraction: float, what: str) -> None:
    """Raise when more than `max_skip_fraction` of the attempted items were skipped (says why)."""
    n_skip = sum(skipped.values())
    total = n_ok + n_skip
    if total == 0:
        raise RuntimeError(f"{what}: no items to evaluate")
    if n_ok == 0 or (total >= MIN_ITEMS_FOR_FAIL_CHECK and n_skip / total > max_skip_fraction):
        reasons = ", ".join(f"{k}: {v}" for k, v in skipped.most_common(5))
        raise RuntimeError(f"{what}: {n_skip} of {total} items failed ({reasons}); stopping, the result would "
                           f"not mean anything (limit {max_skip_fraction:.0%} skipped)")
