"""Faults of the output side, in one line: a read-only or full output folder, stale temporaries.

- `describe_os_error(exc, path)`: "<path>: <problem>" for an OSError from writing an output
  (read-only file system, no space left, permission denied, file size limit), the one line a
  command prints instead of a traceback.
- `remove_stale(paths, what)`: temporaries a killed run of the same output left behind (the
  caller holds the output's lock, see fbench.lock, so nobody else is writing them): removed,
  and said so in the log.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

_PROBLEMS = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
             errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
             errno.EFBIG: "file too large (file size limit or quota)"}


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """One line naming the file (the one the OS named, else `path`) and the problem."""
    where = exc.filename if exc.filename is not None else path
    problem = _PROBLEMS.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: cannot write: {problem}" if where is not None else f"cannot write: {problem}"


def remove_stale(paths: Iterable[Path], what: str) -> list[Path]:
    """Unlink the files in `paths` that exist (temporaries of an interrupted run of `what`)."""
    removed = []
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(Path(path))
    if removed:
        log.warning("%s: removed %d temporary file(s) left by an interrupted run, e.g. %s", what, len(removed),
                    removed[0])
    return removed
