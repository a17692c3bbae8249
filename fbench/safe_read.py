"""Bounded reading of untrusted input files: regular files only, a byte cap, a pixel cap.

Every reader of dataset content goes through here, so a hostile or odd entry costs a bounded
amount of memory and time and never blocks:

- `read_regular_file(path)`: opens without blocking (a FIFO named `*.jpg` does not hang the
  run), checks *after resolving links* that the file is a regular file (a link to `/dev/zero`
  or a device is refused), and reads at most `max_file_bytes()` bytes.
- `check_regular_file(path)`: the same check for readers that stream a file themselves
  (videos through PyAV, HDF5 tables).
- `decode_image(data, what)`: reads the image header first (PIL, no pixel decoding) and
  refuses images above `max_image_pixels()` before OpenCV allocates anything; the one image
  decoder of fbench (dataset images, shard crops).
- `check_pixels(width, height, what)`: the same limit for video frames.

Limits (documented constants, overridable through the environment so prep workers inherit them):

- MAX_IMAGE_PIXELS = 64 megapixels (e.g. 8000 x 8000; about 200 MB as RGB), override
  `$FBENCH_MAX_IMAGE_PIXELS`. Well above any image of the supported datasets (AffectNet,
  CelebA and FFHQ in-the-wild originals stay below 40 MP), far below what exhausts memory.
- MAX_FILE_BYTES = 1 GiB, override `$FBENCH_MAX_FILE_BYTES`: per file read whole into memory
  (images, FLAME pickles, scans). Videos are streamed and have no byte cap.

Errors are `FileRefusedError` (a ValueError) with one line naming the file and the problem.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np

MAX_IMAGE_PIXELS = 64_000_000
MAX_FILE_BYTES = 1 << 30
PIXELS_ENV = "FBENCH_MAX_IMAGE_PIXELS"
BYTES_ENV = "FBENCH_MAX_FILE_BYTES"


class FileRefusedError(ValueError):
    """An input file is not a regular file, too large, or declares too many pixels."""


def _limit(env: str, default: int) -> int:
    text = os.environ.get(env)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise FileRefusedError(f"${env}={text!r} is not an integer") from None
    if value < 1:
        raise FileRefusedError(f"${env}={text!r} must be >= 1")
    return value


def max_image_pixels() -> int:
    return _limit(PIXELS_ENV, MAX_IMAGE_PIXELS)


def max_file_bytes() -> int:
    return _limit(BYTES_ENV, MAX_FILE_BYTES)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _check_stat(path: Path, st: os.stat_result, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        target = f" (links to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise FileRefusedError(f"{path}: {_kind(st.st_mode)}{target}, not a regular file; refused")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileRefusedError(f"{path}: {st.st_size} bytes, more than the limit of {max_bytes} "
                               f"(${BYTES_ENV}); refused")


def check_regular_file(path: str | Path) -> Path:
    """`path` if it is (or links to) a regular file; FileRefusedError otherwise. No byte cap."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows links: the check is on what would be read
    except OSError as exc:
        raise FileRefusedError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    _check_stat(path, st, None)
    return path


def read_regular_file(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (after resolving links), at most `max_bytes` (default
    `max_file_bytes()`). Never blocks: opened with O_NONBLOCK, checked with fstat on the
    opened descriptor (no race between check and read)."""
    path = Path(path)
    limit = max_file_bytes() if max_bytes is None else max_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket or a FIFO opened for writing only
            raise FileRefusedError(f"{path}: not a regular file; refused") from exc
        raise FileRefusedError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        _check_stat(path, st, limit)
        chunks, total = [], 0
        try:
            # Sized by fstat, read until EOF: a file that grows meanwhile still stops at the cap.
            while total <= limit:
                chunk = f.read(min(max(st.st_size - total, 0) + 1, limit + 1 - total, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise FileRefusedError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if total > limit:
        raise FileRefusedError(f"{path}: more than the limit of {limit} bytes (${BYTES_ENV}); refused")
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return data


def image_size(data: bytes, what: str) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding its pixels.

    PIL's format plugins read the header only; they are called directly (as `Image.open` does)
    so that PIL's own, higher bomb limit does not answer first: the limit here is ours."""
    from PIL import Image

    Image.init()
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        if accept is not None and not accept(data[:16]):
            continue
        try:
            image = factory(io.BytesIO(data), None)
        except Exception:  # not this format, or a header this plugin cannot parse
            continue
        return int(image.width), int(image.height)
    raise FileRefusedError(f"{what}: cannot read image header ({len(data)} bytes; truncated, corrupt "
                           "or not an image)")


def check_pixels(width: int, height: int, what: str) -> None:
    limit = max_image_pixels()
    if width <= 0 or height <= 0:
        raise FileRefusedError(f"{what}: image size {width} x {height} is empty")
    if width * height > limit:
        raise FileRefusedError(f"{what}: {width} x {height} pixels, more than the limit of {limit} "
                               f"(${PIXELS_ENV}; a decompression bomb?); refused")


def decode_image(data: bytes, what: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) from encoded image bytes: header checked against the pixel limit
    first, then decoded by OpenCV (EXIF orientation ignored: annotations refer to the stored
    pixel grid). Grey and 16-bit images become 8-bit RGB; alpha is dropped."""
    import cv2

    if not data:
        raise FileRefusedError(f"{what}: file is empty")
    width, height = image_size(data, what)
    check_pixels(width, height, what)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise FileRefusedError(f"{what}: cannot decode image ({len(data)} bytes; truncated, corrupt or not an image)")
    return np.ascontiguousarray(image)


def read_image_file(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file: `read_regular_file` + `decode_image`."""
    return decode_image(read_regular_file(path), str(path))
