"""AffectNet benchmark: valence, arousal and emotion class from a frozen method's expression (EMOCA's protocol).

The protocol of EMOCA (Daněček et al., CVPR 2022), used by the SMIRK supplementary (Tables 5, 6):
the method is frozen; its expression parameters and jaw pose per image are the features; an
MLP (`probe`: EMOCA's architecture, losses and training values, cited there) is trained on
AffectNet's training split and evaluated on its validation split (the test split is not public).
Rows with expression 8-10 (None, Uncertain, No-Face) or valence/arousal -2 are dropped, as
EMOCA's `ignore_invalid="like_emonet"` does (inferno/datasets/AffectNetDataModule.py:1042-1056).

Input (`config.input`): "shards" (the output of `fbench prep affectnet`: a dataset folder with
manifest.json, or a folder of .tar files), "raw" (the release's layout, Manually_Annotated_file_lists
CSVs and images) or "auto" (shards when `data_root` has them, else raw). The method's crop is
re-cut from each shard's 448 px crop around the shard's landmarks (MediaPipe for a MediaPipe
crop spec, else FAN, else the dataset's annotations); in the raw layout, around the CSV's 68
annotated landmarks, whatever the spec asks (fbench's choice: no detector run).

Features are cached per method, checkpoint and crop under `<out>/cache/` in chunks, so a killed
run resumes; unreadable rows and images are logged, skipped and counted (`n_skipped`).

Metrics (metrics.json): v_pcc, v_ccc, v_rmse, v_sagr, a_pcc, a_ccc, a_rmse, a_sagr, e_acc,
macro_acc, per_class_acc (class name -> accuracy), n_items (validation rows scored),
n_skipped; CCC with population statistics (fbench.metrics).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks._common import (
    check_failures,
    save_npz,
    write_config,
    write_csv,
    write_json,
)
from benchmarks.affectnet.probe import N_CLASSES, ProbeConfig, train_probe
from fbench import metrics as M
from fbench.landmarks.crop import crop_for_method
from fbench.plugins import BenchmarkPlugin, ItemRef, Reconstructor
from fbench.report import Table, plot_confusion_matrix, to_markdown
from fbench.io import atomic_write_text
from fbench.synth.ground_truth import GROUND_TRUTH_FILE
from pipelines.affectnet import (
    CLASSES,
    CSV_FILES,
    IMAGE_DIRS,
    NOT_ANNOTATED,
    RowError,
    find_file,
    parse_row,
)

log = logging.getLogger(__name__)
EMOTIONS = CLASSES[:N_CLASSES]
CHUNK = 512
PER_ITEM_COLUMNS = ("key", "label_expression", "pred_expression", "label_valence", "pred_valence",
                    "label_arousal", "pred_arousal")
_T6 = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt", "macro")
# SMIRK supplementary Table 5 (emotion-loss weight 1, the released model) and Table 6.
PUBLISHED = [{"method": "SMIRK (emotion loss 1), Table 5", "v_pcc": .72, "v_ccc": .72, "v_rmse": .35, "v_sagr": .79,
              "a_pcc": .64, "a_ccc": .61, "a_rmse": .31, "a_sagr": .79, "e_acc": .64}]
PUBLISHED_T6 = {
    "Deep3D": (.62, .81, .62, .60, .72, .59, .60, .53, .63), "DECA": (.45, .76, .51, .50, .69, .64, .59, .54, .58),
    "FOCUS": (.50, .75, .47, .65, .51, .61, .56, .58, .58), "EMOCA v1": (.50, .79, .69, .67, .69, .76, .70, .66, .68),
    "EMOCA v2": (.52, .77, .58, .66, .66, .73, .73, .68, .67),
    "SMIRK w/o emotion loss": (.55, .72, .54, .65, .58, .62, .58, .70, .62),
    "SMIRK emotion 1": (.56, .79, .60, .64, .57, .70, .61, .59, .64),
    "SMIRK emotion 2": (.44, .74, .59, .65, .61, .59, .66, .69, .62),
    "SMIRK emotion 5": (.60, .77, .63, .64, .58, .66, .59, .70, .65),
    "SMIRK emotion 10": (.47, .75, .56, .67, .64, .62, .63, .74, .64)}
VA_COLUMNS = ["v_pcc", "v_ccc", "v_rmse", "v_sagr", "a_pcc", "a_ccc", "a_rmse", "a_sagr", "e_acc"]
PUBLISHED_TITLE = "Published: SMIRK supplementary Tables 5 and 6 (real AffectNet validation; reference only)"


@dataclass
class AffectNetConfig:
    method_name: str = "method"  # the name results are filed under (the CLI passes --method)
    checkpoint: str = ""  # recorded and part of the feature-cache key
    input: str = "auto"  # auto | shards | raw
    batch_size: int = 32  # images per reconstruct call
    limit: int = 0  # rows per split after filtering (0 = all), for quick looks
    max_skip_fraction: float = 0.5
    # EMOCA's probe (benchmarks/affectnet/probe.py has the sources), e.g. -o probe.patience=20
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class Row:
    key: str
    split: str  # train | val
    source: str  # path relative to the dataset root (ItemRef.source)
    expression: int
    valence: float
    arousal: float
    load: Callable[[str], tuple[np.ndarray, np.ndarray]] | None  # crop kind -> (image, points); None: unreadable row
    error: str = ""


def _valid(expression: int, valence: float, arousal: float) -> bool:
    return expression < N_CLASSES and valence != NOT_ANNOTATED and arousal != NOT_ANNOTATED


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _raw_rows(root: Path) -> Iterator[Row]:
    image_dir = next((d for d in IMAGE_DIRS if (root / d).is_dir()), IMAGE_DIRS[0])
    for split, name in (("train", CSV_FILES["train"]), ("val", CSV_FILES["val"])):
        rel = find_file(root, name)
        if rel is None:
            continue
        reader = csv.DictReader(io.StringIO((root / rel).read_text(encoding="utf-8", errors="replace"), newline=""))
        for i, fields in enumerate(reader):
            key = f"{split}:{i + 2}"  # CSV line number
            try:
                if None in fields or any(v is None for v in fields.values()):
                    raise RowError("malformed row (wrong number of fields)")
                path, points, labels = parse_row(fields, image_dir)
            except (RowError, KeyError, ValueError) as exc:
                yield Row(key, split, "", -1, 0.0, 0.0, None, f"bad_row: {exc}")
                continue

            def load(kind: str, path=path, points=points) -> tuple[np.ndarray, np.ndarray]:
                return _decode((root / path).read_bytes()), np.asarray(points, dtype=np.float64)

            yield Row(path, split, path, labels["expression"], labels["valence"], labels["arousal"], load)


def _shard_rows(location: Path) -> Iterator[Row]:
    from fbench.shards.reader import iter_raw, shard_paths

    for path in shard_paths(location):
        for raw in iter_raw(path):
            try:
                meta = json.loads(raw["json"])
                labels = meta["labels"]
                split = {"val": "val", "validation": "val"}.get(meta["split"], meta["split"])
                expression, valence, arousal = int(labels["expression"]), float(labels["valence"]), float(labels["arousal"])
            except (KeyError, ValueError, TypeError) as exc:
                yield Row(str(raw.get("__key__")), "?", "", -1, 0.0, 0.0, None, f"bad_sample: {exc}")
                continue

            def load(kind: str, raw=raw) -> tuple[np.ndarray, np.ndarray]:
                points = None
                for member in ("mp.npy", "fan.npy", "ann.npy") if kind != "fan" else ("fan.npy", "mp.npy", "ann.npy"):
                    if member in raw:
                        p = np.load(io.BytesIO(raw[member]), allow_pickle=False)[:, :2].astype(np.float64)
                        if np.isfinite(p).all(1).sum() >= 2:
                            points = p
                            break
                if points is None:
                    raise ValueError("no landmarks in the shard sample")
                return _decode(raw["jpg"]), points

            yield Row(meta.get("key", raw["__key__"]), split, meta.get("source_path", ""), expression, valence, arousal,
                      load)


def _shard_location(root: Path) -> Path | None:
    """`root` or `root/affectnet` when it holds prepped shards (manifest.json, or .tar files one or two
    levels down); None otherwise. Never walks the raw image tree."""
    for place in (root, root / "affectnet"):
        if (place / "manifest.json").is_file():
            return place
    if root.suffix == ".tar" or (root.is_dir() and (any(root.glob("*.tar")) or any(root.glob("*/*.tar")))):
        return root
    return None


def _rows(root: Path, mode: str) -> tuple[Iterator[Row], str]:
    shards = _shard_location(root)
    if mode == "shards" or (mode == "auto" and shards is not None):
        return _shard_rows(shards or root), "shards"
    if mode in ("raw", "auto"):
        if not any(find_file(root, n) for n in CSV_FILES.values()):
            raise FileNotFoundError(f"{root}: neither AffectNet shards (manifest.json, *.tar) nor the raw layout "
                                    "(Manually_Annotated_file_lists/training.csv, validation.csv)")
        return _raw_rows(root), "raw"
    raise ValueError(f"input must be auto, shards or raw, got {mode!r}")


def _fingerprint(config: AffectNetConfig, method: Reconstructor, root: Path, input_kind: str) -> str:
    keys = {"method": config.method_name, "checkpoint": config.checkpoint, "crop": repr(method.crop),
            "n_exp": int(method.n_exp), "root": str(root.resolve()), "input": input_kind, "limit": config.limit}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _features(method: Reconstructor, rows: list[Row], dataset: str) -> tuple[np.ndarray, list[str]]:
    """(len(rows), n_exp + 3) expression + jaw (NaN rows for items that failed) and the failure reasons."""
    kind = "fan" if method.crop.landmarks == "fan" else "mediapipe"
    crops, ok, reasons = [], [], [""] * len(rows)
    for i, row in enumerate(rows):
        try:
            image, points = row.load(kind)
            crop = crop_for_method(image, points, method.crop)
        except (OSError, ValueError, SyntaxError) as exc:
            reasons[i] = f"bad_image: {exc}"
            log.warning("skipping %s: %s", row.key, reasons[i])
            continue
        crops.append(crop[0])
        ok.append(i)
    out = np.full((len(rows), int(method.n_exp) + 3), np.nan, dtype=np.float32)
    if ok:
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            params = method.reconstruct(images, [ItemRef(dataset, rows[i].source) for i in ok])
        exp = params.expression.detach().cpu().float().numpy()
        out[ok, :exp.shape[1]] = exp[:, :int(method.n_exp)]
        out[ok, -3:] = params.jaw.detach().cpu().float().numpy()
    return out, reasons


def evaluate(method: Reconstructor, data_root: Path, out_dir: Path, config: AffectNetConfig) -> dict[str, Any]:
    """Extract features (cached), train EMOCA's probe on the training split, score the validation split."""
    root, out_dir = Path(data_root), Path(out_dir)
    if not root.exists():
        raise FileNotFoundError(f"AffectNet root {root} does not exist (pass --root or configure the dataset)")
    started = time.time()
    rows_iter, input_kind = _rows(root, config.input)
    fp = _fingerprint(config, method, root, input_kind)
    cache = out_dir / "cache" / f"features-{fp}"
    cache.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    filtered: Counter = Counter()
    keep: list[Row] = []
    counts = Counter()
    for row in rows_iter:
        if row.load is None:
            skipped[row.error.split(":")[0]] += 1
            log.warning("skipping %s: %s", row.key, row.error)
            continue
        if row.split not in ("train", "val"):
            continue
        if not _valid(row.expression, row.valence, row.arousal):
            filtered[row.split] += 1
            continue
        if config.limit and counts[row.split] >= config.limit:
            continue
        counts[row.split] += 1
        keep.append(row)
    log.info("AffectNet (%s): %d training and %d validation rows; dropped as EMOCA does: %s", input_kind,
             counts["train"], counts["val"], dict(filtered))
    feats, reasons = [], []
    n_chunks = (len(keep) + CHUNK - 1) // CHUNK
    for c in tqdm(range(n_chunks), desc=f"affectnet features {config.method_name}", unit="chunk"):
        part = keep[c * CHUNK:(c + 1) * CHUNK]
        path = cache / f"chunk-{c:05d}.npz"
        if path.is_file():
            with np.load(path) as z:
                if list(z["keys"]) == [r.key for r in part]:
                    feats.append(z["features"])
                    reasons += [str(x) for x in z["reasons"]]
                    continue
        f_all, r_all = [], []
        for b in range(0, len(part), config.batch_size):
            f, r = _features(method, part[b:b + config.batch_size], "affectnet")
            f_all.append(f)
            r_all += r
        f_all = np.concatenate(f_all)
        save_npz(path, keys=np.array([r.key for r in part]), features=f_all, reasons=np.array(r_all))
        feats.append(f_all)
        reasons += r_all
    features = np.concatenate(feats) if feats else np.zeros((0, int(method.n_exp) + 3), np.float32)
    good = np.isfinite(features).all(1)
    for r in reasons:
        if r:
            skipped[r.split(":")[0]] += 1
    split = np.array([r.split for r in keep])
    train, val = good & (split == "train"), good & (split == "val")
    check_failures(int(good.sum()), skipped, config.max_skip_fraction, "affectnet")
    if not val.any() or train.sum() < 4:
        raise RuntimeError(f"affectnet: {int(train.sum())} training and {int(val.sum())} validation rows usable; "
                           "need both splits")
    exp = np.array([r.expression for r in keep])
    va = np.array([[r.valence, r.arousal] for r in keep])
    probe = train_probe(features[train], exp[train], va[train, 0], va[train, 1], config.probe)
    pred_e, pred_v, pred_a = probe.predict(features[val])
    label_e, label_v, label_a = exp[val], va[val, 0], va[val, 1]
    per_class = M.per_class_accuracy(label_e, pred_e, N_CLASSES)
    synthetic = (root / GROUND_TRUTH_FILE).is_file()
    metrics = {"benchmark": "affectnet", "method": config.method_name, "synthetic": synthetic,
               **M.va_metrics("v", label_v, pred_v), **M.va_metrics("a", label_a, pred_a),
               "e_acc": M.accuracy(label_e, pred_e), "macro_acc": M.macro_accuracy(label_e, pred_e, N_CLASSES),
               "n_items": int(val.sum()), "n_skipped": int(sum(skipped.values())),
               "per_class_acc": {name: (None if np.isnan(x) else float(x)) for name, x in zip(EMOTIONS, per_class)},
               "n_train": int(train.sum()), "skipped": dict(skipped), "dropped_invalid_labels": dict(filtered),
               "input": input_kind, "probe_steps": probe.steps, "probe_stopped_early": probe.stopped_early,
               "seconds": round(time.time() - started, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "reference.json", {
        "title": PUBLISHED_TITLE, "columns": VA_COLUMNS + ["macro_acc", "n_items", "n_skipped"],
        "rows": PUBLISHED + [{"method": f"{name} (Table 6)", "macro_acc": vals[-1]} for name, vals in PUBLISHED_T6.items()],
        "per_class_rows": [{"method": name, **dict(zip(_T6, vals))} for name, vals in PUBLISHED_T6.items()]})
    keys = [r.key for r, g in zip(keep, val) if g]
    write_csv(out_dir / "per_item.csv", PER_ITEM_COLUMNS, [
        {"key": k, "label_expression": int(le), "pred_expression": int(pe), "label_valence": float(lv),
         "pred_valence": float(pv), "label_arousal": float(la), "pred_arousal": float(pa)}
        for k, le, pe, lv, pv, la, pa in zip(keys, label_e, pred_e, label_v, pred_v, label_a, pred_a)])
    write_config(out_dir / "config.yaml", config, data_root=str(root), input_kind=input_kind, crop=asdict(method.crop),
                 feature_cache=str(cache))
    plot_confusion_matrix(M.confusion_matrix(label_e, pred_e, N_CLASSES), EMOTIONS, out_dir / "plots" / "confusion_matrix.png",
                          title=f"AffectNet validation: {config.method_name}")
    _tables(out_dir, metrics, synthetic)
    return metrics


def _tables(out_dir: Path, metrics: dict[str, Any], synthetic: bool) -> None:
    note = "Synthetic data: the published rows below are for orientation only and are not comparable." if synthetic else ""
    va_cols = VA_COLUMNS
    t5 = Table("AffectNet valence/arousal and expression (EMOCA protocol)" + (" - synthetic data" if synthetic else ""),
               va_cols + ["n_items", "n_skipped"], rows=[{"method": metrics["method"], **metrics}],
               reference=PUBLISHED, reference_title="Published: SMIRK supplementary Table 5 (reference only)", note=note)
    per = {c: metrics["per_class_acc"].get(name) for c, name in zip(_T6, EMOTIONS)}
    t6 = Table("AffectNet per-class accuracy (format of SMIRK supplementary Table 6)", list(_T6),
               rows=[{"method": metrics["method"], **per, "macro": metrics["macro_acc"]}],
               reference=[{"method": n, **dict(zip(_T6, v))} for n, v in PUBLISHED_T6.items()],
               reference_title="Published: SMIRK supplementary Table 6 (reference only)", note=note)
    atomic_write_text(out_dir / "table.md", to_markdown(t5, digits=2) + "\n" + to_markdown(t6, digits=2))


BENCHMARK = BenchmarkPlugin(name="affectnet", summary="AffectNet valence/arousal/expression from a method's "
                            "expression features (EMOCA protocol; SMIRK supp. Tables 5-6)",
                            config=AffectNetConfig, evaluate=evaluate, dataset="affectnet")
