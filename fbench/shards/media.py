"""Reading dataset media: still images (OpenCV) and video frames (PyAV).

Both readers return RGB uint8 arrays of shape (H, W, 3) and raise `InputError`
naming the file and the problem when a file cannot be used; the prep runner turns
that into one line of rejects.jsonl instead of stopping the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from fbench.safe_read import FileRefusedError, check_pixels, check_regular_file, read_image_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")


class InputError(Exception):
    """An input file (or one frame of it) cannot be used: unreadable, corrupt, empty, no annotations.

    The message names the file and the problem; `frame` is the frame index for video errors.
    """

    def __init__(self, message: str, frame: int | None = None) -> None:
        super().__init__(message)
        self.frame = frame


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file, through `fbench.safe_read` (regular files only,
    byte cap, pixel limit read from the header before decoding).

    EXIF orientation is ignored on purpose: dataset annotations refer to the stored
    pixel grid, and the same file must give the same array on every platform.
    Grey and 16-bit images are converted to 8-bit RGB; alpha is dropped.
    """
    try:
        return read_image_file(path)
    except FileRefusedError as exc:
        raise InputError(str(exc)) from exc


def _open_video(path: Path, threads: int):
    import av

    try:
        check_regular_file(path)  # a FIFO would block av.open, a device would never end
    except FileRefusedError as exc:
        raise InputError(str(exc)) from exc
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot open video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: no video stream")
    stream = container.streams.video[0]
    try:
        check_pixels(stream.codec_context.width, stream.codec_context.height, f"{path}: video frames")
    except FileRefusedError as exc:
        container.close()
        raise InputError(str(exc)) from exc
    # One decoder thread: prep runs one process per core, extra threads only contend.
    stream.thread_count = threads
    return container, stream


def iter_video_frames(path: Path, stride: int = 1, start: int = 0, stop: int | None = None,
                      threads: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, RGB uint8 frame) for every `stride`-th frame in [start, stop).

    `frame_index` counts decoded frames in presentation order from 0, so it is the
    same whatever the stride or the range; a frame is yielded when
    `frame_index % stride == 0`. Frames are decoded from the start (frame-accurate;
    seeking by timestamp is not), conversion to RGB happens only for yielded frames.
    Raises InputError when the file cannot be opened, or decoding fails (its `frame`
    is the index of the first frame that could not be decoded), or a video read from
    its start has no frames at all.
    """
    import av

    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    container, stream = _open_video(path, threads)
    index = -1
    with container:
        try:
            for frame in container.decode(stream):
                index += 1
                if stop is not None and index >= stop:
                    return
                if index < start or index % stride:
                    continue
                yield index, frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise InputError(f"{path}: video decoding failed at frame {index + 1} ({exc})", frame=index + 1) from exc
    if index < 0:
        raise InputError(f"{path}: video has no decodable frames", frame=None)


def probe_video_frames(path: Path) -> int:
    """Number of frames of a video from its container header (no decoding).

    Falls back to duration x frame rate, then to counting packets. Used only to
    plan shard units, so an estimate is enough; raises InputError when the file
    cannot be opened.
    """
    import av

    container, stream = _open_video(path, threads=1)
    with container:
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        if stream.duration and stream.time_base and stream.average_rate:
            return max(1, int(math.ceil(float(stream.duration * stream.time_base * stream.average_rate))))
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except (av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"{path}: cannot read video packets ({exc})") from exc
