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

Each sample's labels: video_id, clip, folder (the release folder), and the transcript's text,
conf and ref (the source YouTube id), the word table `words` ([word, start s, end s, ASD score])
and the face-track table: each frame's sample stores its own row as `face_track` ([x, y, w, h],
relative box coordinates as written; null for a frame the table lacks) and the clip's row count as
`face_track_frames`, when the file has them (null otherwise: pretrain files and some others lack a
table). A missing or
malformed transcript does not lose the clip (the frames are fine): its labels are null and
`transcript_error` names the file and the problem; the run's summary line and manifest
(`listing.transcripts`) count failed and missing transcripts, so a systematic failure shows in
one line.

Frames are decoded with PyAV, every `--frame-stride`-th kept with its frame index; a frame
with no face keeps its row with NaN landmarks. LRS3 has no landmark annotations; with
`--annotations TABLE` per-frame 68 landmarks (e.g. a synthetic root's ground truth) are used.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbench.shards import SourceItem, SourceOptions, resolve_in_root, walk_files
from fbench.safe_read import FileRefusedError, read_regular_file
from fbench.shards.source import PER_FRAME_LABELS
from pipelines.common import (PipelineSource, is_bad, limit_per_split, unlisted_items, video_annotations,
                              with_annotations)

log = logging.getLogger(__name__)

FOLDERS = ("pretrain", "trainval", "test")
VAL_FRACTION = 0.2
SPLIT_SEED = "fbench-lrs3-val"
CLIP_PATH = re.compile(r"^(pretrain|trainval|test)/([A-Za-z0-9_-]+)/([0-9]+)\.mp4$")
HEADER_LINE = re.compile(r"^([A-Za-z]+):\s*(.*?)\s*$")  # "Text:  ...", "Conf:  4", "Ref:   <YouTube id>"
CONF_VALUE = re.compile(r"^-?[0-9]+$")
NUMBER = r"-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
# Section headers (fields separated by spaces or tabs, as the release writes them) and their rows.
SECTIONS = {
    "words": (re.compile(r"^WORD\s+START\s+END\s+ASDSCORE\s*$"), "WORD START END ASDSCORE",
              re.compile(rf"^(\S+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s*$")),
    "track": (re.compile(r"^FRAME\s+X\s+Y\s+W\s+H\s*$"), "FRAME X Y W H",
              re.compile(rf"^([0-9]+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s*$")),
}


class TranscriptError(ValueError):
    pass


@dataclass(frozen=True)
class Transcript:
    """An LRS3 `.txt`: header fields, then sections separated by blank lines, each with a header.

    text, conf: the `Text:` and `Conf:` lines (conf None when the file has no `Conf:` line);
    ref: the `Ref:` line (the source YouTube id) or None; words: (word, start s, end s, ASD score)
    of the `WORD START END ASDSCORE` table, None when the file has none; track: (frame, x, y, w, h)
    of the `FRAME X Y W H` face-track table (relative box coordinates), None when absent."""

    text: str
    conf: int | None
    ref: str | None
    words: tuple[tuple[str, float, float, float], ...] | None
    track: tuple[tuple[int, float, float, float, float], ...] | None


def parse_transcript(text: str) -> Transcript:
    """Every section of an LRS3 transcript; TranscriptError naming the line and the problem.

    Line 1 must be `Text:`; further `Key: value` header lines (Conf, Ref, ...) follow until the
    first blank line or section header; sections (WORD..., FRAME...) may come in any order, or
    not at all. An unknown section header or a row that does not parse is an error."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise TranscriptError("empty (expected 'Text:' on line 1)")
    header: dict[str, str] = {}
    m = HEADER_LINE.match(lines[0])
    if not m or m[1] != "Text":
        raise TranscriptError(f"line 1 is not 'Text:  ...': {lines[0][:60]!r}")
    header["Text"] = m[2]
    n = 1
    while n < len(lines) and lines[n].strip() and not any(h.match(lines[n]) for h, _, _ in SECTIONS.values()):
        m = HEADER_LINE.match(lines[n])
        if not m:
            raise TranscriptError(f"line {n + 1} is not a 'Key: value' header line: {lines[n][:60]!r}")
        if m[1] in header:
            raise TranscriptError(f"line {n + 1}: second {m[1]!r} line")
        if m[1] == "Conf" and not CONF_VALUE.match(m[2]):
            raise TranscriptError(f"line {n + 1} is not 'Conf:  <integer>': {lines[n][:60]!r}")
        header[m[1]] = m[2]
        n += 1
    sections: dict[str, list[tuple]] = {}
    current: str | None = None
    for n in range(n, len(lines)):
        line = lines[n]
        if not line.strip():
            current = None
            continue
        if current is None:
            current = next((name for name, (h, _, _) in SECTIONS.items() if h.match(line)), None)
            if current is None:
                raise TranscriptError(f"line {n + 1} is not a section header "
                                      f"({' or '.join(repr(t) for _, t, _ in SECTIONS.values())}): {line[:60]!r}")
            if current in sections:
                raise TranscriptError(f"line {n + 1}: second {SECTIONS[current][1]!r} table")
            sections[current] = []
            continue
        m = SECTIONS[current][2].match(line)
        if not m:
            raise TranscriptError(f"line {n + 1} is not a '{SECTIONS[current][1]}' row: {line[:60]!r}")
        if current == "words":
            sections[current].append((m[1], float(m[2]), float(m[3]), float(m[4])))
        else:
            sections[current].append((int(m[1]), *(float(m[k]) for k in range(2, 6))))
    words, track = sections.get("words"), sections.get("track")
    return Transcript(text=header["Text"], conf=int(header["Conf"]) if "Conf" in header else None,
                      ref=header.get("Ref"), words=tuple(words) if words is not None else None,
                      track=tuple(track) if track is not None else None)


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
        labels: dict[str, Any] = dict(item.labels, text=None, conf=None, ref=None, words=None, face_track_frames=None)
        path = resolve_in_root(root, txt)
        try:
            if not path.exists():
                raise FileNotFoundError(txt)
            # A transcript is a few KB: a FIFO or a link to a device must not block or fill memory.
            t = parse_transcript(read_regular_file(path, max_bytes=1 << 20).decode("utf-8"))
            labels.update(text=t.text, conf=t.conf, ref=t.ref,
                          words=[list(w) for w in t.words] if t.words is not None else None)
            if t.track is not None:
                # Each frame's sample gets its own row ([x, y, w, h]), not the clip's whole table.
                labels["face_track_frames"] = len(t.track)
                labels[PER_FRAME_LABELS] = {"face_track": {str(f): [x, y, w, h] for f, x, y, w, h in t.track}}
        except FileNotFoundError:
            labels["transcript_error"] = f"{txt}: missing"
        except (OSError, UnicodeDecodeError, TranscriptError, FileRefusedError) as exc:
            labels["transcript_error"] = f"{txt}: {exc}"
        return SourceItem(id=item.id, split=item.split, path=item.path, kind=item.kind, subject=item.subject,
                          labels=labels)

    def listing_report(self, root: Path, items: list[SourceItem]) -> dict[str, Any]:
        """Transcript counts of the listed clips, for the run's summary and manifest: a transcript
        problem is one line here, not a warning per clip (the clips are kept without text)."""
        errors = [i.labels["transcript_error"] for i in items if i.labels.get("transcript_error")]
        missing = sum(e.endswith(": missing") for e in errors)
        with_words = sum(i.labels.get("words") is not None for i in items)
        with_track = sum(i.labels.get("face_track_frames") is not None for i in items)
        line = (f"transcripts: {len(items) - len(errors)} of {len(items)} read ({with_words} with word timings, "
                f"{with_track} with a face track), {len(errors) - missing} failed, {missing} missing")
        if errors:
            line += f"; e.g. {errors[0]}"
            log.warning("%s: %s", root, line)
        return {"summary": line, "transcripts": {"clips": len(items), "read": len(items) - len(errors),
                                                 "failed": len(errors) - missing, "missing": missing,
                                                 "with_words": with_words, "with_face_track": with_track,
                                                 "first_error": errors[0] if errors else None}}


HELP = """Prep LRS3-TED (face-track clips of TED talks) into per-frame face crops.

Splits: train/val = trainval split 80/20 by speaker (video id, fixed seed), test, and pretrain
as its own split (pretrain clips of val speakers go to val). Labels: video_id, clip, folder,
transcript text and conf. Every --frame-stride-th frame is kept with its frame index; frames
without a face keep their row (NaN landmarks)."""

EXAMPLES = ("fbench prep lrs3 --root /data/LRS3 --out shards/ --frame-stride 2 --splits train,val",
            "fbench synth lrs3 --out synth/LRS3 --n 8   # synthetic: landmarks from its ground truth",
            "fbench prep lrs3 --root synth/LRS3 --out shards/ --landmarks annotations "
            "--annotations synth/LRS3/fbench_ground_truth.h5")

def command():
    """`fbench prep lrs3` (built on first use by the registry entry in pipelines/__init__.py)."""
    from fbench.cli.prep import prep_command

    return prep_command(LRS3Source(), HELP, annotation_table=True, examples=EXAMPLES)
