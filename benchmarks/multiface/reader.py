"""MultiFace's real layout (data_cards/multiface.yaml): entities, frames, scans, and which frame the scans are in.

Gaps are counted, never fatal: cameras in KRT without an image folder, listed frames whose
image, tracked mesh or head pose is missing. A frame whose files exist but cannot be read
(truncated .bin, NaN vertices, bad PNG) fails later, in `load_scan`/`load_image`, and the
benchmark skips and counts it.

Coordinate frame of the tracked meshes: public sources disagree (the release's loader
applies `<frame>_transform.txt`, world = R_f v + t_f; a user report says the raw vertices
project onto the images with the extrinsics alone). `decide_mesh_frame` decides from the
data: it casts the rays of the image's 2D landmarks onto the scan under both readings, and
keeps the reading under which each landmark hits the same place of the tracked topology in
every frame (the tracked topology follows the skin, and so do landmarks); the wrong reading
moves the hits with the head. A reading "lands on the face" when most rays hit the scan and
the hits are consistent; when neither does, it raises.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fbench.geometry import (
    Mesh,
    read_mesh,
    read_multiface_bin,
    read_multiface_transform,
)
from fbench.synth.multiface import FRONTAL_CAMERA, SEGMENT, KrtCamera, Layout, parse_krt

log = logging.getLogger(__name__)

ENTITY_RE = re.compile(r"^m--[0-9]{8}--[0-9]{4}--([0-9]+)--GHS$")
READINGS = ("head", "world")
# FAN-68 indices whose skin position does not move with the expression (nose bridge and
# nostrils 27-35, eye corners 36/39/42/45): the ones the frame decision compares across frames.
RIGID_LANDMARKS = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
# A ray through a gap of the scan (an eye opening of a mesh without eyeballs, an open mouth)
# hits the inside of the head far behind the face: hits deeper than the median hit by more
# than this count as misses.
MAX_DEPTH_GAP_MM = 50.0
SNAP_MM = 3.0  # a missed ray takes the scan vertex nearest to it when within this distance
MIN_HIT_FRACTION = 0.6  # a reading "lands on the face" when this share of rigid-landmark rays hit the scan (eye corners may see through a mesh without eyeballs)
MAX_SPREAD_MM = 8.0  # ... and their hits stay within this RMS distance of their mean place on the topology
TIE_MM = 1.0  # spreads closer than this: the two readings agree (no head motion); the release's "head" is kept


@dataclass(frozen=True)
class FrameRef:
    entity: str
    segment: str
    frame: int
    camera: str

    @property
    def layout(self) -> Layout:
        return Layout(self.entity, self.segment)

    @property
    def image(self) -> str:
        return self.layout.image(self.camera, self.frame)

    @property
    def mesh(self) -> str:
        return self.layout.mesh(self.frame, "bin")

    @property
    def transform(self) -> str:
        return self.layout.transform(self.frame)

    @property
    def subject(self) -> str:
        return ENTITY_RE.match(self.entity).group(1)


@dataclass
class Entity:
    name: str
    camera: KrtCamera
    frames: list[FrameRef]
    topology: Mesh  # faces (and the first OBJ's vertices) of the entity's tracked meshes
    gaps: Counter = field(default_factory=Counter)


def entity_id(name: str) -> str | None:
    m = ENTITY_RE.match(name)
    return m.group(1) if m else None


def list_entities(root: Path, wanted: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Entity folders under `root`; `wanted` filters by full name or id (e.g. 6795937)."""
    found = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and ENTITY_RE.match(p.name))
    if not wanted:
        return found
    keep = [e for e in found if e in wanted or entity_id(e) in wanted]
    missing = [w for w in wanted if not any(w in (e, entity_id(e)) for e in found)]
    if missing:
        log.warning("entities not found under %s: %s", root, ", ".join(missing))
    return keep


