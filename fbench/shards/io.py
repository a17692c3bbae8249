"""Atomic file writes: write a temporary file in the same folder, fsync, rename over the target."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """Deterministic JSON (sorted keys, no NaN: NaN would not be valid JSON)."""
    return json.dumps(obj, sort_keys=True, indent=indent, allow_nan=False,
                      separators=(",", ": ") if indent else (",", ":"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps_json(obj, indent=1) + "\n").encode())


def atomic_write_lines(path: Path, lines: list[str]) -> None:
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
