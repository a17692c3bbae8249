"""LRS3-TED prep pipeline: face-track clips of TED talks -> per-frame face crops in shards.

Layout (data_cards/lrs3.yaml)::

    <root>/{pretrain,trainval,test}/<video_id>/<clip>.mp4   (+ <clip>.txt transcript beside it)

Splits. The release has pretrain, trainval and test folders; a video id is one talk, so one
speaker. fbench's splits:

- `train` / `val`: trainval split 80/20 by speaker. The val speakers are the
  round(20 %) trainval video ids (at least one when there are two or more) with the
  smallest sha256 of `"fbench-lrs3-val:<video_id>"`: a fixed-seed choice that does not depend
  on listing order and moves few speakers when a partial copy grows.
- `test`: the test folder (its speakers are disjoint from the others in the release).
- `pretrain`: the pretrain folder as its own split (long whole face tracks; train on it or not).
  A pretrain clip of a val speaker goes to `val` instead, so no speaker straddles training and
  validation data; its `folder` label says it came from pretrain.

Each sample's labels: video_id, clip, folder (the release folder), and the transcript's text
and conf. A missing or malformed transcript does not lose the clip (the frames are fine): text
and conf are null and `transcript_error` names the file and the problem.

Frames are decoded with PyAV, every `--frame-stride`-th kept with its frame index; a frame
with no face keeps its row with NaN landmarks. LRS3 has no landmark annotations; with
`--annotations TABLE` per-frame 68 landmarks (e.g. a synthetic root's ground truth) are used.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from fbench.shards import SourceItem, SourceOptions, resolve_in_root, walk_files
from fbench.safe_read import FileRefusedError, read_regular_file
from pipelines.common import (PipelineSource, build_plugin, is_bad, limit_per_split, unlisted_items, video_annotations,
                              with_annotations)

log = logging.getLogger(__name__)

FOLDERS = ("pretrain", "trainval", "test")
VAL_FRACTION = 0.2
SPLIT_SEED = "fbench-lrs3-val"
CLIP_PATH = re.compile(r"^(pretrain|trainval|test)/([A-Za-z0-9_-]+)/([0-9]+)\.mp4$")
TEXT_LINE = re.compile(r"^Text:\s*(.*?)\s*$")
CONF_LINE = re.compile(r"^Conf:\s*(-?[0-9]+)\s*$")
WORD_HEADER = re.compile(r"^WORD\s+START\s+END\s+ASDSCORE\s*$")
WORD_ROW = re.compile(r"^\S+\s+[0-9]+(\.[0-9]+)?\s+[0-9]+(\.[0-9]+)?\s+-?[0-9]+(\.[0-9]+)?\s*$")


class TranscriptError(ValueError):
    pass


def parse_transcript(text: str) -> tuple[str, int, int]:
    """(text, conf, number of word rows) of an LRS3 transcript; TranscriptError naming the line."""
    lines = text.splitlines()
    if len(lines) < 2:
        raise TranscriptError("fewer than 2 lines (expected 'Text:' and 'Conf:')")
    m_text, m_conf = TEXT_LINE.match(lines[0]), CONF_LINE.match(lines[1])
    if not m_text:
        raise TranscriptError(f"line 1 is not 'Text:  ...': {lines[0][:60]!r}")
    if not m_conf:
        raise TranscriptError(f"line 2 is not 'Conf:  <integer>': {lines[1][:60]!r}")
    rest = [(n, line) for n, line in enumerate(lines[2:], start=3) if line.strip()]
    words = 0
    if rest:
        n, header = rest[0]
        if not WORD_HEADER.match(header):
            raise TranscriptError(f"line {n} is not the 'WORD START END ASDSCORE' header: {header[:60]!r}")
        for n, line in rest[1:]:
            if not WORD_ROW.match(line):
                raise TranscriptError(f"line {n} is not a 'WORD START END ASDSCORE' row: {line[:60]!r}")
            words += 1
    return m_text[1], int(m_conf[1]), words


def val_speakers(video_ids: set[str]) -> set[str]:
    """The trainval video ids held out for validation (see module doc)."""
    ranked = sorted(video_ids, key=lambda v: hashlib.sha256(f"{SPLIT_SEED}:{v}".encode()).hexdigest())
    n_val = round(VAL_FRACTION * len(ranked))
    if len(ranked) >= 2:
        n_val = max(1, n_val)
    return set(ranked[:n_val])


class LRS3Source(PipelineSource):
    name = "lrs3"
    splits = ("train", "val", "test", "pretrain")

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        if not any((root / folder).is_dir() for folder in FOLDERS):
            raise ValueError(f"{root}: no pretrain/, trainval/ or test/ folder; --root must be the LRS3 root")
        clips, odd = [], []
        for rel in walk_files(root, (".mp4",)):
            m = CLIP_PATH.match(rel)
            if m and m[1] in FOLDERS:
                clips.append((m[1], m[2], m[3], rel))
            elif rel.split("/", 1)[0] in FOLDERS:
                odd.append(rel)
        held_out = val_speakers({vid for folder, vid, _, _ in clips if folder == "trainval"})

        def split_of(folder: str, vid: str) -> str:
            if folder == "test":
                return "test"
            if vid in held_out:
                return "val"
            return "train" if folder == "trainval" else "pretrain"

        items = unlisted_items(odd, lambda rel: split_of(*(rel.split("/") + [""])[:2]),
                               "<pretrain|trainval|test>/<video_id>/<clip>.mp4 (video id: letters, digits, _ -; "
                               "clip: digits)")
        for folder, vid, clip, rel in clips:
            split = split_of(folder, vid)
            items.append(SourceItem(id=f"{folder}_{vid}_{clip}", split=split, path=rel, kind="video", subject=vid,
                                    labels={"video_id": vid, "clip": clip, "folder": folder}))
        # Split order (the source's), then folder/id/clip order: deterministic, independent of the walk.
        order = {s: i for i, s in enumerate(self.splits)}
        items.sort(key=lambda i: (order[i.split], i.path))
        items = limit_per_split(items, options)
        tracks = video_annotations(options, items)
        return [with_annotations(self._with_transcript(root, item), tracks) for item in items]

    @staticmethod
    def _with_transcript(root: Path, item: SourceItem) -> SourceItem:
        if is_bad(item):
            return item
        txt = item.path[: -len(".mp4")] + ".txt"
        labels: dict[str, Any] = dict(item.labels, text=None, conf=None)
        path = resolve_in_root(root, txt)
        try:
            if not path.exists():
                raise FileNotFoundError(txt)
            # A transcript is a few KB: a FIFO or a link to a device must not block or fill memory.
            text, conf, _ = parse_transcript(read_regular_file(path, max_bytes=1 << 20).decode("utf-8"))
            labels.update(text=text, conf=conf)
        except FileNotFoundError:
            labels["transcript_error"] = f"{txt}: missing"
        except (OSError, UnicodeDecodeError, TranscriptError, FileRefusedError) as exc:
            labels["transcript_error"] = f"{txt}: {exc}"
            log.warning("%s: malformed transcript (%s); the clip is kept without text", txt, exc)
        return SourceItem(id=item.id, split=item.split, path=item.path, kind=item.kind, subject=item.subject,
                          labels=labels)


HELP = """Prep LRS3-TED (face-track clips of TED talks) into per-frame face crops.

Splits: train/val = trainval split 80/20 by speaker (video id, fixed seed), test, and pretrain
as its own split (pretrain clips of val speakers go to val). Labels: video_id, clip, folder,
transcript text and conf. Every --frame-stride-th frame is kept with its frame index; frames
without a face keep their row (NaN landmarks)."""

EXAMPLES = ("fbench prep lrs3 --root /data/LRS3 --out shards/ --frame-stride 2 --splits train,val",
            "fbench synth lrs3 --out synth/LRS3 --n 8   # synthetic: landmarks from its ground truth",
            "fbench prep lrs3 --root synth/LRS3 --out shards/ --landmarks annotations "
            "--annotations synth/LRS3/fbench_ground_truth.h5")

PIPELINE = build_plugin(LRS3Source(), "LRS3-TED talking-head clips -> per-frame face crops (train/val by speaker)",
                        HELP, annotation_table=True, examples=EXAMPLES)
