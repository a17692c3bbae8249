"""The shard sample schema (DESIGN.md "Shard sample schema"): encoding and decoding.

Members of a sample `<key>`:
  <key>.jpg      the face crop, RGB, JPEG
  <key>.mp.npy   (478, 3) float32 MediaPipe landmarks in crop pixels (x, y, z*scale); NaN when not detected
  <key>.fan.npy  (68, 2) float32 FAN landmarks in crop pixels; NaN when not available
  <key>.ann.npy  (P, 2) float32 dataset annotation landmarks in crop pixels (only when the dataset has them)
  <key>.json     metadata, see `sample_metadata`

Landmark pixel coordinates are as the detectors give them (MediaPipe: x_norm * width), mapped by
the affine in the JSON; `inverse affine @ crop coordinates` gives source pixels back.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
IMAGE_EXT = "jpg"
MEMBERS = ("jpg", "mp.npy", "fan.npy", "ann.npy", "json")


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def npy_bytes(array: np.ndarray) -> bytes:
    """`np.save` bytes of an array (header cached per dtype and shape: np.save is slow per call)."""
    array = np.ascontiguousarray(array)
    spec = (array.dtype.str, array.shape)
    header = _NPY_HEADERS.get(spec)
    if header is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(array.shape, array.dtype), allow_pickle=False)
        header = _NPY_HEADERS[spec] = buf.getvalue()[: buf.tell() - array.nbytes]
    return header + array.tobytes()


def npy_load(data: bytes) -> np.ndarray:
    # allow_pickle=False: shards may come from elsewhere; an object array must not run code.
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """The RGB crop of a shard sample (through `fbench.safe_read.decode_image`: pixel limit first)."""
    from fbench.safe_read import decode_image

    return decode_image(data, "shard image member")


def encode_sample(key: str, jpg: bytes, mp: np.ndarray, fan: np.ndarray, ann: np.ndarray | None,
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    """The member dict {'__key__': key, extension: bytes} that ShardFile.write takes."""
    sample: dict[str, Any] = {
        "__key__": key,
        "jpg": jpg,
        "mp.npy": npy_bytes(mp.astype(np.float32)),
        "fan.npy": npy_bytes(fan.astype(np.float32)),
        "json": json.dumps(dict(meta), sort_keys=True, allow_nan=False, separators=(",", ":")).encode(),
    }
    if ann is not None:
        sample["ann.npy"] = npy_bytes(ann.astype(np.float32))
    return sample


@dataclass
class ShardSample:
    """A decoded shard sample."""

    key: str
    image: np.ndarray | None  # (S, S, 3) uint8 RGB; None when decoding was skipped
    mp: np.ndarray  # (478, 3)
    fan: np.ndarray  # (68, 2)
    ann: np.ndarray | None
    meta: dict[str, Any]
    jpg: bytes | None = None

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.meta["affine"], dtype=np.float64)

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]


def decode_sample(raw: Mapping[str, Any], decode_image: bool = True, keep_jpg: bool = False) -> ShardSample:
    """Decode a raw {member: bytes} sample (as read from a tar) into arrays."""
    missing = [m for m in ("jpg", "mp.npy", "fan.npy", "json") if m not in raw]
    if missing:
        raise ValueError(f"sample {raw.get('__key__')!r} lacks member(s) {missing}")
    meta = json.loads(raw["json"])
    return ShardSample(
        key=raw["__key__"],
        image=decode_jpeg(raw["jpg"]) if decode_image else None,
        mp=npy_load(raw["mp.npy"]),
        fan=npy_load(raw["fan.npy"]),
        ann=npy_load(raw["ann.npy"]) if "ann.npy" in raw else None,
        meta=meta,
        jpg=raw["jpg"] if keep_jpg else None,
    )
