"""MultiFace benchmark: ScanToMesh error (mean/median/max mm) of a method's FLAME reconstruction.

The protocol of the SMIRK supplementary (Table 2): MultiFace v1, frontal camera 400030,
segment EXP_ROM07_Facial_Expressions, NoW's scan-to-mesh error (see `protocol`). Per frame:
read the scan (the tracked mesh) in the frame `reader.decide_mesh_frame` chose, cut the
frontal image for the method's `CropSpec`, reconstruct (batches), decode with FLAME, align
(landmarks, then point-to-surface ICP with scale), measure every face-region scan vertex's
distance to the predicted surface.

Numbers: per frame mean/median/max; `mean_mm`, `median_mm`, `max_mm` are their averages over
frames (the paper's numbers); `pooled` holds the statistics over all points of all frames;
`per_subject` both, per entity id. `n_items` frames scored, `n_skipped` frames skipped (with
reasons in skipped.csv: listed frames without files, unreadable files, no landmarks).

Default entities (fbench's choice, the paper does not name its 5 subjects): the MultiFace v1
entities in `DEFAULT_ENTITIES`; when none of them is under the root (e.g. a synthetic
dataset), every entity found is used, and the log says so. `--entities` overrides.

Landmarks (for the crop, the coordinate-frame decision, the face region and the alignment's
initialisation): `landmarks="auto"` takes the dataset's ground truth when it has one
(fbench_ground_truth.h5 of `fbench synth multiface`), else runs the detectors (MediaPipe for a
MediaPipe crop spec, FAN for the 68 points). Landmarks never reach the method.

Caches under `<out>/cache/` (per frame: reconstruction, result or skip reason; per entity:
the frame decision and the face region) make a killed run resume where it stopped; a cache
written with a different config or method is discarded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
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
from benchmarks.multiface import protocol, reader
from fbench.flame import FlameParams, load_flame
from fbench.metrics import distance_stats
from fbench.landmarks.crop import crop_for_method
from fbench.plugins import BenchmarkPlugin, ItemRef, Reconstructor
from fbench.report import Table, cumulative_curve, plot_cumulative_error, to_markdown
from fbench.synth.ground_truth import GROUND_TRUTH_FILE, read_ground_truth
from fbench.synth.multiface import FRONTAL_CAMERA, SEGMENT

log = logging.getLogger(__name__)

DEFAULT_ENTITIES = ("6795937", "002643814", "7889059", "2183941", "5372021")  # fbench's choice (see module doc)
# SMIRK supplementary Table 2 (mm): reference rows, never mixed into a result table.
PUBLISHED = [
    {"method": "DECA", "mean_mm": 1.40, "median_mm": 1.12, "max_mm": 6.8},
    {"method": "EMOCA v1", "mean_mm": 1.45, "median_mm": 1.19, "max_mm": 6.83},
    {"method": "EMOCA v2", "mean_mm": 1.43, "median_mm": 1.15, "max_mm": 6.78},
    {"method": "SMIRK", "mean_mm": 1.28, "median_mm": 1.05, "max_mm": 5.98},
]
PUBLISHED_TITLE = "Published: SMIRK supplementary Table 2 (MultiFace v1, 6,324 frames, 5 subjects; reference only)"
CURVE_MM = np.linspace(0.0, 10.0, 201)
PER_ITEM_COLUMNS = ("entity", "frame", "mean_mm", "median_mm", "max_mm", "n_points")


@dataclass
class MultifaceConfig:
    method_name: str = "method"  # the name results are filed under (the CLI passes --method)
    checkpoint: str = ""  # recorded and part of the cache key
    flame: str = ""  # FLAME model directory ("" = fbench's default resolution)
    entities: tuple[str, ...] = DEFAULT_ENTITIES
    segment: str = SEGMENT
    camera: str = FRONTAL_CAMERA
    landmarks: str = "auto"  # auto | ground_truth | detector
    batch_size: int = 8
    max_frames: int = 0  # per entity, 0 = all (else an evenly spaced subset)
    decision_frames: int = 8  # frames used to decide the tracked meshes' coordinate frame
    icp_iterations: int = 50
    icp_points: int = 1000
    worst_renders: int = 3
    max_skip_fraction: float = 0.5


class _Landmarks:
    """2D landmarks of a frame's image: ground truth (synthetic) or detectors."""

    def __init__(self, root: Path, mode: str) -> None:
        self.gt = None
        if mode not in ("auto", "ground_truth", "detector"):
            raise ValueError(f"landmarks must be auto, ground_truth or detector, got {mode!r}")
        if mode != "detector" and (root / GROUND_TRUTH_FILE).is_file():
            gt = read_ground_truth(root)
            self.gt = gt
            self.row = {p: i for i, p in enumerate(gt.paths)}
        elif mode == "ground_truth":
            raise FileNotFoundError(f"landmarks=ground_truth but {root / GROUND_TRUTH_FILE} does not exist")
        self.source = "ground truth" if self.gt is not None else "detectors (FAN; MediaPipe for MediaPipe crops)"
        self._fan = self._mp = None

    def get(self, ref: reader.FrameRef, image: np.ndarray | None, kind: str) -> np.ndarray:
        """(N, 2) pixels: kind "fan" (68 points) or "mediapipe"."""
        if self.gt is not None:
            i = self.row.get(ref.image)
            if i is None:
                raise KeyError("no ground-truth landmarks for this image")
            return self.gt.extras["landmarks68" if kind == "fan" else "landmarks_mp"][i].astype(np.float64)
        if kind == "fan":
            if self._fan is None:
                from fbench.landmarks.fan import FanDetector

                self._fan = FanDetector()
            return np.asarray(self._fan.detect(image), dtype=np.float64)[:, :2]
        if self._mp is None:
            from fbench.landmarks.mediapipe_detector import MediaPipeDetector

            self._mp = MediaPipeDetector()
        return np.asarray(self._mp.detect(image), dtype=np.float64)[:, :2]


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _fingerprint(config: MultifaceConfig, method: Reconstructor) -> str:
    keys = {k: v for k, v in asdict(config).items() if k not in ("worst_renders", "max_skip_fraction", "batch_size")}
    keys["crop"] = repr(method.crop)  # with method_name and checkpoint: which model made the cached numbers
    keys["n_exp"] = int(method.n_exp)
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Cache:
    def __init__(self, out_dir: Path, fingerprint: str) -> None:
        self.dir = out_dir / "cache"
        stamp = self.dir / "fingerprint.txt"
        if self.dir.is_dir() and (not stamp.is_file() or stamp.read_text().strip() != fingerprint):
            log.info("cache in %s is from another config or method: discarding it", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint + "\n")

    def path(self, kind: str, ref: reader.FrameRef, ext: str) -> Path:
        return self.dir / ref.entity / kind / f"{ref.frame:06d}.{ext}"

    def skip(self, ref: reader.FrameRef, reason: str) -> None:
        p = self.path("skipped", ref, "txt")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(reason + "\n")


