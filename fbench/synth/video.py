"""Short H.264 videos for the synthetic video datasets (PyAV), written deterministically.

`write_h264` encodes RGB frames with libx264 into an MP4 (yuv420p, fixed CRF, GOP and
preset, one encoder thread). With the same frames and the same PyAV/FFmpeg/x264 build the
file is byte-identical between runs (checked by the tests); across library versions only
the decoded frames are expected to be close, not the bytes. On a busy machine x264's defaults
gave different bytes from run to run (9 distinct files in 30 identical encodes under load;
measured, ours); without macroblock-tree rate control and rate-control lookahead
(`rc-lookahead=0:no-mbtree=1`) 36 of 36 were identical. The `moov` index is written at
the front (`+faststart`), as streaming-friendly files are, so a truncated file still opens
and announces every frame but runs out of data part way: a realistic broken download.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from fbench.io import atomic_path
from fbench.synth.files import empty_file, truncate_file

CODEC = "libx264"
DEFAULT_CRF = 18  # visually near-lossless; small files
CORRUPTIONS = ("empty", "truncated")


def write_h264(path: str | Path, frames: Iterable[np.ndarray], fps: int | Fraction, crf: int = DEFAULT_CRF,
               gop: int | None = None, preset: str = "medium") -> int:
    """Encode (H,W,3) uint8 RGB frames into an H.264 MP4 at `path` atomically; returns the frame count.

    Width and height must be even (yuv420p). `gop` defaults to one second of frames.
    """
    path = Path(path)
    rate = Fraction(fps)
    count = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = None
            for frame in frames:
                frame = np.ascontiguousarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"{path}: frames must be (H,W,3) uint8 RGB, got {frame.dtype} {frame.shape}")
                if stream is None:
                    h, w = frame.shape[:2]
                    if h % 2 or w % 2:
                        raise ValueError(f"{path}: yuv420p needs even width and height, got {w}x{h}")
                    stream = container.add_stream(CODEC, rate=rate)
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    # Fixed rate control and one thread: same input, same bytes.
                    stream.options = {"crf": str(crf), "preset": preset, "threads": "1",
                                      "g": str(gop or max(1, round(float(rate)))),
                                      "x264-params": "rc-lookahead=0:no-mbtree=1"}
                elif frame.shape[:2] != (stream.height, stream.width):
                    raise ValueError(f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"the video is {stream.width}x{stream.height}")
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():  # flush the encoder's delayed (B-)frames
                container.mux(packet)
    return count


def corrupt_video(path: str | Path, kind: str) -> Path:
    """Damage a written video on purpose: 'empty' (0 bytes) or 'truncated' (first half of the bytes)."""
    if kind == "empty":
        return empty_file(path)
    if kind == "truncated":
        return truncate_file(path, 0.5)
    raise ValueError(f"unknown video corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
