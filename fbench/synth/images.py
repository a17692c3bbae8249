"""Helpers shared by the synthetic still-image datasets (FFHQ, CelebA, AffectNet).

- Image encoding with fixed encoder settings (PNG compression level, JPEG quality and
  chroma subsampling, no metadata), so a seed gives byte-identical files with a given
  Pillow/zlib/libjpeg build; files are written atomically (`fbench.synth.files`).
- `similarity_camera`: the camera whose picture is an in-plane similarity (zoom, roll,
  shift) of another camera's. Aligned datasets (FFHQ, CelebA) are cut out of a notional
  in-the-wild photo by a similarity transform; rendering through this camera gives the
  aligned picture directly, with exact landmarks and no resampling.
- Face masks of varying image sizes packed into one fixed-shape array per row, as the
  ground-truth file stores one array per column.
- `restyle`: a new photo of the same person (light, background), for multi-image identities.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np

from fbench.geometry.alignment import umeyama
from PIL import Image

from fbench.synth.faces import Appearance, Camera, Rendered
from fbench.io import atomic_write_bytes

PNG_COMPRESS_LEVEL = 6  # zlib level; fixed so the bytes do not depend on Pillow's default
JPEG_SUBSAMPLING = 2  # Pillow's code for 4:2:0, the usual web/camera JPEG chroma subsampling


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 (H,W,3) -> PNG bytes (no ancillary chunks, fixed compression)."""
    buffer = io.BytesIO()
    Image.fromarray(_rgb(image)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 (H,W,3) -> baseline JPEG bytes (4:2:0, no EXIF, not optimised, not progressive)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(_rgb(image)).save(buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING,
                                      optimize=False, progressive=False)
    return buffer.getvalue()


def write_png(path: str | Path, image: np.ndarray) -> bytes:
    """Write `image` as PNG atomically; returns the bytes written (for sizes and checksums)."""
    data = encode_png(image)
    atomic_write_bytes(path, data)
    return data


def write_jpeg(path: str | Path, image: np.ndarray, quality: int) -> bytes:
    data = encode_jpeg(image, quality)
    atomic_write_bytes(path, data)
    return data


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def similarity_camera(camera: Camera, A: np.ndarray, b: np.ndarray, width: int, height: int) -> Camera:
    """The camera that sees `camera`'s picture mapped by u' = A u + b, A = s * rotation (2x2).

    A rotation of the camera about its optical axis rotates the picture about the principal
    point, the focal length scales it and the principal point shifts it, so any similarity of
    the image plane is a change of camera: R' = Rz R, t' = Rz t, f' = s f, c' = A c + b. The
    projection of every 3D point then moves exactly as the picture does (perspective included).
    """
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    K = camera.K
    if not (math.isclose(K[0, 0], K[1, 1], rel_tol=1e-12) and K[0, 1] == 0.0):
        raise ValueError("similarity_camera needs square pixels without skew (fx == fy, K[0,1] == 0)")
    s = math.sqrt(abs(float(np.linalg.det(A))))
    rot = A / s
    if s <= 0 or not np.allclose(rot @ rot.T, np.eye(2), atol=1e-9) or np.linalg.det(rot) <= 0:
        raise ValueError(f"A must be a positive scale times a rotation, got {A.tolist()}")
    Rz = np.eye(3)
    Rz[:2, :2] = rot  # image x right / y down are camera x / y, so the same 2x2 rotates camera coordinates
    c = A @ K[:2, 2] + b
    K_new = np.array([[s * K[0, 0], 0.0, c[0]], [0.0, s * K[1, 1], c[1]], [0.0, 0.0, 1.0]])
    return Camera(K=K_new, R=Rz @ camera.R, t=Rz @ camera.t, width=int(width), height=int(height))


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (A = s*rotation, b) taking points `src` (k,2) onto `dst` (k,2); exact for k = 2."""
    s, rot, t = umeyama(src, dst)
    return s * rot, t


def restyle(appearance: Appearance, rng: np.random.Generator) -> Appearance:
    """The same person (skin, lips, hair, eyes, skin texture) photographed again: new light and background."""
    other = Appearance.sample(rng)
    return dataclasses.replace(appearance, light_dir=other.light_dir, ambient=other.ambient,
                               background=other.background)


def mask_columns(width: int) -> int:
    return (width + 7) // 8


def pack_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h,w) bool -> (height, ceil(width/8)) uint8: np.packbits along rows, zero-padded to a fixed shape.

    The ground-truth file stores one array per column, so masks of images of different sizes
    are padded to the dataset's largest; `unpack_mask` with the row's image size undoes it.
    """
    h, w = mask.shape
    if h > height or w > width:
        raise ValueError(f"mask {mask.shape} larger than the padded shape ({height}, {width})")
    padded = np.zeros((height, width), dtype=bool)
    padded[:h, :w] = mask
    return np.packbits(padded, axis=1)


def unpack_mask(packed: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1)[:height, :width].astype(bool)


def photo_extras(camera: Camera, rendered: Rendered, mask_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Ground-truth columns every still-image row has: camera, exact landmarks, packed face mask."""
    return {**camera.as_arrays(), "landmarks68": rendered.landmarks68.astype(np.float64),
            "landmarks_mp": rendered.landmarks_mp.astype(np.float64),
            "face_mask": pack_mask(rendered.face_mask, *mask_shape)}


PHOTO_CONVENTIONS = (
    "landmarks68 (iBUG/FAN order, jaw contour as the row's camera sees it) and landmarks_mp (105, the FLAME "
    "model's MediaPipe embedding order): exact projections in image pixels, (0,0) = top-left image corner, "
    "pixel (row r, column c) centred at (c+0.5, r+0.5). camera_K/R/t: pinhole, OpenCV axes, world->camera "
    "x_cam = R x + t in metres; the FLAME head is at the world origin; flame/cam and flame/translation are "
    "unused (zero). image_size: (width, height). face_mask: np.unpackbits(face_mask, axis=1)[:height, :width] "
    "is the head's silhouette. Byte-string columns are ASCII.")
