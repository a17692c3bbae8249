"""One writer per output: an exclusive lock file that names its holder.

    with output_lock(out / ".prep" / "lock.part-0-of-1", "prep output shards/affectnet (part 0/1)"):
        ...  # write the output

The lock is an `flock` on a small file beside the output (on Linux also honoured over NFS,
where flock is emulated with POSIX locks). The kernel drops it when its holder ends, however it
ends, so a lock left by a killed run is never in the way: the next run takes it over (and says
so, from the holder line the killed run left in the file). While the lock is held the file
holds one line naming the holder (host, pid, start time, command); a second run refuses
with `LockHeldError` naming it instead of waiting (a job scheduler retries; a person decides).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """Another run holds the output's lock (the message names it and what to do)."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}


def describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"host {h['host']}, pid {h['pid']}, started {h['started']}" + \
            (f", command: {h['command']}" if h.get("command") else "")
    except (ValueError, KeyError, TypeError):
        return "holder unknown (lock file unreadable)"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", errors="replace").strip()


def _holder_line(fd: int, patience_s: float = 1.0) -> str:
    """The holder's line; a holder that has just taken the lock writes it a moment later."""
    deadline = time.monotonic() + patience_s
    while not (text := _read(fd)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return text


@contextmanager
def output_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock `path` for the block; LockHeldError when another run holds it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(f"{what} is being written by another run ({describe_holder(_holder_line(fd))}); "
                                f"wait for it to finish, or use another output folder (lock: {path})") from None
        previous = _read(fd)
        if previous:
            log.warning("%s: taking over the lock of a run that ended without releasing it (%s)", what,
                        describe_holder(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: an empty lock file means nobody was interrupted
    finally:
        os.close(fd)  # drops the flock