def _entity_setup(root: Path, entity: reader.Entity, landmarks: _Landmarks, config: MultifaceConfig,
                  cache: _Cache) -> dict[str, Any]:
    """Coordinate-frame decision and face region, once per entity (cached)."""
    path = cache.dir / entity.name / "entity.json"
    if path.is_file():
        data = json.loads(path.read_text())
        data["region"] = np.array(data["region"], dtype=np.int64)
        return data
    picks = np.unique(np.linspace(0, len(entity.frames) - 1, min(config.decision_frames * 2, len(entity.frames))).round().astype(int))
    samples, refs = [], []
    for i in picks:
        ref = entity.frames[i]
        try:
            vertices, pose = reader.load_scan(root, entity, ref)
            image = None if landmarks.gt is not None else _read_image(root / ref.image)
            pixels = landmarks.get(ref, image, "fan")
        except Exception as exc:  # noqa: BLE001 - a bad frame is skipped later with its reason
            log.debug("frame decision: %s %d unusable (%s)", entity.name, ref.frame, exc)
            continue
        samples.append((vertices, pose, pixels))
        refs.append(ref)
        if len(samples) >= config.decision_frames:
            break
    if not samples:
        raise RuntimeError(f"{entity.name}: no readable frame to decide the tracked meshes' coordinate frame")
    reference = samples[0][0]
    decision = reader.decide_mesh_frame(entity.camera, entity.topology.faces, samples, reference)
    log.info("%s: tracked meshes read in the %r frame (%s; scores %s)", entity.name, decision.reading,
             decision.reason, decision.scores)
    # NoW's five mask landmarks, placed on the reference mesh (median over the decision frames).
    faces = entity.topology.faces
    places = []
    for vertices, pose, pixels in samples:
        world = reader.to_world(vertices, pose, decision.reading)
        _, tri, bary = reader.cast_landmarks(entity.camera, world, faces, pixels[protocol.NOW_MASK_LANDMARKS])
        place = np.full((len(tri), 3), np.nan)
        hit = tri >= 0
        place[hit] = np.einsum("nk,nkc->nc", bary[hit], reference[faces[tri[hit]]])
        places.append(place)
    mask_points = np.nanmedian(np.stack(places), axis=0)
    if not np.isfinite(mask_points).all():
        raise RuntimeError(f"{entity.name}: the face-region landmarks (eye corners, nose bottom) never hit the scan")
    region, centre, radius = protocol.face_region(reference, mask_points)
    data = {"reading": decision.reading, "reason": decision.reason, "scores": decision.scores,
            "decision_frames": [r.frame for r in refs], "region": region.tolist(),
            "region_centre_mm": centre.tolist(), "region_radius_mm": radius,
            "region_reference_frame": refs[0].frame, "gaps": dict(entity.gaps)}
    write_json(path, data)
    data["region"] = region
    return data


