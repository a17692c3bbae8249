"""AffectNet prep pipeline: the manually annotated images -> face crops with their 68 landmarks and
expression, valence and arousal labels.

Layout (data_cards/affectnet.yaml)::

    <root>/Manually_Annotated_Images/<dir>/<name>.jpg
    <root>/Manually_Annotated_file_lists/training.csv      -> split train
    <root>/Manually_Annotated_file_lists/validation.csv    -> split val

Copies differ in where these sit, and all of these are found: the images in
Manually_Annotated_Images/, Manually_Annotated_compressed/Manually_Annotated_Images/ (the release
archive extracted) or Manually_Annotated/Manually_Annotated_Images/ (EMOCA/inferno's layout, with
training.csv and validation.csv beside it in Manually_Annotated/); the lists in
Manually_Annotated_file_lists/, Manually_Annotated/ or the root. When the images of most rows are
missing the run stops with an error naming where it looked (instead of rejecting every row).

The second distribution (auto-detected, recorded in manifest.json `listing.layout` = "npy")::

    <root>/train_set/images/<n>.jpg   + train_set/annotations/<n>_exp.npy, _val.npy, _aro.npy, _lnd.npy
    <root>/val_set/images/<n>.jpg     + val_set/annotations/...                     -> splits train, val

224 px face crops; exp the class (0-7 in the copies seen, 0-10 accepted), val/aro valence and
arousal (numbers or numeric strings), lnd the 68 landmarks as 136 interleaved x, y in crop pixels.
An image whose arrays are missing or malformed is one reject naming the file; face_box is null.

CSV columns, by header name: subDirectory_filePath (relative to the image folder),
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

import numpy as np

from fbench.safe_read import read_regular_file
from fbench.shards import SourceItem, SourceOptions, UnsafePathError, safe_relpath, walk_files
from pipelines.common import (PipelineSource, bad_item, is_bad, limit_per_split, points_array,
                              unique_keys)

log = logging.getLogger(__name__)

CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
# Where copies keep the two lists and the images, in the order searched (data_cards/affectnet.yaml):
# the release's file-list archive, EMOCA/inferno's Manually_Annotated/ (CSVs beside the image folder),
# a nested file-list folder, and the dataset root.
LIST_DIRS = ("Manually_Annotated_file_lists", "Manually_Annotated", "Manually_Annotated/Manually_Annotated_file_lists",
             "")
# The release archive Manually_Annotated_compressed.zip extracts to Manually_Annotated_compressed/...;
# EMOCA/inferno reads Manually_Annotated/Manually_Annotated_Images.
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated_compressed/Manually_Annotated_Images",
              "Manually_Annotated/Manually_Annotated_Images")
MISSING_CHECK_ROWS = 1000  # rows (spread over each list) whose image must exist before the run starts
MISSING_FRACTION = 0.5  # more of them missing: stop, naming where the images were looked for
# The second distribution: <split folder>/images/<n>.jpg (224 px crops) + annotations/<n>_{exp,val,aro,lnd}.npy
NPY_SPLITS = {"train": "train_set", "val": "val_set"}
NPY_FIELDS = ("exp", "val", "aro", "lnd")
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


def check_images_present(root: Path, listing: str, image_dir: str, items: list[SourceItem]) -> None:
    """Stop (ValueError naming where it looked) when the images of most rows are missing: a wrong or
    unextracted image folder would otherwise make every row a reject and the run 'succeed' empty.
    Checks up to MISSING_CHECK_ROWS rows spread over the list."""
    rows = [i for i in items if not is_bad(i)]
    if not rows:
        return
    step = max(1, len(rows) // MISSING_CHECK_ROWS)
    checked = rows[::step]
    missing = [i.path for i in checked if not (root / i.path).is_file()]
    if len(missing) > MISSING_FRACTION * len(checked):
        raise ValueError(f"{root}: the images of {len(missing)} of {len(checked)} checked rows of {listing} are "
                         f"missing (e.g. {missing[0]}); looked in {image_dir}/ (image folders searched: "
                         f"{', '.join(IMAGE_DIRS)}); is the image archive extracted under --root?")


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


def npy_layout(root: Path) -> dict[str, str]:
    """{split: folder} of the npy distribution's split folders present under `root` ({} if none)."""
    return {split: d for split, d in NPY_SPLITS.items() if (root / d / "images").is_dir()}


def npy_scalar(path: Path, what: str) -> float:
    """A 0-d (or one-element) annotation array: a number or a numeric string (copies store either)."""
    value = np.load(path, allow_pickle=False)
    if value.size != 1:
        raise RowError(f"{what}: expected one value, got shape {value.shape}")
    try:
        return float(value.reshape(()).item())
    except (TypeError, ValueError):
        raise RowError(f"{what}: {str(value.reshape(()).item())[:20]!r} is not a number") from None


