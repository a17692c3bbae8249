"""Reading shards: raw samples from tar files, decoded samples, shard lists from manifests.

Samples are grouped the WebDataset way (members `<key>.<ext>` with the key up to the first
dot of the file name, consecutive members of a key form one sample), so these shards also
read with `webdataset.WebDataset`.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from fbench.shards.manifest import load_manifest
from fbench.shards.schema import ShardSample, decode_sample


class ShardReadError(RuntimeError):
    """A shard file is missing, truncated or not a tar."""


def iter_raw(path: Path) -> Iterator[dict[str, Any]]:
    """{'__key__', '__shard__', ext: bytes} samples of one tar, in file order."""
    path = Path(path)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, dot, ext = name.partition(".")
                if not dot:
                    continue
                prefix = member.name[: len(member.name) - len(name)]
                key = prefix + key
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__shard__": str(path)}
                data = tar.extractfile(member)
                current[ext] = data.read() if data is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardReadError(f"{path}: cannot read shard ({exc})") from exc
    if current is not None:
        yield current


def iter_samples(paths: Iterable[Path], decode_image: bool = True) -> Iterator[ShardSample]:
    """Decoded samples of the given shards, in order."""
    for path in paths:
        for raw in iter_raw(path):
            yield decode_sample(raw, decode_image=decode_image)


def shard_paths(location: Path | str, splits: Sequence[str] | None = None) -> list[Path]:
    """The shard files of a prepped dataset.

    `location` is a dataset folder (`<out>/<dataset>`, its manifest.json lists the shards), a
    manifest file, a split folder of .tar files, or a single .tar. `splits` filters by split
    (manifest shards by their split, folders by their name)."""
    location = Path(location)
    if location.is_file() and location.suffix == ".tar":
        return [location]
    manifest_file = location if location.is_file() else location / "manifest.json"
    if manifest_file.is_file():
        manifest = load_manifest(manifest_file)
        base = manifest_file.parent
        return [base / s["path"] for s in manifest["shards"] if not splits or s["split"] in splits]
    if location.is_dir():
        tars = sorted(location.rglob("*.tar"))
        if splits:
            tars = [t for t in tars if t.parent.name in splits]
        if tars:
            return tars
    raise ShardReadError(f"{location}: no shards (expected a dataset folder with manifest.json, "
                         "a folder of .tar files, or a .tar)")
