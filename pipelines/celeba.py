"""CelebA prep pipeline: celebrity faces -> face crops with CelebA's 5 landmarks, identities and attributes.

Layout (data_cards/celeba.yaml)::

    <root>/Img/img_align_celeba/<NNNNNN>.jpg          aligned and cropped (--images aligned, default)
    <root>/Img/img_celeba/<NNNNNN>.jpg                in the wild (--images wild)
    <root>/Anno/list_landmarks_align_celeba.txt      (wild: list_landmarks_celeba.txt) count, header, rows
    <root>/Anno/identity_CelebA.txt                  `<file> <identity>`
    <root>/Anno/list_attr_celeba.txt                 count, 40 attribute names, `<file> <40 x 1|-1>` (optional)
    <root>/Eval/list_eval_partition.txt              `<file> <0|1|2>`

Copies come in other layouts, found automatically (recorded in manifest.json `listing`):
torchvision's flat folder (`celeba/img_align_celeba/` with list_eval_partition.txt,
list_landmarks_align_celeba.txt, identity_CelebA.txt, list_attr_celeba.txt in `celeba/`; --root
at that folder or its parent) and the CSV mirror (list_eval_partition.csv,
list_landmarks_align_celeba.csv, list_attr_celeba.csv with an `image_id` header row; images in
img_align_celeba/img_align_celeba/ or img_align_celeba/; identity_CelebA.txt beside them if
added, else identity is null). CRLF line endings parse everywhere.

Items: every image of the partition file, in its order; partition 0/1/2 -> train/val/test
(CelebA's official split, contiguous file ranges; whether it is identity-disjoint is not
documented, see the data card). Annotations: the 5 points of the landmark file
(celeba5: left eye, right eye, nose, left and right mouth corner, whole pixels). Labels:
identity and, when the attribute file is there, `attributes` (the names of the attributes
marked 1).

Every annotation row of an image must parse: a malformed row (wrong field count, not an
integer, a file name with a path in it) makes that image one reject naming the file, the line
and the problem; an image absent from the landmark file has no annotations (rejected only in
--landmarks annotations mode), absent from the identity file has identity null.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbench.safe_read import read_regular_file
from fbench.shards import SourceItem, SourceOptions
from pipelines.common import (Choice, PipelineSource, bad_item, filter_values, is_bad,
                              limit_per_split, points_array, unique_keys)

log = logging.getLogger(__name__)

PARTITION_FILE = "Eval/list_eval_partition.txt"
IDENTITY_FILE = "Anno/identity_CelebA.txt"
ATTRIBUTE_FILE = "Anno/list_attr_celeba.txt"
VARIANTS = {"aligned": ("Img/img_align_celeba", "Anno/list_landmarks_align_celeba.txt"),
            "wild": ("Img/img_celeba", "Anno/list_landmarks_celeba.txt")}


@dataclass(frozen=True)
class Layout:
    """Where one copy keeps CelebA's files (paths relative to --root; identity/attributes may be absent)."""

    name: str
    partition: str
    identity: str
    attributes: str
    images: dict[str, tuple[str, ...]]  # --images variant -> candidate image folders (first existing wins)
    landmarks: dict[str, str]  # --images variant -> landmark file
    csv: bool = False  # comma-separated with an image_id header row (the CSV mirror)


def _flat(base: str) -> Layout:
    """torchvision's layout: every file flat in one folder (its base_folder `celeba/`)."""
    return Layout("torchvision", f"{base}list_eval_partition.txt", f"{base}identity_CelebA.txt",
                  f"{base}list_attr_celeba.txt",
                  {"aligned": (f"{base}img_align_celeba",), "wild": (f"{base}img_celeba",)},
                  {"aligned": f"{base}list_landmarks_align_celeba.txt", "wild": f"{base}list_landmarks_celeba.txt"})


def _csv(base: str) -> Layout:
    """The CSV mirror: list_*.csv with an image_id header; images double-nested or flat."""
    return Layout("csv", f"{base}list_eval_partition.csv", f"{base}identity_CelebA.txt", f"{base}list_attr_celeba.csv",
                  {"aligned": (f"{base}img_align_celeba/img_align_celeba", f"{base}img_align_celeba"),
                   "wild": (f"{base}img_celeba/img_celeba", f"{base}img_celeba")},
                  {"aligned": f"{base}list_landmarks_align_celeba.csv", "wild": f"{base}list_landmarks_celeba.csv"},
                  csv=True)