def parse_npy(root: Path, folder: str, stem: str) -> tuple[Any, dict[str, Any]]:
    """(68, 2) landmarks and labels of one image of the npy distribution; RowError naming the file."""
    values: dict[str, Any] = {}
    for field in NPY_FIELDS:
        rel = f"{folder}/annotations/{stem}_{field}.npy"
        try:
            if field == "lnd":
                values[field] = points_array(np.load(root / rel, allow_pickle=False), 68, rel)
            else:
                values[field] = npy_scalar(root / rel, rel)
        except FileNotFoundError:
            raise RowError(f"{rel}: missing") from None
        except ValueError as exc:  # also np.load's "not a .npy file" / pickled-object refusals
            raise RowError(f"{rel}: {exc}" if not str(exc).startswith(rel) else str(exc)) from None
    expression = values["exp"]
    if expression != int(expression) or not 0 <= expression < len(CLASSES):
        raise RowError(f"{folder}/annotations/{stem}_exp.npy: {expression:g} is not a class 0-{len(CLASSES) - 1}")
    for name in ("val", "aro"):
        if not (-1.0 <= values[name] <= 1.0 or values[name] == NOT_ANNOTATED):
            raise RowError(f"{folder}/annotations/{stem}_{name}.npy: {values[name]} is outside [-1, 1] and not "
                           f"{NOT_ANNOTATED:g}")
    expression = int(expression)
    labels = {"expression": expression, "expression_name": CLASSES[expression], "valence": values["val"],
              "arousal": values["aro"], "face_box": None, "expression_valid": expression < N_EMOTIONS,
              "va_valid": all(-1.0 <= values[k] <= 1.0 for k in ("val", "aro"))}
    return values["lnd"], labels


class AffectNetSource(PipelineSource):
    name = "affectnet"
    splits = ("train", "val")

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        npy = npy_layout(root)
        if npy:
            return self._npy_items(root, npy, options)
        image_dir = next((d for d in IMAGE_DIRS if (root / d).is_dir()), None)
        files = {split: find_file(root, name) for split, name in CSV_FILES.items()}
        if not any(files.values()):
            raise ValueError(f"{root}: neither training.csv nor validation.csv (looked in "
                             f"{', '.join(d or '.' for d in LIST_DIRS)}) nor the npy distribution's "
                             f"{' / '.join(NPY_SPLITS.values())}/images; --root must be the AffectNet root")
        if image_dir is None:
            raise ValueError(f"{root}: no image folder; looked for {', '.join(IMAGE_DIRS)} (the lists are "
                             f"{', '.join(r for r in files.values() if r)})")
        items = []
        for split, rel in files.items():
            if rel is None:
                log.warning("%s: no %s; split %s is empty", root, CSV_FILES[split], split)
            elif not options.splits or split in options.splits:
                read = self._read_csv(root, rel, split, image_dir, options.limit)
                check_images_present(root, rel, image_dir, read)
                items += read
        listed = {split: rel or CSV_FILES[split] for split, rel in files.items()}
        return limit_per_split(unique_keys(self.name, items, listed), options)

    def listing_report(self, root: Path, items: list[SourceItem]) -> dict[str, Any]:
        """Which layout the run read (recorded in manifest.json `listing`, printed in the summary)."""
        root = Path(root)
        npy = npy_layout(root)
        if npy:
            return {"summary": f"layout npy ({', '.join(f'{d}/images + {d}/annotations' for d in npy.values())})",
                    "layout": "npy", "folders": npy}
        image_dir = next((d for d in IMAGE_DIRS if (root / d).is_dir()), None)
        lists = {split: find_file(root, name) for split, name in CSV_FILES.items()}
        return {"summary": f"layout csv (images {image_dir}/, lists {', '.join(r for r in lists.values() if r)})",
                "layout": "csv", "image_dir": image_dir, "lists": lists}

    def _npy_items(self, root: Path, folders: dict[str, str], options: SourceOptions) -> list[SourceItem]:
        """Items of the npy distribution: one per image, labels from its four annotation arrays; an
        image whose arrays are missing or malformed is one reject naming the file."""
        items = []
        for split, folder in folders.items():
            if options.splits and split not in options.splits:
                continue
            images = walk_files(root, (".jpg", ".jpeg", ".png"), under=f"{folder}/images")
            images = [rel for rel in images if "/" not in rel.removeprefix(f"{folder}/images/")]
            # Numeric names in numeric order (0.jpg, 1.jpg, ..., 10.jpg), others after them by name.
            images.sort(key=lambda rel: (0, int(Path(rel).stem), "") if Path(rel).stem.isdigit() else
                        (1, 0, Path(rel).stem))
            if options.limit is not None:
                images = images[: options.limit]
            for rel in images:
                stem = Path(rel).stem
                try:
                    points, labels = parse_npy(root, folder, stem)
                except RowError as exc:
                    items.append(bad_item(f"{folder}-{stem}", split, rel, str(exc)))
                    continue
                items.append(SourceItem(id=f"{folder}_{stem}", split=split, path=rel, labels=labels,
                                        annotations=points, annotation_format="ibug68"))
        missing = [d for d in NPY_SPLITS.values() if d not in folders.values()]
        if missing:
            log.warning("%s: npy distribution without %s; that split is empty", root, ", ".join(missing))
        return limit_per_split(unique_keys(self.name, items, {s: f"{d}/images" for s, d in NPY_SPLITS.items()}),
                               options)

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

def command():
    """`fbench prep affectnet` (built on first use by the registry entry in pipelines/__init__.py)."""
    from fbench.cli.prep import prep_command

    return prep_command(AffectNetSource(), HELP, examples=EXAMPLES)
