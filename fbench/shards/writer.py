"""One output shard: a tar written under a temporary name and renamed when complete.

The layout is WebDataset's (as its TarWriter writes it): a plain USTAR tar, members
`<key>.<ext>` in sorted extension order per sample, samples consecutive. Tar headers carry
fixed times and owners (mtime 0, user/group "fbench", mode 0444), so the same samples always
give byte-identical shards and therefore the same sha256: this is what lets a resumed run be
checked against an uninterrupted one. Headers are built from a template made by `tarfile`
(byte-identical output, several times faster per member than `tarfile.addfile`; importing
webdataset's writer would import torch, seconds per worker process).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any, Mapping

TMP_SUFFIX = ".tmp"


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def sync_close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def close(self) -> None:
        self._f.close()


BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads a closed archive to whole records


def _header_template() -> bytes:
    """A USTAR header exactly as tarfile writes it for our members (mode 0444, mtime 0, owner
    fbench); per member only the name, size and checksum fields change."""
    info = tarfile.TarInfo("x")
    info.mtime, info.mode, info.uname, info.gname = 0, 0o444, "fbench", "fbench"
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = _header_template()


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file member (byte-identical to tarfile's)."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    header = bytearray(_TEMPLATE)
    header[0:100] = raw.ljust(100, b"\0")
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


class ShardFile:
    """Write samples to `<final>.tmp`; `commit()` renames it to `final` and returns (sha256, bytes)."""

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(self.final.name + TMP_SUFFIX)
        self._file = _HashingFile(self.tmp)
        self.count = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample: `__key__` plus {extension: bytes}, members in sorted extension order."""
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"sample {key!r} member {ext!r} must be bytes, got {type(data).__name__}")
            size = len(data)
            self._file.write(tar_header(f"{key}.{ext}", size))
            self._file.write(data)
            if size % BLOCK:
                self._file.write(b"\0" * (BLOCK - size % BLOCK))
        self.count += 1

    def commit(self) -> tuple[str, int]:
        end = 2 * BLOCK
        total = self._file.size + end
        end += (RECORD - total % RECORD) % RECORD
        self._file.write(b"\0" * end)
        self._file.sync_close()
        os.replace(self.tmp, self.final)
        return self._file.sha256.hexdigest(), self._file.size

    def abort(self) -> None:
        try:
            self._file.close()  # may fail itself (a full disk fails the flush): the file goes anyway
        finally:
            self.tmp.unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