# Searched in order: the release (Img/, Anno/, Eval/), torchvision's flat folder (--root at the folder
# or at its parent holding celeba/), the CSV mirror (same two places).
LAYOUTS = (Layout("release", PARTITION_FILE, IDENTITY_FILE, ATTRIBUTE_FILE,
                  {k: (v[0],) for k, v in VARIANTS.items()}, {k: v[1] for k, v in VARIANTS.items()}),
           _flat(""), _flat("celeba/"), _csv(""), _csv("celeba/"))


def find_layout(root: Path) -> Layout:
    for layout in LAYOUTS:
        if (root / layout.partition).is_file():
            return layout
    looked = ", ".join(dict.fromkeys(layout.partition for layout in LAYOUTS))
    raise ValueError(f"{root}: no CelebA partition list (looked for {looked}); "
                     "--root must be the CelebA root (release Img/ Anno/ Eval/, torchvision's celeba/ folder or "
                     "the CSV mirror)")
PARTITIONS = {"0": "train", "1": "val", "2": "test"}
FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(jpg|jpeg|png)$", re.IGNORECASE)  # CelebA names: flat, no folders
INTEGER = re.compile(r"^-?[0-9]+$")
FILTERS = (Choice("images", tuple(VARIANTS), "Which CelebA images to prep (default aligned: img_align_celeba).",
                  single=True),)


@dataclass
class Table:
    """Rows of one annotation file: name -> fields, and name -> problem for rows that did not parse."""

    rows: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # by file name (the last problem of a name)
    bad_rows: list[tuple[str, str]] = field(default_factory=list)  # every malformed row, in order
    header: list[str] = field(default_factory=list)

    def error(self, name: str, problem: str) -> None:
        self.errors[name] = problem
        self.bad_rows.append((name, problem))


def read_table(root: Path, rel: str, n_fields: int, has_header: bool, required: bool, csv: bool = False) -> Table:
    """Parse a whitespace-separated CelebA annotation file: `<name> <n_fields values>` per line,
    after a count line and a header line when `has_header`; with `csv`, the CSV mirror's form: a
    header row `image_id,<columns>` then comma-separated rows. Malformed rows land in `errors`,
    keyed by their file name when it can be read."""
    path = root / rel
    table = Table()
    if not path.is_file():
        if required:
            raise ValueError(f"{path}: missing; --root must be the CelebA root (with Img/, Anno/, Eval/)")
        return table
    lines = read_regular_file(path).decode("utf-8", errors="replace").splitlines()
    start = 0
    if csv:
        if not lines or lines[0].split(",")[0].strip().lstrip("\ufeff") != "image_id":
            raise ValueError(f"{path}: expected the header row 'image_id,...' at the top")
        table.header = [c.strip() for c in lines[0].split(",")[1:]]
        start = 1
        lines = [ln.replace(",", " ") for ln in lines]
    elif has_header:
        if len(lines) < 2 or not INTEGER.match(lines[0].strip()):
            raise ValueError(f"{path}: expected a count line and a header line at the top")
        table.header = lines[1].split()
        start = 2
        if int(lines[0]) != len([ln for ln in lines[2:] if ln.strip()]):
            log.warning("%s: the count line says %s, the file has %d rows", path, lines[0].strip(), len(lines) - 2)
    for number, line in enumerate(lines[start:], start=start + 1):
        fields = line.split()
        if not fields:
            continue
        name, values = fields[0], fields[1:]
        where = f"{rel} line {number}"
        if not FILE_NAME.match(name):
            table.error(name, f"{where}: {name[:80]!r} is not a CelebA file name")
        elif len(values) != n_fields or not all(INTEGER.match(v) for v in values):
            table.error(name, f"{where} ({name}): expected {n_fields} integer(s) after the file name, "
                              f"got {' '.join(values)[:120]!r}")
        elif name in table.rows:
            table.error(name, f"{where}: {name} is listed twice")
        else:
            table.rows[name] = values
    return table


