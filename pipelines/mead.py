"""MEAD prep pipeline: emotional talking-face videos in seven views -> per-frame face crops in shards.

Layout (data_cards/mead.yaml)::

    <root>/<actor>/video/<view>/<emotion>/level_<n>/<clip>.mp4

A few actors of the release have an extra "1" or "2" folder: in place of `video`
(`<actor>/1/<view>/...`), after it (`W021/video/1/<view>/...`) or after the view
(`<actor>/video/<view>/1/<emotion>/...`), the variants inferno's MEAD reader accepts; all are
read, and the extra folder is kept in the item id (`_1_`, or `_v1_` after the view) so a quirk
path cannot clash with the plain one. Other .mp4 files
(not in this layout) are skipped with a warning.

Splits by actor (the release has none; the card's lists): val M013 M023 M042 W018 W028,
test M005 M022 M028 W029 W033, train every other actor, so all views, emotions and levels of
an actor stay in one split.

Labels: actor, view, emotion, level (int), clip, and take (`<actor>_<emotion>_level_<n>_<clip>`,
the same for the seven views of one take). Filters: --views, --emotions, --levels.
Frames are decoded with PyAV, every `--frame-stride`-th kept with its frame index; a frame
with no face keeps its row with NaN landmarks. MEAD has no landmark annotations; with
`--annotations TABLE` per-frame 68 landmarks (e.g. a synthetic root's ground truth) are used.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fbench.shards import SourceItem, SourceOptions, walk_files
from pipelines.common import (Choice, PipelineSource, filter_values, limit_per_split, unlisted_items,
                              video_annotations, with_annotations)

log = logging.getLogger(__name__)

VIEWS = ("front", "down", "top", "left_30", "left_60", "right_30", "right_60")
EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
LEVELS = ("1", "2", "3")
VAL_ACTORS = frozenset({"M013", "M023", "M042", "W018", "W028"})
TEST_ACTORS = frozenset({"M005", "M022", "M028", "W029", "W033"})
ACTOR = re.compile(r"^[MW][0-9]{3}$")
LEVEL = re.compile(r"^level_([123])$")
CLIP = re.compile(r"^([0-9]+)\.mp4$")
QUIRK_FOLDERS = ("1", "2")  # in place of / below "video" for a few actors

FILTERS = (Choice("views", VIEWS, "MEAD camera views to prep."),
           Choice("emotions", EMOTIONS, "Emotions to prep."),
           Choice("levels", LEVELS, "Intensity levels to prep (neutral has level 1 only)."))


def actor_split(actor: str) -> str:
    return "val" if actor in VAL_ACTORS else "test" if actor in TEST_ACTORS else "train"


# What may stand between the actor and the view, and between the view and the emotion: the forms
# inferno's MEAD reader accepts (radekd91/inferno inferno/datasets/MEADDataModule.py: parts[1] in
# video/1/2, and a "1"/"2" folder where the view or the emotion is expected).
BEFORE_VIEW = (("video",), *(("video", q) for q in QUIRK_FOLDERS), *((q,) for q in QUIRK_FOLDERS))
AFTER_VIEW = ((), *((q,) for q in QUIRK_FOLDERS))


def parse_path(rel: str) -> dict[str, str] | None:
    """The fields of a MEAD video path, None when it is not in the layout."""
    parts = rel.split("/")
    if len(parts) < 6 or not ACTOR.match(parts[0]):
        return None
    middle, (emotion, level, clip) = parts[1:-3], parts[-3:]
    at = [k for k, p in enumerate(middle) if p in VIEWS]
    if len(at) != 1:
        return None
    before, view, after = tuple(middle[: at[0]]), middle[at[0]], tuple(middle[at[0] + 1:])
    if before not in BEFORE_VIEW or after not in AFTER_VIEW:
        return None
    m_level, m_clip = LEVEL.match(level), CLIP.match(clip)
    if emotion not in EMOTIONS or not m_level or not m_clip:
        return None
    quirk = [p for p in before if p != "video"] + [f"v{p}" for p in after]  # where the extra folder sat
    return {"actor": parts[0], "view": view, "emotion": emotion, "level": m_level[1], "clip": m_clip[1],
            "quirk": "_".join(quirk)}


class MEADSource(PipelineSource):
    name = "mead"
    splits = ("train", "val", "test")

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        views, emotions, levels = (filter_values(options, c) for c in FILTERS)
        if not any(ACTOR.match(p.name) and p.is_dir() for p in root.iterdir()):
            raise ValueError(f"{root}: no actor folder (M### or W###); --root must be the folder holding them")
        items, odd = [], []
        for rel in walk_files(root, (".mp4",)):
            f = parse_path(rel)
            if f is None:
                odd.append(rel)
                continue
            if (views and f["view"] not in views) or (emotions and f["emotion"] not in emotions) or \
                    (levels and f["level"] not in levels):
                continue
            take = f"{f['actor']}_{f['emotion']}_level_{f['level']}_{f['clip']}"
            quirk = f"_{f['quirk']}" if f["quirk"] else ""
            items.append(SourceItem(
                id=f"{f['actor']}{quirk}_{f['view']}_{f['emotion']}_level_{f['level']}_{f['clip']}",
                split=actor_split(f["actor"]), path=rel, kind="video", subject=f["actor"],
                labels={"actor": f["actor"], "view": f["view"], "emotion": f["emotion"], "level": int(f["level"]),
                        "clip": f["clip"], "take": take}))
        items += unlisted_items(odd, lambda rel: actor_split(rel.split("/")[0]),
                                "<actor>/video/<view>/<emotion>/level_<n>/<clip>.mp4")
        order = {s: i for i, s in enumerate(self.splits)}
        items.sort(key=lambda i: (order[i.split], i.path))
        items = limit_per_split(items, options)
        tracks = video_annotations(options, items)
        return [with_annotations(item, tracks) for item in items]


HELP = """Prep MEAD (emotional talking faces, seven camera views) into per-frame face crops.

Splits by actor: val M013 M023 M042 W018 W028, test M005 M022 M028 W029 W033, train the rest.
Labels: actor, view, emotion, level, clip, take. Every --frame-stride-th frame is kept with its
frame index; frames without a face keep their row (NaN landmarks)."""

EXAMPLES = ("fbench prep mead --root /data/MEAD --out shards/ --views front --frame-stride 3 --levels 2,3",
            "fbench prep mead --root synth/MEAD --out shards/ --landmarks annotations "
            "--annotations synth/MEAD/fbench_ground_truth.h5")

def command():
    """`fbench prep mead` (built on first use by the registry entry in pipelines/__init__.py)."""
    from fbench.cli.prep import prep_command

    return prep_command(MEADSource(), HELP, choices=FILTERS, annotation_table=True, examples=EXAMPLES)