def _select(frames: list[reader.FrameRef], max_frames: int) -> list[reader.FrameRef]:
    if max_frames <= 0 or len(frames) <= max_frames:
        return frames
    return [frames[i] for i in np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))]


def evaluate(method: Reconstructor, data_root: Path, out_dir: Path, config: MultifaceConfig) -> dict[str, Any]:
    """Score `method` on MultiFace under `data_root`; write the outputs to `out_dir`; return metrics.json's content."""
    root, out_dir = Path(data_root), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MultiFace root {root} does not exist (pass --root or configure the dataset)")
    names = reader.list_entities(root, config.entities)
    if not names and tuple(config.entities) == DEFAULT_ENTITIES:
        names = reader.list_entities(root)
        log.info("none of the default entities is under %s: using every entity found (%d)", root, len(names))
    if not names:
        raise FileNotFoundError(f"no MultiFace entity (m--<date>--<time>--<id>--GHS) under {root} matching {config.entities}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cache = _Cache(out_dir, _fingerprint(config, method))
    landmarks = _Landmarks(root, config.landmarks)
    flame = load_flame(config.flame or None, n_exp=max(int(method.n_exp), 1))
    faces = flame.faces.numpy()
    crop_kind = "fan" if method.crop.landmarks == "fan" else "mediapipe"
    skipped: Counter = Counter()
    skip_rows: list[dict[str, Any]] = []
    gaps: Counter = Counter()
    setups: dict[str, dict[str, Any]] = {}
    entities: dict[str, reader.Entity] = {}
    todo: list[reader.FrameRef] = []
    for name in names:
        try:
            entity = reader.read_entity(root, name, config.segment, config.camera)
            setups[name] = _entity_setup(root, entity, landmarks, config, cache)
        except (OSError, ValueError) as exc:
            log.warning("skipping entity %s: %s", name, exc)
            skipped["entity_unreadable"] += 1
            skip_rows.append({"entity": name, "frame": "", "reason": f"entity_unreadable: {exc}"})
            continue
        entities[name] = entity
        gaps.update(entity.gaps)
        n_gap = entity.gaps["frames_with_missing_files"]
        if n_gap:
            skipped["missing_files"] += n_gap
            skip_rows.append({"entity": name, "frame": "", "reason": f"missing_files: {n_gap} listed frames"})
        todo += _select(entity.frames, config.max_frames)

    this_run: Counter = Counter()  # skip reasons of the frames attempted in this run

    def record_skip(ref: reader.FrameRef, reason: str) -> None:
        log.warning("skipping %s frame %06d: %s", ref.entity, ref.frame, reason)
        cache.skip(ref, reason)
        this_run[reason.split(":")[0]] += 1

    pending = [r for r in todo if not cache.path("result", r, "npz").is_file() and not cache.path("skipped", r, "txt").is_file()]
    if len(pending) < len(todo):
        log.info("resuming: %d of %d frames already done", len(todo) - len(pending), len(todo))
    with tqdm(total=len(pending), desc=f"multiface {config.method_name}", unit="frame") as bar:
        for start in range(0, len(pending), config.batch_size):
            batch = pending[start:start + config.batch_size]
            ready = []
            for ref in batch:  # read everything first: a bad frame never reaches the method
                entity, setup = entities[ref.entity], setups[ref.entity]
                try:
                    vertices, pose = reader.load_scan(root, entity, ref)
                except (OSError, ValueError) as exc:
                    record_skip(ref, f"bad_scan: {exc}")
                    continue
                try:
                    image = _read_image(root / ref.image)
                except (OSError, ValueError, SyntaxError) as exc:
                    record_skip(ref, f"bad_image: {exc}")
                    continue
                try:
                    fan = landmarks.get(ref, image, "fan")
                    crop = crop_for_method(image, landmarks.get(ref, image, crop_kind), method.crop)
                except (KeyError, RuntimeError, ValueError) as exc:
                    record_skip(ref, f"no_landmarks: {exc}")
                    continue
                world = reader.to_world(vertices, pose, setup["reading"])
                ready.append((ref, world, fan, crop[0]))
            if ready:
                params = _reconstruct(method, root, cache, [r[0] for r in ready], [r[3] for r in ready])
                with torch.no_grad():
                    decoded = flame(params)
                for k, (ref, world, fan, _) in enumerate(ready):
                    entity, setup = entities[ref.entity], setups[ref.entity]
                    try:
                        scan_lmk, _, _ = reader.cast_landmarks(entity.camera, world, entity.topology.faces, fan)
                        score = protocol.align_and_measure(
                            world[setup["region"]], scan_lmk, decoded.vertices[k].double().numpy(), faces,
                            decoded.landmarks[k].double().numpy(), icp_iterations=config.icp_iterations,
                            icp_points=config.icp_points)
                    except (ValueError, np.linalg.LinAlgError) as exc:
                        record_skip(ref, f"alignment_failed: {exc}")
                        continue
                    save_npz(cache.path("result", ref, "npz"), distances=score.distances.astype(np.float32),
                             transform=score.transform.matrix(), init_landmarks=score.init_landmarks)
            bar.update(len(batch))
            done = start + len(batch)
            n_bad = sum(this_run.values())
            if done >= 20 and n_bad / done > 0.9:  # almost everything fails: stop now, not after 6,000 frames
                check_failures(done - n_bad, this_run, config.max_skip_fraction, "multiface")
    return _finish(root, out_dir, config, method, cache, todo, entities, setups, skipped, skip_rows, gaps,
                   landmarks.source, time.time() - started)


def _reconstruct(method: Reconstructor, root: Path, cache: _Cache, refs: list[reader.FrameRef],
                 crops: list[np.ndarray]) -> FlameParams:
    """The method's parameters for `refs` (cached per frame)."""
    paths = [cache.path("recon", r, "npz") for r in refs]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        images = torch.from_numpy(np.stack([crops[i] for i in missing])).permute(0, 3, 1, 2).contiguous()
        items = [ItemRef("multiface", refs[i].image, refs[i].frame) for i in missing]
        with torch.no_grad():
            params = method.reconstruct(images, items)
        for j, i in enumerate(missing):
            save_npz(paths[i], **{k: v[j].detach().cpu().numpy() for k, v in params.as_dict().items()})
    rows = []
    for p in paths:
        with np.load(p) as z:
            rows.append({k: z[k] for k in z.files})
    n_shape, n_exp = rows[0]["shape"].shape[-1], rows[0]["expression"].shape[-1]
    return FlameParams.from_dict({k: np.stack([r[k] for r in rows]) for k in rows[0]}, n_shape=n_shape, n_exp=n_exp)


def _finish(root: Path, out_dir: Path, config: MultifaceConfig, method: Reconstructor, cache: _Cache,
            todo: list[reader.FrameRef], entities: dict, setups: dict, skipped: Counter, skip_rows: list,
            gaps: Counter, landmark_source: str, seconds: float) -> dict[str, Any]:
    per_item, distances = [], {}
    for ref in todo:
        result, skip = cache.path("result", ref, "npz"), cache.path("skipped", ref, "txt")
        if result.is_file():
            with np.load(result) as z:
                d = z["distances"].astype(np.float64)
            distances[ref] = d
            s = distance_stats(d)
            per_item.append({"entity": ref.entity, "frame": ref.frame, "mean_mm": s["mean"], "median_mm": s["median"],
                             "max_mm": s["max"], "n_points": s["n"]})
        elif skip.is_file():
            reason = skip.read_text().strip()
            skipped[reason.split(":")[0]] += 1
            skip_rows.append({"entity": ref.entity, "frame": ref.frame, "reason": reason})
    check_failures(len(per_item), skipped, config.max_skip_fraction, "multiface")

    def summary(items: list[dict], ds: list[np.ndarray]) -> dict[str, Any]:
        pooled = distance_stats(ds)
        return {"mean_mm": float(np.mean([r["mean_mm"] for r in items])),
                "median_mm": float(np.mean([r["median_mm"] for r in items])),
                "max_mm": float(np.mean([r["max_mm"] for r in items])), "n_items": len(items),
                "pooled": {"mean_mm": pooled["mean"], "median_mm": pooled["median"], "max_mm": pooled["max"],
                           "n_points": pooled["n"]}}

    overall = summary(per_item, list(distances.values()))
    per_subject = {}
    for name in entities:
        items = [r for r in per_item if r["entity"] == name]
        if items:
            sid = reader.entity_id(name)
            per_subject[sid] = summary(items, [d for ref, d in distances.items() if ref.entity == name])
    synthetic = (root / GROUND_TRUTH_FILE).is_file()
    metrics = {"benchmark": "multiface", "method": config.method_name, "synthetic": synthetic,
               "mean_mm": overall["mean_mm"], "median_mm": overall["median_mm"], "max_mm": overall["max_mm"],
               "n_items": len(per_item), "n_skipped": int(sum(skipped.values())),
               "pooled": overall["pooled"], "per_subject": per_subject,
               "skipped": dict(skipped), "coordinate_frames": {n: s["reading"] for n, s in setups.items()},
               "seconds": round(seconds, 1)}
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "reference.json", {"title": PUBLISHED_TITLE, "rows": PUBLISHED,
                                            "columns": ["mean_mm", "median_mm", "max_mm", "n_items", "n_skipped"]})
    write_csv(out_dir / "per_item.csv", PER_ITEM_COLUMNS, per_item)
    write_csv(out_dir / "skipped.csv", ("entity", "frame", "reason"), skip_rows)
    all_d = np.concatenate(list(distances.values()))
    curve = cumulative_curve(all_d, CURVE_MM)
    write_csv(out_dir / "cumulative.csv", ("error_mm", "fraction"),
              [{"error_mm": float(x), "fraction": float(y)} for x, y in zip(CURVE_MM, curve)])
    write_config(out_dir / "config.yaml", config, data_root=str(root), landmarks_source=landmark_source,
                 crop=asdict(method.crop), entities_used=list(entities),
                 coordinate_frames={n: {k: v for k, v in s.items() if k != "region"} for n, s in setups.items()})
    rows = [{"method": config.method_name, "mean_mm": metrics["mean_mm"], "median_mm": metrics["median_mm"],
             "max_mm": metrics["max_mm"], "n_items": metrics["n_items"], "n_skipped": metrics["n_skipped"]}]
    rows += [{"method": f"  subject {sid}", **{k: v for k, v in s.items() if k != "pooled"}}
             for sid, s in per_subject.items()]
    table = Table(title="MultiFace ScanToMesh error, mm (mean/median/max per frame, averaged over frames)"
                  + (" - synthetic data" if synthetic else ""),
                  columns=["mean_mm", "median_mm", "max_mm", "n_items", "n_skipped"], rows=rows,
                  reference=PUBLISHED, reference_title=PUBLISHED_TITLE,
                  note=("Synthetic data: the published rows below are for orientation only and are not comparable."
                        if synthetic else ""))
    from fbench.io import atomic_write_text

    atomic_write_text(out_dir / "table.md", to_markdown(table, digits=3))
    _plots(root, out_dir, config, per_item, distances, entities, setups)
    return metrics


