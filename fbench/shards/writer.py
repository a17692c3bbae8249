"""One output shard: a tar written under a temporary name and renamed when complete.

The layout is WebDataset's (as its TarWriter writes it): a plain USTAR tar, members
`<key>.<ext>` in sorted extension order per sample, samples consecutive. Tar headers carry
fixed times and owners (mtime 0, user/group "fbench", mode 0444), so the same samples always
give byte-identical shards and therefore the same sha256: this is what lets a resumed run be
checked against an uninterrupted one. (Written with `tarfile` directly: importing webdataset
imports torch, seconds per worker process.)
"""

from __future__ import annotations

import hashlib
import io
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


class ShardFile:
    """Write samples to `<final>.tmp`; `commit()` renames it to `final` and returns (sha256, bytes)."""

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(self.final.name + TMP_SUFFIX)
        self._file = _HashingFile(self.tmp)
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample: `__key__` plus {extension: bytes}."""
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"sample {key!r} member {ext!r} must be bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = "fbench"
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def commit(self) -> tuple[str, int]:
        self._tar.close()
        self._file.sync_close()
        os.replace(self.tmp, self.final)
        return self._file.sha256.hexdigest(), self._file.size

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._file.close()
            self.tmp.unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
