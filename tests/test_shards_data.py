"""A small test-only dataset source (imported by the other test_shards_* modules) and its own checks.

Layout written by `write_toy_dataset(root)`:

    train/a0.jpg .. a3.jpg   variants of skimage's astronaut photo (full, flipped, 0.6x, crop)
    train/corrupt.jpg        a JPEG cut in the middle
    val/clip.mp4             H.264, 12 frames of 256 px astronaut; frame 5 is black (no face)
    val/garbage.mp4          bytes that are no video
    val/empty.mp4            zero bytes
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from fbench.shards import InputError, MediaSource, SourceItem, walk_files

CLIP_FRAMES = 12
BLACK_FRAME = 5
GOOD_IMAGES = 4


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def image_variants() -> dict[str, np.ndarray]:
    import cv2

    photo = astronaut()
    return {"a0": photo, "a1": np.ascontiguousarray(photo[:, ::-1]),
            "a2": cv2.resize(photo, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
            "a3": np.ascontiguousarray(photo[20:400, 60:440])}


def write_mp4(path: Path, frames: list[np.ndarray], rate: int = 25) -> None:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_frames() -> list[np.ndarray]:
    import cv2

    face = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    return [np.zeros_like(face) if k == BLACK_FRAME else face for k in range(CLIP_FRAMES)]


def write_toy_dataset(root: Path) -> Path:
    import cv2

    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(parents=True, exist_ok=True)
    for name, image in image_variants().items():
        cv2.imwrite(str(root / "train" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    good = (root / "train" / "a0.jpg").read_bytes()
    (root / "train" / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    write_mp4(root / "val" / "clip.mp4", clip_frames())
    (root / "val" / "garbage.mp4").write_bytes(b"\x00\x01 not a video " * 64)
    (root / "val" / "empty.mp4").write_bytes(b"")
    return root


class ToySource(MediaSource):
    """Lists the toy layout. `annotations`: {item id: (P, 2) points} given as dataset landmarks
    (format "ibug68" for 68 points, "mediapipe478" for 478). `interrupt_on`: item id whose
    loading raises KeyboardInterrupt (in process) or, with `kill=True`, SIGKILLs the process
    that loads it, to simulate a crash part way through a run."""

    name = "toy"
    splits = ("train", "val")

    def __init__(self, annotations: dict[str, np.ndarray] | None = None, interrupt_on: str | None = None,
                 kill: bool = False, only_once_marker: str | None = None) -> None:
        self.annotations = annotations or {}
        self.interrupt_on = interrupt_on
        self.kill = kill
        self.only_once_marker = only_once_marker  # file: crash only while it does not exist yet

    def items(self, root: Path, options) -> list[SourceItem]:
        items = []
        for rel in walk_files(root, (".jpg", ".mp4")):
            split, name = rel.split("/")
            item_id = f"{split}/{name.rsplit('.', 1)[0]}"
            ann = self.annotations.get(item_id)
            fmt = None if ann is None else {68: "ibug68", 478: "mediapipe478", 5: "celeba5"}[len(ann)]
            items.append(SourceItem(id=item_id, split=split, path=rel, kind="video" if rel.endswith(".mp4") else "image",
                                    subject="astronaut", labels={"variant": name}, annotations=ann,
                                    annotation_format=fmt))
        return items

    def frames(self, root, item, stride=1, start=0, stop=None):
        if item.id == self.interrupt_on:
            marker = Path(self.only_once_marker) if self.only_once_marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.write_text("crashed once")
                if self.kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise KeyboardInterrupt(f"simulated interruption at {item.id}")
        yield from super().frames(root, item, stride, start, stop)


# ------------------------------------------------------------------------------ checks of the toy data


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


def test_toy_source_lists_every_file_in_order(toy_root: Path) -> None:
    from fbench.shards import SourceOptions

    items = ToySource().items(toy_root, SourceOptions())
    assert [i.path for i in items] == ["train/a0.jpg", "train/a1.jpg", "train/a2.jpg", "train/a3.jpg",
                                       "train/corrupt.jpg", "val/clip.mp4", "val/empty.mp4", "val/garbage.mp4"]
    assert [i.kind for i in items].count("video") == 3


def test_toy_clip_decodes_to_the_written_frames(toy_root: Path) -> None:
    from fbench.shards import iter_video_frames, probe_video_frames

    frames = list(iter_video_frames(toy_root / "val" / "clip.mp4"))
    assert [i for i, _ in frames] == list(range(CLIP_FRAMES))
    assert probe_video_frames(toy_root / "val" / "clip.mp4") == CLIP_FRAMES
    assert frames[BLACK_FRAME][1].mean() < 5 and frames[0][1].mean() > 50
    with pytest.raises(InputError, match="corrupt.jpg"):
        list(ToySource().frames(toy_root, SourceItem(id="x", split="train", path="train/corrupt.jpg")))
