"""Files fbench writes: one atomic-write primitive, JSON, and checkpoints.

Every output goes through `atomic_path`: the data is written to a temporary file in the
target's folder, flushed to disk, then renamed over the target, so an interrupted run never
leaves a half-written file that looks valid. Temporary names are `.<name>.<random>.tmp<suffix>`
(the target's suffix kept, since libraries such as h5py, PyAV and OpenCV choose a format from
it); `stale_temporaries` finds the ones a killed run left behind.

Checkpoints are plain tensor files: `save_checkpoint` writes a dict of tensors, numbers,
strings and containers of them, and `load_checkpoint` reads it with
`torch.load(weights_only=True)`, which executes no code from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable

TMP_MARK = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that open the file themselves (h5py, PyAV, numpy, PIL). The parent folder is
    created. The file gets the permissions a plain `open()` would give it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f"{TMP_MARK}{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Atomically write `path` by calling `write(binary_file)`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Exactly `text` on disk (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """Deterministic JSON (sorted keys, no NaN: NaN would not be valid JSON)."""
    return json.dumps(obj, sort_keys=True, indent=indent, allow_nan=False,
                      separators=(",", ": ") if indent else (",", ":"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj, indent=1) + "\n")


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> Path:
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Temporary files `atomic_path` left in `folder` (for target `name`, or any), e.g. after a kill."""
    pattern = f".{name}.*{TMP_MARK}*" if name else f".*{TMP_MARK}*"
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file())


# ------------------------------------------------------------------------------ checkpoints


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a plain tensor file; the message names it."""


def save_checkpoint(path: str | Path, state: dict[str, Any], metadata: dict[str, Any] | None = None) -> Path:
    """Atomically write `state` (tensors, numbers, strings, containers) plus a small
    `__fbench__` metadata dict (fbench version, and e.g. config and step)."""
    import torch

    from fbench import __version__

    payload = dict(state)
    payload["__fbench__"] = {"version": __version__, **(metadata or {})}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `torch.load(weights_only=True)`: no code from the file runs.

    Raises CheckpointError naming the file when it is missing, truncated or holds anything
    but plain tensors and containers.
    """
    from fbench.safe_pickle import UnsafePickleError, load_tensor_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = load_tensor_file(path, map_location=map_location)
    except UnsafePickleError as exc:  # "<file>: refused: not a plain tensor file (it names ...)"
        raise CheckpointError(str(exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint, truncated or corrupt ({first})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data