def read_entity(root: Path, name: str, segment: str = SEGMENT, camera: str = FRONTAL_CAMERA) -> Entity:
    """KRT, the segment's listed frames that have image, mesh and head pose, and the topology.

    Raises FileNotFoundError/ValueError when the entity cannot be used at all (no KRT entry
    for the camera, no frame list, no readable OBJ); frame-level gaps are counted in `gaps`.
    """
    root = Path(root)
    layout = Layout(name, segment)
    cameras = parse_krt((root / layout.krt).read_text())
    if camera not in cameras:
        raise ValueError(f"{name}: camera {camera} not in KRT (has {', '.join(sorted(cameras))})")
    gaps: Counter = Counter()
    image_root = root / name / "images" / segment
    gaps["cameras_without_images"] = sum(1 for c in cameras if not (image_root / c).is_dir())
    frames: list[FrameRef] = []
    for line in (root / layout.frame_list).read_text().splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != segment:
            continue
        try:
            ref = FrameRef(name, segment, int(parts[1]), camera)
        except ValueError:
            gaps["bad_frame_list_lines"] += 1
            continue
        gaps["listed"] += 1
        missing = [kind for kind, rel in (("image", ref.image), ("mesh", ref.mesh), ("transform", ref.transform))
                   if not (root / rel).is_file()]
        for kind in missing:
            gaps[f"missing_{kind}"] += 1
        if missing:
            gaps["frames_with_missing_files"] += 1
            continue
        frames.append(ref)
    topology = None
    for ref in frames:  # the first readable OBJ gives the faces (one topology per entity)
        try:
            topology = read_mesh(root / ref.layout.mesh(ref.frame, "obj"), units="mm")
            break
        except (OSError, ValueError):
            continue
    if topology is None:
        raise FileNotFoundError(f"{name}: no readable tracked-mesh OBJ for the topology in {segment}")
    return Entity(name, cameras[camera], frames, topology, gaps)


def load_scan(root: Path, entity: Entity, ref: FrameRef) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 tracked-mesh vertices as stored (mm) and the (3, 4) head pose; raises on bad files."""
    mesh = read_multiface_bin(Path(root) / ref.mesh, topology=entity.topology)
    return mesh.vertices, read_multiface_transform(Path(root) / ref.transform)


def to_world(vertices: np.ndarray, head_pose: np.ndarray, reading: str) -> np.ndarray:
    """World coordinates of stored vertices under a reading: "head" (world = R_f v + t_f) or "world" (as stored)."""
    if reading == "head":
        return vertices @ head_pose[:, :3].T + head_pose[:, 3]
    if reading == "world":
        return np.asarray(vertices, dtype=np.float64)
    raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")


def cast_landmarks(camera: KrtCamera, world: np.ndarray, faces: np.ndarray, pixels: np.ndarray,
                   max_depth_gap: float = MAX_DEPTH_GAP_MM,
                   snap_mm: float = SNAP_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast the camera rays through `pixels` (N, 2; NaN rows allowed) onto the mesh (first hit).

    A hit deeper than the median hit by more than `max_depth_gap` (mm) does not count (the
    ray went through a hole of the scan); such a ray, or one that misses, snaps to the scan
    vertex nearest to it (within `snap_mm` of the ray, no deeper than the gap allows): an eye
    corner seen through a mesh without eyeballs lands on the eyelid's corner vertex.

    Returns (N, 3) world hit points (NaN for a miss), (N,) triangle ids (-1 for a miss) and
    (N, 3) barycentric weights of the hit in its triangle.
    """
    import open3d as o3d

    centre = -camera.R.T @ camera.t
    px = np.asarray(pixels, dtype=np.float64)
    ok = np.isfinite(px).all(1)
    dirs = np.c_[np.where(ok[:, None], px, 0.0), np.ones(len(px))] @ np.linalg.inv(camera.K).T @ camera.R
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor((world - centre).astype(np.float32)),
                        o3d.core.Tensor(np.asarray(faces, dtype=np.uint32)))
    rays = np.c_[np.zeros_like(dirs), dirs].astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = ans["t_hit"].numpy().astype(np.float64)
    tri = ans["primitive_ids"].numpy().astype(np.int64)
    uv = ans["primitive_uvs"].numpy().astype(np.float64)
    hit = ok & np.isfinite(t_hit)
    if not hit.any():
        return np.full((len(px), 3), np.nan), np.full(len(px), -1), np.full((len(px), 3), np.nan)
    depth_max = np.median(t_hit[hit]) + max_depth_gap
    hit &= t_hit <= depth_max
    points = np.where(hit[:, None], centre + t_hit[:, None] * dirs, np.nan)
    bary = np.c_[1 - uv.sum(1), uv]
    todo = np.flatnonzero(ok & ~hit)
    if todo.size:
        rel = world - centre
        along = rel @ dirs[todo].T  # (V, n) distance along each ray
        perp = np.sqrt(np.maximum((rel ** 2).sum(1)[:, None] - along ** 2, 0.0))
        perp[(along <= 0) | (along > depth_max)] = np.inf
        nearest = perp.argmin(0)
        snapped = perp[nearest, np.arange(todo.size)] <= snap_mm
        corner_face, corner = _vertex_faces(faces, len(world))
        for j, v in zip(todo[snapped], nearest[snapped]):
            hit[j], tri[j], bary[j], points[j] = True, corner_face[v], np.eye(3)[corner[v]], world[v]
    tri = np.where(hit, tri, -1)
    return points, tri, np.where(hit[:, None], bary, np.nan)


