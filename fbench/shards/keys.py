"""Sample keys and dataset-relative paths, made safe from whatever a dataset contains.

Every key and every path that comes from dataset content (file names, annotation
CSVs, list files) goes through these two helpers, so a crafted or odd name can
neither break WebDataset's key grouping nor reach outside the dataset root.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
MAX_KEY_LEN = 80  # USTAR member names hold 100 bytes: key + "_f<frame>" + ".fan.npy" must fit


class UnsafePathError(ValueError):
    """A dataset-supplied path is absolute, climbs out of the root, or is malformed."""


def check_dataset_name(name: str) -> str:
    """Dataset names appear in keys, directory and file names: lower-case letters, digits, '_'."""
    if not DATASET_NAME.match(name):
        raise ValueError(f"dataset name {name!r} must match {DATASET_NAME.pattern}")
    return name


def safe_key(dataset: str, *parts: str | int) -> str:
    """`<dataset>_<part>_<part>...` with only [A-Za-z0-9_-].

    Runs of other characters (dots, slashes, spaces, unicode) become a single '-', so
    'train/img 01.jpg' gives 'train-img-01-jpg'. Two different ids can collide after
    this mapping; the prep runner checks keys are unique and names the clash. Very
    long keys keep their start and get a short hash of the full id, so they stay unique.
    """
    check_dataset_name(dataset)
    cleaned = [KEY_CHARS.sub("-", str(p)).strip("-") for p in parts]
    if not parts or not all(cleaned):
        raise ValueError(f"key parts {parts!r} are empty after sanitising")
    key = "_".join([dataset, *cleaned])
    if len(key) > MAX_KEY_LEN:
        digest = hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:12]
        key = f"{key[:MAX_KEY_LEN - 13]}-{digest}"
    return key


def safe_relpath(path: str | PurePosixPath) -> str:
    """Normalise a dataset-relative path to POSIX form, refusing anything that could escape.

    Refused: empty paths, absolute paths (also Windows drive/UNC forms), '..' components,
    NUL bytes. Backslashes are treated as separators (annotation files written on Windows).
    """
    text = str(path)
    if not text or "\0" in text:
        raise UnsafePathError(f"dataset path {text!r} is empty or contains NUL")
    text = text.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafePathError(f"dataset path {text!r} is absolute; expected a path relative to the dataset root")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"dataset path {text!r} names the root itself")
    if ".." in parts:
        raise UnsafePathError(f"dataset path {text!r} contains '..' (path traversal)")
    return "/".join(parts)


def resolve_in_root(root: Path, path: str | PurePosixPath) -> Path:
    """`root / safe_relpath(path)`. Symlinks inside the root are followed on purpose:
    datasets are often assembled from linked directories."""
    return Path(root) / safe_relpath(path)
