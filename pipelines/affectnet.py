"""AffectNet prep pipeline: the manually annotated images -> face crops with their 68 landmarks and
expression, valence and arousal labels.

Layout (data_cards/affectnet.yaml)::

    <root>/Manually_Annotated_Images/<dir>/<name>.jpg
    <root>/Manually_Annotated_file_lists/training.csv      -> split train
    <root>/Manually_Annotated_file_lists/validation.csv    -> split val

(the CSVs are also found at the root, and the images under Manually_Annotated/, as some copies
unpack them). CSV columns, by header name: subDirectory_filePath (relative to the image folder),
face_x, face_y, face_width, face_height, facial_landmarks (68 points `x;y;x;y;...`), expression
(0-10), valence and arousal ([-1, 1], -2 where not annotated); a file without the header line is
read in that column order.

Labels: expression, expression_name, valence, arousal, face_box [x, y, w, h], and two flags:
`expression_valid` (classes 0-7 are emotions; 8 None, 9 Uncertain, 10 No-Face are kept but
not) and `va_valid` (valence and arousal both in [-1, 1]; -2 is kept but not). Filtering is the
reader's choice. Annotations: the row's 68 landmarks (ibug68).

A row that does not parse (wrong field count, a number that is not one, not 68 points, a class
outside 0-10, valence/arousal outside [-1, 1] and not -2) or whose path is unsafe (absolute,
'..') is one reject naming the CSV, its line and the problem; the run goes on. A path listed
twice keeps its first row.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from fbench.safe_read import read_regular_file
from fbench.shards import SourceItem, SourceOptions, UnsafePathError, safe_relpath
from pipelines.common import PipelineSource, bad_item, build_plugin, limit_per_split, points_array, unique_keys

log = logging.getLogger(__name__)

CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
LIST_DIRS = ("Manually_Annotated_file_lists", "Manually_Annotated/Manually_Annotated_file_lists", "")
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
           "None", "Uncertain", "No-Face")
N_EMOTIONS = 8  # classes 0-7 are emotions
NOT_ANNOTATED = -2.0  # AffectNet's valence/arousal where there is none


class RowError(ValueError):
    pass


def find_file(root: Path, name: str) -> str | None:
    for folder in LIST_DIRS:
        rel = f"{folder}/{name}" if folder else name
        if (root / rel).is_file():
            return rel
    return None


def parse_row(fields: dict[str, str], image_dir: str) -> tuple[str, Any, dict[str, Any]]:
    """(path relative to the root, (68, 2) landmarks, labels) of one CSV row; RowError saying what is wrong."""
    if not fields["subDirectory_filePath"].strip():
        raise RowError("empty subDirectory_filePath")
    try:
        # The CSV's path alone first: an absolute one must not pass as relative to the image folder.
        path = safe_relpath(f"{image_dir}/{safe_relpath(fields['subDirectory_filePath'])}")
    except UnsafePathError as exc:
        raise RowError(f"unsafe image path: {exc}") from None
    try:
        box = [float(fields[c]) for c in ("face_x", "face_y", "face_width", "face_height")]
    except ValueError:
        raise RowError("face_x/face_y/face_width/face_height are not numbers") from None
    if not all(math.isfinite(v) for v in box):
        raise RowError("face box is not finite")
    try:
        points = points_array(fields["facial_landmarks"].strip().split(";"), 68, "facial_landmarks")
    except ValueError as exc:
        raise RowError(str(exc)) from None
    try:
        expression = int(fields["expression"])
    except ValueError:
        raise RowError(f"expression {fields['expression'][:20]!r} is not an integer") from None
    if not 0 <= expression < len(CLASSES):
        raise RowError(f"expression {expression} is not a class 0-{len(CLASSES) - 1}")
    va = []
    for name in ("valence", "arousal"):
        try:
            value = float(fields[name])
        except ValueError:
            raise RowError(f"{name} {fields[name][:20]!r} is not a number") from None
        if not (-1.0 <= value <= 1.0 or value == NOT_ANNOTATED):
            raise RowError(f"{name} {value} is outside [-1, 1] and not {NOT_ANNOTATED:g} (not annotated)")
        va.append(value)
    labels = {"expression": expression, "expression_name": CLASSES[expression], "valence": va[0], "arousal": va[1],
              "face_box": [int(round(v)) for v in box], "expression_valid": expression < N_EMOTIONS,
              "va_valid": all(-1.0 <= v <= 1.0 for v in va)}
    return path, points, labels


class AffectNetSource(PipelineSource):
    name = "affectnet"
    splits = ("train", "val")

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        image_dir = next((d for d in IMAGE_DIRS if (root / d).is_dir()), IMAGE_DIRS[0])
        files = {split: find_file(root, name) for split, name in CSV_FILES.items()}
        if not any(files.values()):
            raise ValueError(f"{root}: neither training.csv nor validation.csv (looked in "
                             f"{', '.join(d or '.' for d in LIST_DIRS)}); --root must be the AffectNet root")
        items = []
        for split, rel in files.items():
            if rel is None:
                log.warning("%s: no %s; split %s is empty", root, CSV_FILES[split], split)
            elif not options.splits or split in options.splits:
                items += self._read_csv(root, rel, split, image_dir, options.limit)
        listed = {split: rel or CSV_FILES[split] for split, rel in files.items()}
        return limit_per_split(unique_keys(self.name, items, listed), options)

    def _read_csv(self, root: Path, rel: str, split: str, image_dir: str, limit: int | None) -> list[SourceItem]:
        # errors="replace": a stray non-UTF-8 byte spoils its own row (the path will not exist), not the file.
        text = read_regular_file(root / rel).decode("utf-8", errors="replace")
        reader = csv.reader(io.StringIO(text, newline=""))
        columns: tuple[str, ...] = COLUMNS
        items: list[SourceItem] = []
        stem = Path(rel).stem
        first = True
        while limit is None or len(items) < limit:
            line = reader.line_num + 1  # where the next row starts
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                items.append(bad_item(f"{stem}-line{line:07d}", split, rel, f"{rel} line {line}: {exc}"))
                continue
            if not row or not any(v.strip() for v in row):
                continue
            if first:
                first = False
                names = tuple(c.strip().lstrip("\ufeff") for c in row)
                if COLUMNS[0] in names:  # a header line (any column order)
                    columns = names
                    missing = [c for c in COLUMNS if c not in columns]
                    if missing:
                        raise ValueError(f"{root / rel}: header lacks column(s) {missing}")
                    continue
            try:
                if len(row) != len(columns):
                    raise RowError(f"{len(row)} fields, expected {len(columns)} ({', '.join(columns)})")
                path, points, labels = parse_row(dict(zip(columns, row)), image_dir)
            except RowError as exc:
                items.append(bad_item(f"{stem}-line{line:07d}", split, rel, f"{rel} line {line}: {exc}"))
                continue
            items.append(SourceItem(id=path.removeprefix(image_dir + "/").rsplit(".", 1)[0], split=split, path=path,
                                    labels=labels, annotations=points, annotation_format="ibug68"))
        return items


HELP = """Prep AffectNet (manually annotated part) into face crops with 68 landmarks and emotion labels.

Splits: training.csv -> train, validation.csv -> val. Labels: expression (0-10) and its name,
valence, arousal, face_box, and the flags expression_valid (classes 0-7) and va_valid (not -2);
invalid classes and -2 values are kept, flagged. Malformed or unsafe CSV rows are rejects."""

EXAMPLES = ("fbench prep affectnet --root /data/AffectNet --out shards/ --workers 8",
            "fbench prep affectnet --root synth/AffectNet --out shards/ --landmarks annotations   # synthetic data")

PIPELINE = build_plugin(AffectNetSource(), "AffectNet faces with 68 landmarks, expression, valence, arousal -> face "
                        "crops (train/val)", HELP, examples=EXAMPLES)