def _vertex_faces(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """For each vertex one triangle that uses it and the corner (0-2) it occupies there."""
    faces = np.asarray(faces)
    face = np.full(n_vertices, -1, np.int64)
    corner = np.zeros(n_vertices, np.int64)
    for k in range(3):
        face[faces[:, k]] = np.arange(len(faces))
        corner[faces[:, k]] = k
    return face, corner


@dataclass
class FrameDecision:
    reading: str
    scores: dict[str, dict[str, float]]  # reading -> hit_fraction, spread_mm
    frames_used: int
    reason: str


def decide_mesh_frame(camera: KrtCamera, faces: np.ndarray, samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      reference: np.ndarray) -> FrameDecision:
    """Pick "head" or "world" from frames `samples` = [(stored vertices, head pose, 68 landmark pixels)].

    For each reading, the rigid landmarks' rays are cast onto the scan; each hit is mapped to
    the same barycentric place on `reference` (one stored mesh of the entity), so hits of a
    landmark from different frames are comparable whatever frame the files use. Score: the
    share of rays that hit, and the RMS spread of each landmark's hits across frames (mm).
    """
    faces = np.asarray(faces)
    scores: dict[str, dict[str, float]] = {}
    for reading in READINGS:
        places = []
        hits = total = 0
        for vertices, pose, pixels in samples:
            _, tri, bary = cast_landmarks(camera, to_world(vertices, pose, reading), faces, pixels[RIGID_LANDMARKS])
            hit = tri >= 0
            hits += int(hit.sum())
            total += len(tri)
            place = np.full((len(tri), 3), np.nan)
            place[hit] = np.einsum("nk,nkc->nc", bary[hit], reference[faces[tri[hit]]])
            places.append(place)
        stack = np.stack(places)  # (frames, landmarks, 3)
        counted = np.isfinite(stack).all(2).sum(0) >= 2
        if len(samples) >= 2 and counted.any():
            dev = stack[:, counted] - np.nanmean(stack[:, counted], axis=0)
            spread = float(np.sqrt(np.nanmean((dev ** 2).sum(2))))
        else:
            spread = float("nan")
        scores[reading] = {"hit_fraction": hits / max(total, 1), "spread_mm": spread}

    def on_face(r: str) -> bool:
        s = scores[r]
        return s["hit_fraction"] >= MIN_HIT_FRACTION and (np.isnan(s["spread_mm"]) or s["spread_mm"] <= MAX_SPREAD_MM)

    good = [r for r in READINGS if on_face(r)]
    if not good:
        raise RuntimeError(
            "MultiFace coordinate frame: neither reading of the tracked meshes lands on the face in the images "
            f"({scores}; need hit fraction >= {MIN_HIT_FRACTION} and landmark spread <= {MAX_SPREAD_MM} mm). "
            "Check the KRT, the camera and the landmarks.")
    if len(good) == 1:
        return FrameDecision(good[0], scores, len(samples), f"only the {good[0]!r} reading lands on the face")
    h, w = scores["head"]["spread_mm"], scores["world"]["spread_mm"]
    if np.isnan(h) or np.isnan(w) or abs(h - w) < TIE_MM:
        return FrameDecision("head", scores, len(samples),
                             "both readings land on the face alike (no head motion to tell them apart); "
                             "keeping the release loader's head frame")
    best = "head" if h < w else "world"
    return FrameDecision(best, scores, len(samples), f"the {best!r} reading keeps landmarks in place across frames")