class CelebASource(PipelineSource):
    name = "celeba"
    splits = ("train", "val", "test")

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        layout = find_layout(root)
        variant = next(iter(filter_values(options, FILTERS[0]) or {"aligned"}))
        candidates = layout.images[variant]
        image_dir = next((d for d in candidates if (root / d).is_dir()), candidates[0])
        landmark_file = layout.landmarks[variant]
        partition_file, identity_file, attribute_file = layout.partition, layout.identity, layout.attributes
        partition = read_table(root, partition_file, 1, has_header=False, required=True, csv=layout.csv)
        landmarks = read_table(root, landmark_file, 10, has_header=True, required=False, csv=layout.csv)
        identities = read_table(root, identity_file, 1, has_header=False, required=False)
        attributes = read_table(root, attribute_file, 40, has_header=True, required=False, csv=layout.csv)
        if not landmarks.rows and not landmarks.errors:
            log.warning("%s: no %s; images have no landmark annotations", root, landmark_file)
        names = list(attributes.header[:40])

        items = []
        # Partition rows that did not parse are rejects (counted in train: their split is unknown).
        for number, (name, error) in enumerate(partition.bad_rows):
            items.append(bad_item(f"partition-row-{number}-{name}", "train", partition_file, error))
        tables = ((landmark_file, landmarks), (identity_file, identities), (attribute_file, attributes))
        for name, (code,) in partition.rows.items():
            split = PARTITIONS.get(code)
            stem = Path(name).stem
            problems = [(rel, t.errors[name]) for rel, t in tables if name in t.errors]
            if split is None:
                problems.insert(0, (partition_file, f"{partition_file}: {name} has partition {code!r}, not 0, 1 or 2"))
            if problems:
                items.append(bad_item(stem, split or "train", problems[0][0], "; ".join(p for _, p in problems)))
                continue
            labels: dict[str, Any] = {"identity": int(identities.rows[name][0]) if name in identities.rows else None}
            if name in attributes.rows:
                labels["attributes"] = [a for a, v in zip(names, attributes.rows[name]) if v == "1"]
            points = landmarks.rows.get(name)
            items.append(SourceItem(
                id=stem, split=split, path=f"{image_dir}/{name}", subject=str(labels["identity"])
                if labels["identity"] is not None else None, labels=labels,
                annotations=points_array(np.asarray(points, dtype=np.float64), 5, "landmarks") if points else None,
                annotation_format="celeba5" if points else None))
        return limit_per_split(unique_keys(self.name, items, partition_file), options)

    def listing_report(self, root: Path, items: list[SourceItem]) -> dict[str, Any]:
        """Which copy layout the run read (manifest.json `listing`, and the summary line)."""
        layout = find_layout(Path(root))
        folders = sorted({i.path.rsplit("/", 1)[0] for i in items if "/" in i.path and not is_bad(i)})
        identity = (Path(root) / layout.identity).is_file()
        return {"summary": f"layout {layout.name} (partition {layout.partition}, images {', '.join(folders) or '-'}, "
                           f"identities {'from ' + layout.identity if identity else 'absent'})",
                "layout": layout.name, "partition": layout.partition, "image_dirs": folders,
                "identity": layout.identity if identity else None}


HELP = """Prep CelebA (celebrity faces) into face crops with CelebA's 5 landmarks.

Splits: Eval/list_eval_partition.txt (0 train, 1 val, 2 test). Annotations: the 5 points of
Anno/list_landmarks_align_celeba.txt (wild images: list_landmarks_celeba.txt). Labels:
identity, attributes (names marked 1, when Anno/list_attr_celeba.txt is there)."""

EXAMPLES = ("fbench prep celeba --root /data/CelebA --out shards/ --splits train",
            "fbench prep celeba --root synth/CelebA --out shards/ --landmarks annotations   # synthetic data")

def command():
    """`fbench prep celeba` (built on first use by the registry entry in pipelines/__init__.py)."""
    from fbench.cli.prep import prep_command

    return prep_command(CelebASource(), HELP, choices=FILTERS, examples=EXAMPLES)