def _plots(root: Path, out_dir: Path, config: MultifaceConfig, per_item: list[dict], distances: dict,
           entities: dict, setups: dict) -> None:
    plots = out_dir / "plots"
    curves = {}
    for sibling in sorted(out_dir.parent.glob("*/cumulative.csv")):  # every method's results beside this one
        with open(sibling) as f:
            rows = list(csv.DictReader(f))
        curves[sibling.parent.name] = (np.array([float(r["error_mm"]) for r in rows]),
                                       np.array([float(r["fraction"]) for r in rows]))
    plot_cumulative_error(curves, plots / "cumulative_error.png", title="MultiFace scan-to-mesh error")
    worst = sorted(per_item, key=lambda r: -r["mean_mm"])[:config.worst_renders]
    by_key = {(r.entity, r.frame): r for r in distances}
    for row in worst:
        ref = by_key[(row["entity"], row["frame"])]
        try:
            _render_error_map(root, entities[ref.entity], setups[ref.entity], ref, distances[ref],
                              plots / f"worst_{reader.entity_id(ref.entity)}_{ref.frame:06d}.png")
        except (OSError, ValueError) as exc:
            log.warning("could not render the error map of %s %06d: %s", ref.entity, ref.frame, exc)


def _render_error_map(root: Path, entity: reader.Entity, setup: dict, ref: reader.FrameRef, d: np.ndarray,
                      path: Path) -> None:
    """The face region's scan, seen by the benchmark camera over the image, coloured by error (mm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    from fbench.report import save_figure

    vertices, pose = reader.load_scan(root, entity, ref)
    world = reader.to_world(vertices, pose, setup["reading"])
    region = setup["region"]
    local = np.full(len(world), -1)
    local[region] = np.arange(len(region))
    tri = local[entity.topology.faces]
    tri = tri[(tri >= 0).all(1)]
    uv = entity.camera.project(world[region])
    image = _read_image(root / ref.image)
    fig, ax = plt.subplots(figsize=(5, 6))
    ax.imshow(image, alpha=0.5)
    shade = ax.tripcolor(Triangulation(uv[:, 0], uv[:, 1], tri), d, shading="gouraud", cmap="jet",
                         vmin=0, vmax=max(float(np.percentile(d, 99)), 1e-6))
    pad = 0.15 * np.ptp(uv, axis=0)
    ax.set_xlim(uv[:, 0].min() - pad[0], uv[:, 0].max() + pad[0])
    ax.set_ylim(uv[:, 1].max() + pad[1], uv[:, 1].min() - pad[1])
    ax.set_axis_off()
    ax.set_title(f"{reader.entity_id(ref.entity)} frame {ref.frame:06d}: mean {d.mean():.2f} mm")
    fig.colorbar(shade, ax=ax, fraction=0.046, label="scan-to-mesh error (mm)")
    save_figure(fig, path)  # closes the figure


BENCHMARK = BenchmarkPlugin(name="multiface", summary="MultiFace ScanToMesh error (NoW protocol; SMIRK supp. Table 2)",
                            config=MultifaceConfig, evaluate=evaluate, dataset="multiface")
