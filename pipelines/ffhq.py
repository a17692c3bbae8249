"""FFHQ prep pipeline: Flickr-Faces-HQ aligned portraits -> face crops with their 68 landmarks.

Layout (data_cards/ffhq.yaml)::

    <root>/ffhq-dataset-v2.json                               metadata, splits, landmarks
    <root>/images1024x1024/<index // 1000 * 1000:05d>/<index:05d>.png
    <root>/thumbnails128x128/...   <root>/in-the-wild-images/...   (same naming)

With the JSON: one item per entry (keys "0".."69999", in index order) whose image file is
present, split from its `category` (training -> train, validation -> val), annotations the
entry's 68 `face_landmarks` of the chosen variant (`--images`): `image` for the aligned
1024 px images (default), the same scaled by the thumbnail's size for the 128 px thumbnails
(the thumbnails are the aligned images resized, FFHQ gives them no landmarks of their own),
`in_the_wild` for the wild photos. An entry whose file path is unsafe, whose category is
unknown or whose landmarks are malformed is one reject naming the JSON entry. Entries whose
file is absent (a partial copy) are skipped with a warning; a flat copy
(`images1024x1024/<index:05d>.png`, as some mirrors ship it) is found too.

Without the JSON: every image under the variant's folder, split by index (0-59999 train,
60000-69999 val, FFHQ's own rule), no annotations (prep with --landmarks detect). A flat folder
of images named by index (SMIRK trains on `ffhq256/00000.png ...`, 256 px, no JSON) is read the
same way with --root at that folder. With the JSON, the images' pixel size must be the JSON's
(`pixel_size` of the chosen section): a mismatch (256 px images beside the 1024 px JSON) stops
the run with an error instead of placing the JSON's landmarks at the wrong resolution. The
layout read (json, folder, flat) is recorded in manifest.json `listing`.

Labels: index, category (FFHQ's word; derived from the index without the JSON) and, with the
JSON, the photo's licence.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from fbench.safe_read import read_regular_file
from fbench.shards import SourceItem, SourceOptions, safe_relpath, walk_files
from fbench.shards.media import IMAGE_SUFFIXES
from pipelines.common import (Choice, PipelineSource, bad_item, filter_values, limit_per_split,
                              points_array, unique_keys)

log = logging.getLogger(__name__)

JSON_NAME = "ffhq-dataset-v2.json"
TRAINING_COUNT = 60000  # FFHQ: indices 0-59999 training, 60000-69999 validation
VARIANTS = {"aligned": ("image", "images1024x1024"), "thumbnails": ("thumbnail", "thumbnails128x128"),
            "wild": ("in_the_wild", "in-the-wild-images")}  # --images -> (JSON section, folder)
CATEGORY_SPLIT = {"training": "train", "validation": "val"}
FILTERS = (Choice("images", tuple(VARIANTS), "Which FFHQ images to prep (default aligned: images1024x1024).",
                  single=True),)
INDEX = re.compile(r"^([0-9]+)$")
SIZE_CHECKS = 16  # images whose pixel size is compared with the JSON's before the run starts


class SizeMismatch(ValueError):
    pass


def index_category(index: int) -> str:
    return "training" if index < TRAINING_COUNT else "validation"


class FFHQSource(PipelineSource):
    name = "ffhq"
    splits = ("train", "val")

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        variant = next(iter(filter_values(options, FILTERS[0]) or {"aligned"}))
        if (root / JSON_NAME).is_file():
            self._json_sizes: dict[str, list[int]] = {}
            items = self._from_json(root, variant)
            check_sizes(root, items, self._json_sizes, variant)
        else:
            items = self._from_folder(root, variant)
        return limit_per_split(unique_keys(self.name, items, JSON_NAME), options)

    def listing_report(self, root: Path, items: list[SourceItem]) -> dict[str, Any]:
        """Which layout the run read (manifest.json `listing`, and the summary line)."""
        root = Path(root)
        layout = "json" if (root / JSON_NAME).is_file() else \
            "flat" if items and all("/" not in i.path for i in items) else "folder"
        landmarks = f"landmarks from {JSON_NAME}" if layout == "json" else \
            f"no {JSON_NAME}: splits by index, landmarks from the detectors (MediaPipe/FAN)"
        return {"summary": f"layout {layout} ({landmarks})", "layout": layout, "json": layout == "json"}

    def _from_json(self, root: Path, variant: str) -> list[SourceItem]:
        section, folder = VARIANTS[variant]
        try:
            entries = json.loads(read_regular_file(root / JSON_NAME).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{root / JSON_NAME}: not valid JSON ({exc})") from exc
        if not isinstance(entries, dict):
            raise ValueError(f"{root / JSON_NAME}: expected an object keyed by image index, got {type(entries).__name__}")
        numbered, absent, items = [], [], []
        for key, entry in entries.items():
            m = INDEX.match(str(key))
            if m:
                numbered.append((int(m[1]), key, entry))
            else:
                items.append(bad_item(f"json-{key}", "train", JSON_NAME, f"{JSON_NAME}: entry {key!r} is not an image index"))
        for index, key, entry in sorted(numbered, key=lambda e: e[0]):
            split = CATEGORY_SPLIT.get(index_category(index))  # where a rejected entry is counted
            try:
                item = self._entry_item(root, index, entry, section, folder)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:  # UnsafePathError is a ValueError
                items.append(bad_item(f"json-{index:05d}", split, JSON_NAME,
                                      f"{JSON_NAME}: entry {key!r} ({variant}): {exc}"))
                continue
            if item is None:
                absent.append(index)
            else:
                items.append(item)
        if absent:
            log.warning("%s: %d of %d JSON entries have no %s file under the root (a partial copy?); skipped, "
                        "e.g. index %d", root, len(absent), len(numbered), folder, absent[0])
        return items

    def _entry_item(self, root: Path, index: int, entry: Any, section: str, folder: str) -> SourceItem | None:
        if not isinstance(entry, dict) or not isinstance(entry.get(section), dict):
            raise ValueError(f"no {section!r} section")
        category = entry.get("category")
        if category not in CATEGORY_SPLIT:
            raise ValueError(f"category {category!r} is not one of {sorted(CATEGORY_SPLIT)}")
        info = entry[section]
        file_path = info.get("file_path")
        if not isinstance(file_path, str):
            raise ValueError(f"{section}.file_path is missing")
        path = safe_relpath(file_path)  # raises for absolute paths and '..'
        if not (root / path).is_file():
            # A flat copy: the variant folder without its thousands sub-folders, or the images at the root.
            name = f"{index:05d}{Path(path).suffix or '.png'}"
            path = next((p for p in (f"{folder}/{name}", name) if (root / p).is_file()), None)
            if path is None:
                return None
        if section == "thumbnail":  # the aligned image's landmarks, scaled to the thumbnail
            points = points_array(entry.get("image", {}).get("face_landmarks"), 68, "image.face_landmarks")
            big, small = (np.asarray(entry[k]["pixel_size"], dtype=np.float64) for k in ("image", "thumbnail"))
            if big.shape != (2,) or small.shape != (2,) or not (big > 0).all() or not (small > 0).all():
                raise ValueError("image/thumbnail pixel_size must be two positive numbers")
            points = points * (small / big).astype(np.float32)  # pixel-edge coordinates scale with the image
        else:
            points = points_array(info.get("face_landmarks"), 68, f"{section}.face_landmarks")
        size = info.get("pixel_size")
        if isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size):
            self._json_sizes[path] = [int(v) for v in size]
        labels: dict[str, Any] = {"index": index, "category": category}
        license_name = (entry.get("metadata") or {}).get("license")
        if isinstance(license_name, str):
            labels["license"] = license_name
        return SourceItem(id=f"{index:05d}", split=CATEGORY_SPLIT[category], path=path, labels=labels,
                          annotations=points, annotation_format="ibug68")

    def _from_folder(self, root: Path, variant: str) -> list[SourceItem]:
        folder = VARIANTS[variant][1]
        if (root / folder).is_dir():
            files = walk_files(root, IMAGE_SUFFIXES, under=folder)
        else:
            # A flat folder of images named by index (SMIRK trains on one, e.g. ffhq256/00000.png): --root is it.
            files = [rel for rel in walk_files(root, IMAGE_SUFFIXES) if "/" not in rel]
            if not any(INDEX.match(Path(rel).stem) for rel in files):
                raise ValueError(f"{root}: neither {JSON_NAME}, nor a {folder}/ folder, nor images named by FFHQ "
                                 "index (00000.png ...) in it; --root must be the FFHQ root or a flat image folder")
        log.warning("%s: no %s; splits from the image index (0-%d train), no landmark annotations (landmarks come "
                    "from the detectors)", root, JSON_NAME, TRAINING_COUNT - 1)
        items, odd = [], []
        for rel in files:
            m = INDEX.match(Path(rel).stem)
            if not m:
                odd.append(rel)
                continue
            index = int(m[1])
            category = index_category(index)
            items.append(SourceItem(id=f"{index:05d}", split=CATEGORY_SPLIT[category], path=rel,
                                    labels={"index": index, "category": category}))
        if odd:
            log.warning("%s: skipped %d image(s) whose name is not an FFHQ index, e.g. %s", root, len(odd), odd[0])
        return sorted(items, key=lambda i: (i.labels["index"], i.path))


def check_sizes(root: Path, items: list[SourceItem], sizes: dict[str, list[int]], variant: str) -> None:
    """Refuse a copy whose images do not have the size the JSON gives (e.g. SMIRK's 256 px images beside
    the 1024 px JSON): the JSON's landmarks would land in the wrong place. Checks up to SIZE_CHECKS images
    (their headers only); unreadable ones are left to the run (rejects)."""
    from PIL import Image, UnidentifiedImageError

    checked = 0
    for item in items:
        want = sizes.get(item.path)
        if want is None or item.kind != "image" or checked >= SIZE_CHECKS:
            continue
        try:
            with Image.open(root / item.path) as image:
                have = list(image.size)
        except (OSError, UnidentifiedImageError):
            continue
        checked += 1
        if have != want:
            raise SizeMismatch(
                f"{root / item.path}: the image is {have[0]}x{have[1]} px but {JSON_NAME} gives "
                f"{VARIANTS[variant][0]}.pixel_size {want[0]}x{want[1]}: its landmarks are for another resolution. "
                f"Move {JSON_NAME} away to prep these images without it (landmarks then come from MediaPipe/FAN), "
                "or pick the matching --images variant")


HELP = """Prep FFHQ (70k aligned Flickr portraits) into face crops with FFHQ's 68 landmarks.

Splits from ffhq-dataset-v2.json's category (training -> train, validation -> val); without
the JSON, by index (0-59999 train). Annotations: the JSON's 68 face_landmarks. Labels: index,
category, licence."""

EXAMPLES = ("fbench prep ffhq --root /data/FFHQ --out shards/ --images thumbnails --limit 1000",
            "fbench prep ffhq --root synth/FFHQ --out shards/ --landmarks annotations   # synthetic data")

def command():
    """`fbench prep ffhq` (built on first use by the registry entry in pipelines/__init__.py)."""
    from fbench.cli.prep import prep_command

    return prep_command(FFHQSource(), HELP, choices=FILTERS, examples=EXAMPLES)
