"""The per-frame MultiFace protocol: crop for the method, face region, alignment, scan-to-mesh distance.

NoW's ScanToMesh protocol (Sanyal et al. 2019; soubhiksanyal/now_evaluation,
scan2mesh_computations.py), adapted to MultiFace's tracked meshes:

- Face region (`face_region`): NoW's mask (compute_mask, lines 56-72): centre = nose bottom +
  0.3 (nose bridge - nose bottom), nose bridge = the inner eye corners' midpoint; radius =
  1.4 x (outer-eye-corner distance + nose length) / 2; crop_face_scan keeps the scan vertices
  within the radius (lines 84-88). NoW annotates 7 scan landmarks by hand; MultiFace has none,
  so fbench takes NoW's five (eye corners, nose bottom: FAN-68 points 36, 39, 42, 45, 33) by
  casting the image landmarks' rays onto the scan, and fixes the region ONCE per entity (the
  median landmark places over the frame-decision frames, on one reference mesh of the
  entity's topology): the same vertex set for every frame and every method (fbench's choice).
- Alignment (`align_and_measure`): NoW's compute_rigid_alignment (lines 112-144): a similarity
  with scale from landmarks (procrustes of the predicted mesh's landmarks to the scan's, line
  126), then a scan-to-mesh refinement with scale (rigid_scan_2_mesh_alignment, lines 23-36:
  scale s, rotation, translation minimising the distance of the scan vertices to the
  transformed predicted surface). fbench uses FLAME's 51 static landmarks (FAN 17-67; the
  contour 0-16 is view-dependent) against their rays' hits on the scan, then
  `fbench.geometry.icp` (point-to-surface, with scale) of the region's scan vertices onto the
  predicted surface; the predicted mesh is moved onto the scan (the inverse), as NoW does.
- Distance: `fbench.geometry.point_mesh_distance` of every region vertex of the scan to the
  aligned predicted surface, in mm (NoW's ScanToMesh, scan vertices sampled, line 169-170).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fbench.geometry import Similarity, icp, point_mesh_distance, umeyama

NOW_MASK_LANDMARKS = np.array([36, 39, 42, 45, 33])  # NoW's points 0-4 (landmarks_7_annotated.png) in FAN-68
STATIC_LANDMARKS = np.arange(17, 68)  # FLAME's static landmarks (FlameOutput.landmarks[:, 17:])
MIN_INIT_LANDMARKS = 6
ICP_ATOL_MM = 1e-4  # ICP stops once the mean scan-to-surface distance is below this (an exact fit)


def face_region(reference: np.ndarray, mask_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """NoW's mask on `reference` (V, 3) from the 5 points (eye corners 36/39/42/45, nose bottom 33).

    Returns (vertex ids inside, centre, radius)."""
    outer_r, inner_r, inner_l, outer_l, nose_bottom = np.asarray(mask_points, dtype=np.float64)
    bridge = (inner_r + inner_l) / 2
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = 1.4 * (np.linalg.norm(outer_r - outer_l) + np.linalg.norm(bridge - nose_bottom)) / 2
    ids = np.flatnonzero(np.linalg.norm(reference - centre, axis=1) <= radius)
    return ids, centre, float(radius)


@dataclass
class FrameScore:
    distances: np.ndarray  # (n_points,) mm, scan region vertex -> aligned predicted surface
    transform: Similarity  # predicted (FLAME metres) -> scan (mm)
    init_landmarks: int
    icp_iterations: int


def align_and_measure(scan_points: np.ndarray, scan_landmarks: np.ndarray, pred_vertices: np.ndarray,
                      pred_faces: np.ndarray, pred_landmarks: np.ndarray, *, icp_iterations: int = 50,
                      icp_points: int = 1000, seed: int = 0) -> FrameScore:
    """Align the predicted mesh to the scan (landmarks, then point-to-surface ICP with scale) and measure.

    scan_landmarks / pred_landmarks: (68, 3) in FAN order (scan rows NaN where the ray missed).
    ICP runs on at most `icp_points` region vertices (a fixed random subset; NoW's alignment
    uses all scan vertices: fbench's speed choice); the distance uses all of them.
    """
    rows = STATIC_LANDMARKS[np.isfinite(scan_landmarks[STATIC_LANDMARKS]).all(1)]
    if len(rows) < MIN_INIT_LANDMARKS:
        raise ValueError(f"only {len(rows)} landmarks hit the scan (need {MIN_INIT_LANDMARKS})")
    init = umeyama(scan_landmarks[rows], pred_landmarks[rows])  # scan (mm) -> prediction (m)
    pts = scan_points
    if len(pts) > icp_points:
        pts = pts[np.sort(np.random.default_rng(seed).choice(len(pts), icp_points, replace=False))]
    # Stop when the mean distance changes by < 1e-4 relative, or is below ICP_ATOL_MM (in the
    # prediction's units: the init's scale converts mm): an exact fit need not crawl further.
    res = icp(pts, pred_vertices, pred_faces, init=init, with_scale=True, max_iterations=icp_iterations,
              tol=1e-4, atol=ICP_ATOL_MM * init.scale)
    to_scan = res.transform.inverse()
    aligned = to_scan.apply(pred_vertices)
    d = point_mesh_distance(scan_points, aligned, pred_faces).distances
    return FrameScore(d, to_scan, len(rows), res.iterations)
