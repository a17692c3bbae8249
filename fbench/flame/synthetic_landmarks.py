"""Landmark embeddings of the synthetic FLAME-format head.

Every landmark is a (triangle, barycentric) pair on the template, found from a
semantic position in one of four ways, all exact on the mesh:

- `front`: the frontmost skin point under an (x, y) position (brows, nose);
- `edge`: a point at an arc-length fraction along a polyline of mesh vertices
  (lid margins, the two sides of the mouth slit, the midline profile), embedded
  in the triangle on the requested side of that edge (skin, never the eyeball;
  upper-lip landmarks in upper-lip triangles, lower-lip ones in lower-lip ones);
- `param`: a point given in the skin grid's (theta, phi) parametrisation (the
  vermilion border, which the lip relief is defined in);
- silhouettes: the 17 contour points are where the jaw/cheek outline of the
  head is seen from a camera on +z, for the frontal head and for each of the 79
  yaw bins of DECA/SMIRK's dynamic contour (bin b: yaw b degrees for b <= 39,
  39 - b for b >= 40, yaw as returned by `rot_mat_to_euler`, i.e. a rotation
  about +y that turns the face towards the subject's left).

The 68 points follow iBUG-68; the 105 MediaPipe points are placed by walking
MediaPipe's own connection sets (FACEMESH_*) into ordered loops and polylines,
orienting them with a few anchor indices (`MP_ANCHORS`), and mapping each
point's index fraction along its loop onto the synthetic curve of the same
feature (lid margins, vermilion border, slit, brow edges, nose outline).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from fbench.flame.synthetic_geometry import EYE_CENTRE, HeadGeometry, lip_heights, neck_field, nose_field

# SMIRK's 105 MediaPipe landmarks (assets/mediapipe_landmark_embedding), in their order.
SMIRK_MEDIAPIPE_INDICES = (
    276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 249, 263, 362, 373,
    374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466, 7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159,
    160, 161, 163, 173, 246, 168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358, 0, 13, 14, 17, 37, 39, 40, 61,
    78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317,
    318, 321, 324, 375, 402, 405, 409, 415)

# Facts about MediaPipe's face mesh used to orient its connection loops ("right" = subject's right).
MP_ANCHORS = {
    "right_eye": {"outer": 33, "inner": 133, "upper": 159, "lower": 145},
    "left_eye": {"outer": 263, "inner": 362, "upper": 386, "lower": 374},
    "lips_outer": {"right": 61, "left": 291, "upper": 0, "lower": 17},
    "lips_inner": {"right": 78, "left": 308, "upper": 13, "lower": 14},
    # The eyebrow set is two polylines (upper and lower edge); these are their outer ends.
    "right_brow": {"upper_outer": 70, "lower_outer": 46},
    "left_brow": {"upper_outer": 300, "lower_outer": 276},
    # Nose: 168 between the eyes down the bridge to the tip 1 and under it to 2; the side chains
    # from 2 back up to 4 go round the nostril wings 98 (right) and 327 (left).
    "nose": {"top": 168, "tip": 1, "above_tip": 4, "subnasale": 2, "right_wing": 98, "left_wing": 327},
}
# Not in FACEMESH_NOSE: the outer point of each nostril wing, on the alar-cheek groove.
MP_ALAR_OUTER = {"right": 129, "left": 358}

CONTOUR_CENTRE = np.array([0.0, -0.012, 0.03])  # the contour directions radiate from here (image plane)
CONTOUR_HALF_ANGLE_DEG = 112.0  # point 0/16 direction from straight down
YAW_BINS = 79
ALA_CENTRE = np.array([0.0115, -0.009])  # front-view outline of the nostril wing (ellipse)
ALA_RADII = np.array([0.0078, 0.0072])


def yaw_of_bin(b: int) -> int:
    """DECA/SMIRK's dynamic-contour bin layout."""
    return b if b <= 39 else 39 - b


@dataclass
class Embedding:
    faces: np.ndarray  # (L,) int64
    bary: np.ndarray  # (L,3) float64, non-negative, rows sum to 1

    def points(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return np.einsum("lk,lkd->ld", self.bary, vertices[faces[self.faces]])


class Embedder:
    """Turns semantic positions into (triangle, barycentric) pairs on the template."""

    def __init__(self, g: HeadGeometry) -> None:
        self.g = g
        self.v = g.vertices
        self.f = g.faces
        skin = g.face_triangle_kind == 0
        tri = self.v[self.f]
        normal_z = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
        self.front_faces = np.nonzero(skin & (normal_z > 0))[0]

    # -- kinds of semantic positions

    def front(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frontmost skin point under each (x, y) (orthographic view from +z)."""
        return self._locate_2d(np.atleast_2d(xy), self.v[self.f[self.front_faces]][:, :, :2], self.front_faces,
                               depth=self.v[self.f[self.front_faces]][:, :, 2])

    def param(self, theta_phi: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points given in the grid's (theta, phi) parametrisation, inside the allowed triangles."""
        tp = np.stack([self.g.phi, self.g.theta], axis=1)[self.f[allowed]]
        q = np.atleast_2d(theta_phi)[:, ::-1]
        return self._locate_2d(q, tp, allowed, depth=None)

    def edge(self, a: int, b: int, t: float, side: set[int] | None = None) -> tuple[int, np.ndarray]:
        """Point (1-t) a + t b on the mesh edge a-b, in the triangle containing it (on `side` if given)."""
        cands = np.nonzero((self.f == a).any(axis=1) & (self.f == b).any(axis=1))[0].tolist()
        if side is not None:
            cands = [fi for fi in cands if fi in side]
        if not cands:
            raise ValueError(f"no triangle on the requested side of edge {a}-{b}")
        fi = min(cands)
        bary = np.zeros(3)
        tri = list(self.f[fi])
        bary[tri.index(a)] += 1.0 - t
        bary[tri.index(b)] += t
        return fi, bary

    def polyline(self, ids: np.ndarray, fractions: np.ndarray, side: set[int] | None = None) -> Embedding:
        """Points at arc-length fractions along a polyline of vertices."""
        p = self.v[ids]
        seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
        faces, barys = [], []
        for frac in np.atleast_1d(fractions):
            k = int(np.clip(np.searchsorted(cum, frac, side="right") - 1, 0, len(seg) - 1))
            t = float(np.clip((frac - cum[k]) / max(cum[k + 1] - cum[k], 1e-15), 0.0, 1.0))
            fi, bary = self.edge(int(ids[k]), int(ids[k + 1]), t, side)
            faces.append(fi)
            barys.append(bary)
        return Embedding(np.array(faces, np.int64), np.array(barys))

    @staticmethod
    def _locate_2d(q: np.ndarray, tri: np.ndarray, face_ids: np.ndarray,
                   depth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        v0, v1 = b - a, c - a
        den = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
        ok = np.abs(den) > 1e-18
        out_f, out_b = [], []
        for point in q:
            w = point - a
            l1 = np.where(ok, (w[:, 0] * v1[:, 1] - w[:, 1] * v1[:, 0]) / np.where(ok, den, 1.0), -1.0)
            l2 = np.where(ok, (v0[:, 0] * w[:, 1] - v0[:, 1] * w[:, 0]) / np.where(ok, den, 1.0), -1.0)
            l0 = 1.0 - l1 - l2
            inside = ok & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
            hits = np.nonzero(inside)[0]
            if len(hits) == 0:
                raise ValueError(f"no triangle under {point}")
            if depth is not None:  # frontmost hit
                z = l0[hits] * depth[hits, 0] + l1[hits] * depth[hits, 1] + l2[hits] * depth[hits, 2]
                k = hits[np.argmax(z)]
            else:
                k = hits[0]
            bary = np.clip(np.array([l0[k], l1[k], l2[k]]), 0.0, None)
            out_f.append(face_ids[k])
            out_b.append(bary / bary.sum())
        return np.array(out_f, np.int64), np.array(out_b)


# --- semantic curves of the synthetic face

def brow_curve(u: np.ndarray, side: float, offset: float = 0.0) -> np.ndarray:
    """Eyebrow in the front view, u=0 inner end .. 1 outer end; offset in half-thicknesses (+ up)."""
    u = np.asarray(u, dtype=float)
    x = 0.0135 + 0.0385 * u
    y = 0.0545 + 0.01833 * u - 0.01528 * u ** 2  # arch peaking 60% of the way out
    half = 0.0045 - 0.002 * u
    return np.stack([side * x, y + offset * half], axis=-1)


def lid_margin(g: HeadGeometry, eye: str, upper: bool) -> np.ndarray:
    """Vertex ids along a lid margin from the outer corner to the inner corner."""
    slit = g.left_eye if eye == "left" else g.right_eye
    corners = g.grid[slit.row, list(slit.corners)]
    inner_ids = slit.upper if upper else slit.lower
    ids = np.concatenate([[corners[0]], inner_ids, [corners[1]]])  # from -x to +x
    return ids[::-1] if eye == "left" else ids  # left eye: outer corner is at +x


def mouth_slit(g: HeadGeometry, upper: bool) -> np.ndarray:
    """Vertex ids along one side of the mouth slit from the right corner to the left corner."""
    corners = g.grid[g.mouth.row, list(g.mouth.corners)]
    return np.concatenate([[corners[0]], g.mouth.upper if upper else g.mouth.lower, [corners[1]]])


def vermilion_theta_phi(g: HeadGeometry, u: np.ndarray, upper: bool) -> np.ndarray:
    """Outer lip boundary at mouth coordinate u in [-1, 1]; meets the mouth corner at |u| = 1."""
    u = np.asarray(u, dtype=float)
    up_h, lo_h = lip_heights(u)
    reach = np.sqrt(np.clip(1.0 - np.abs(u) ** 3, 0.0, 1.0))
    theta = g.theta_mouth - up_h * reach if upper else g.theta_mouth + lo_h * reach
    return np.stack([theta, u * g.phi_mouth_corner], axis=-1)


def nose_profile(g: HeadGeometry) -> dict[str, int | np.ndarray]:
    """Midline column from the nasion to the upper lip: the tip and subnasale vertices."""
    col0 = [g.grid[i, 0] for i in range(1, g.grid.shape[0]) if np.isfinite(g.row_theta[i])]
    col0 = np.array(col0)
    p = g.vertices[col0]
    in_nose = (p[:, 1] > -0.03) & (p[:, 1] < 0.03)
    tip_k = int(np.nonzero(in_nose)[0][np.argmax(p[in_nose, 2])])
    # Subnasale: the first vertex below the tip that is no longer on the nose.
    off_nose = np.nonzero(nose_field(p[tip_k:]) > 0.002)[0]
    sn_k = tip_k + int(off_nose[0])
    return {"column": col0, "tip": int(col0[tip_k]), "subnasale": int(col0[sn_k]), "tip_k": tip_k, "sn_k": sn_k}


# --- contour silhouettes

def _rot_y(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def contour_faces(g: HeadGeometry, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Skin triangles that can form the lower face outline: the face below the eyes, in front of the
    neck, without the nose, lips and eye regions, and without the underside of chin and jaw (the
    outline is where the jaw turns from facing forward or sideways to facing down)."""
    v = g.vertices
    ok = np.zeros(len(v), bool)
    ok[masks["face"]] = True
    for name in ("nose", "lips", "left_eye_region", "right_eye_region"):
        ok[masks[name]] = False
    ok &= neck_field(v) > 0.004  # the jaw, not the throat under it
    ok &= v[:, 1] < EYE_CENTRE[1] - 0.012
    tri = v[g.faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing_down = normal[:, 1] < -0.9 * np.linalg.norm(normal, axis=1)
    return np.nonzero(ok[g.faces].all(axis=1) & (g.face_triangle_kind == 0) & ~facing_down)[0]


def _slice_extremes(p2: np.ndarray, faces: np.ndarray, cand: np.ndarray, centre: np.ndarray,
                    alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each direction, the outline point: the farthest point along d of the mesh cut by the plane
    through `centre` spanned by d and the view axis. Returns 2D points, faces, barycentrics."""
    tri = faces[cand]
    corners = p2[tri] - centre  # (T,3,2)
    d = np.stack([np.sin(alphas), -np.cos(alphas)], axis=1)  # (A,2) direction in the image
    n = np.stack([np.cos(alphas), np.sin(alphas)], axis=1)  # (A,2) normal of the cutting plane
    flat = corners.reshape(-1, 2)
    s = (n @ flat.T).reshape(len(alphas), -1, 3)  # (A,T,3) signed distances to the plane
    along = (d @ flat.T).reshape(len(alphas), -1, 3)  # (A,T,3) reach along d
    best_reach = np.full(len(alphas), -np.inf)
    best_tri = np.zeros(len(alphas), np.int64)
    best_bary = np.zeros((len(alphas), 3))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        si, sj = s[:, :, i], s[:, :, j]
        cross = (si * sj < 0) | ((si == 0) & (sj != 0))
        t = np.where(cross, si / np.where(cross, si - sj, 1.0), 0.0)
        reach = np.where(cross, along[:, :, i] + t * (along[:, :, j] - along[:, :, i]), -np.inf)
        k = np.argmax(reach, axis=1)
        r = reach[np.arange(len(alphas)), k]
        better = r > best_reach
        best_reach = np.where(better, r, best_reach)
        best_tri = np.where(better, k, best_tri)
        tk = t[np.arange(len(alphas)), k]
        bary = np.zeros((len(alphas), 3))
        bary[:, i], bary[:, j] = 1.0 - tk, tk
        best_bary = np.where(better[:, None], bary, best_bary)
    if not np.isfinite(best_reach).all():
        raise ValueError("a contour direction does not cross the jaw region")
    pts = np.einsum("ak,akc->ac", best_bary, p2[tri[best_tri]])
    return pts, cand[best_tri], best_bary


def _outline_triangles(p3: np.ndarray, faces: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Candidates owning an edge of the projected region's outline: a region-boundary edge or a
    silhouette edge (its two triangles face opposite ways). The farthest point of a cut lies on
    the outline, so this only drops triangles that can never be chosen."""
    tri = faces[cand]
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    owner = np.tile(np.arange(len(cand)), 3)
    key = np.sort(e, axis=1)
    order = np.lexsort((key[:, 1], key[:, 0]))
    key, owner = key[order], owner[order]
    same_next = np.zeros(len(key), bool)
    same_next[:-1] = (key[1:] == key[:-1]).all(axis=1)
    paired = same_next | np.concatenate([[False], same_next[:-1]])
    c = p3[tri]
    facing = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])[:, 2] > 0
    keep = np.zeros(len(cand), bool)
    keep[owner[~paired]] = True  # region-boundary edges
    i = np.nonzero(same_next)[0]
    flip = facing[owner[i]] != facing[owner[i + 1]]
    keep[owner[i[flip]]] = True
    keep[owner[i[flip] + 1]] = True
    return cand[keep]


def contour(g: HeadGeometry, cand: np.ndarray, yaw_deg: float) -> Embedding:
    """17 outline points, subject's right (0) to left (16), for the head turned by yaw_deg."""
    rot = _rot_y(yaw_deg)
    p3 = g.vertices @ rot.T
    p2 = p3[:, :2]
    cand = _outline_triangles(p3, g.faces, cand)
    centre = (rot @ CONTOUR_CENTRE)[:2]
    half = np.radians(CONTOUR_HALF_ANGLE_DEG)
    dense = np.linspace(-half, half, 57)  # for the arc length only; final points are exact
    pts, _, _ = _slice_extremes(p2, g.faces, cand, centre, dense)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    alphas = np.interp(np.linspace(0.0, cum[-1], 17), cum, dense)
    _, faces, bary = _slice_extremes(p2, g.faces, cand, centre, alphas)
    return Embedding(faces, bary)


# --- iBUG-68

def ibug68_static(g: HeadGeometry, emb: Embedder) -> Embedding:
    """Points 17..67 of iBUG-68 (SMIRK's static landmarks)."""
    faces: list[int] = []
    barys: list[np.ndarray] = []

    def add(f: np.ndarray, b: np.ndarray) -> None:
        faces.extend(np.atleast_1d(f).tolist())
        barys.extend(np.atleast_2d(b))

    u5 = np.linspace(0.0, 1.0, 5)
    add(*emb.front(brow_curve(u5[::-1], -1.0, 0.5)))  # 17..21 right brow, outer to inner
    add(*emb.front(brow_curve(u5, 1.0, 0.5)))  # 22..26 left brow, inner to outer
    prof = nose_profile(g)
    y_tip = g.vertices[prof["tip"], 1]
    y_top = EYE_CENTRE[1] + 0.001
    add(*emb.front(np.array([[0.0, y] for y in np.linspace(y_top, y_tip, 4)[:3]])))  # 27..29 bridge
    add(*_vertex_embedding(emb, prof["tip"]))  # 30 tip
    y_sn = g.vertices[prof["subnasale"], 1]
    nostrils = np.array([[-0.0115, y_sn + 0.0035], [-0.006, y_sn + 0.002]])
    add(*emb.front(nostrils))  # 31, 32
    add(*_vertex_embedding(emb, prof["subnasale"]))  # 33
    add(*emb.front(nostrils[::-1] * np.array([-1.0, 1.0])))  # 34, 35
    thirds = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    for eye in ("right", "left"):
        up, lo = lid_margin(g, eye, True), lid_margin(g, eye, False)
        up_side, lo_side = _side_faces(g, up), _side_faces(g, lo)
        up_e = emb.polyline(up, thirds, up_side)  # outer corner, 2 upper points, inner corner
        lo_e = emb.polyline(lo, thirds[1:3], lo_side)
        if eye == "right":  # 36 outer, 37 38 upper, 39 inner, 40 41 lower (inner to outer)
            add(up_e.faces, up_e.bary)
            add(lo_e.faces[::-1], lo_e.bary[::-1])
        else:  # 42 inner, 43 44 upper, 45 outer, 46 47 lower (outer to inner)
            add(up_e.faces[::-1], up_e.bary[::-1])
            add(lo_e.faces, lo_e.bary)
    # Outer lips 48..59: right corner, upper lip to the left corner, lower lip back.
    up_u = np.array([-1.0, -0.62, -0.28, 0.0, 0.28, 0.62, 1.0])
    lo_u = np.array([0.62, 0.28, 0.0, -0.28, -0.62])
    upper_faces, lower_faces = lip_side_faces(g)
    add(*emb.param(vermilion_theta_phi(g, up_u, True), upper_faces))
    add(*emb.param(vermilion_theta_phi(g, lo_u, False), lower_faces))
    # Inner lips 60..67 along the slit.
    up_slit, lo_slit = mouth_slit(g, True), mouth_slit(g, False)
    up_side, lo_side = _side_faces(g, up_slit), _side_faces(g, lo_slit)
    inner_up = emb.polyline(up_slit, _u_to_fraction(g, up_slit, np.array([-0.93, -0.45, 0.0, 0.45, 0.93])), up_side)
    inner_lo = emb.polyline(lo_slit, _u_to_fraction(g, lo_slit, np.array([0.45, 0.0, -0.45])), lo_side)
    add(inner_up.faces, inner_up.bary)
    add(inner_lo.faces, inner_lo.bary)
    out = Embedding(np.array(faces, np.int64), np.array(barys))
    assert len(out.faces) == 51
    return out


def _vertex_embedding(emb: Embedder, vid: int) -> tuple[int, np.ndarray]:
    """A landmark exactly on a vertex: the first front-facing skin triangle using it."""
    fi = int(emb.front_faces[np.isin(emb.front_faces, np.nonzero((emb.f == vid).any(axis=1))[0])][0])
    return fi, (emb.f[fi] == vid).astype(float)


def _side_faces(g: HeadGeometry, ids: np.ndarray) -> set[int]:
    """Skin triangles touching a slit side (its copies), i.e. on that side of the opening."""
    return set(np.nonzero(np.isin(g.faces, ids[1:-1]).any(axis=1))[0].tolist())


def lip_side_faces(g: HeadGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Skin triangles of the polar grid above / below the mouth row (for `Embedder.param`)."""
    th = g.theta[g.faces]
    ph = g.phi[g.faces]
    polar = np.isfinite(th).all(axis=1) & np.isfinite(ph).all(axis=1) & (g.face_triangle_kind == 0)
    polar &= np.abs(ph).max(axis=1) < np.pi / 2  # the front only (triangles at phi=+-pi wrap in (theta, phi))
    lower_copy = np.isin(g.faces, g.mouth.lower).any(axis=1)
    upper_copy = np.isin(g.faces, g.mouth.upper).any(axis=1)
    above = polar & (th.max(axis=1) <= g.theta_mouth + 1e-12) & ~lower_copy
    below = polar & (th.min(axis=1) >= g.theta_mouth - 1e-12) & ~upper_copy
    return np.nonzero(above)[0], np.nonzero(below)[0]


def _u_to_fraction(g: HeadGeometry, ids: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Arc-length fractions along a slit side at mouth coordinates u (phi / phi_corner)."""
    p = g.vertices[ids]
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    return np.interp(u * g.phi_mouth_corner, g.phi[ids], cum / cum[-1])


@dataclass
class LandmarkSet:
    static: Embedding  # 51
    full: Embedding  # 68
    dynamic_faces: np.ndarray  # (79,17)
    dynamic_bary: np.ndarray  # (79,17,3)
    mediapipe: Embedding  # 105
    mediapipe_indices: np.ndarray  # (105,)


def build_landmarks(g: HeadGeometry, masks: dict[str, np.ndarray]) -> LandmarkSet:
    emb = Embedder(g)
    static = ibug68_static(g, emb)
    cand = contour_faces(g, masks)
    dyn_f = np.zeros((YAW_BINS, 17), np.int64)
    dyn_b = np.zeros((YAW_BINS, 17, 3))
    for b in range(YAW_BINS):
        c = contour(g, cand, float(yaw_of_bin(b)))
        dyn_f[b], dyn_b[b] = c.faces, c.bary
    full = Embedding(np.concatenate([dyn_f[0], static.faces]), np.concatenate([dyn_b[0], static.bary]))
    mp = mediapipe_embedding(g, emb)
    return LandmarkSet(static=static, full=full, dynamic_faces=dyn_f, dynamic_bary=dyn_b, mediapipe=mp,
                       mediapipe_indices=np.array(SMIRK_MEDIAPIPE_INDICES, np.int64))


# --- MediaPipe

def _load_face_mesh_connections() -> ModuleType:
    """MediaPipe's connection sets, read from its pure-data module without importing all of mediapipe."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mediapipe is needed for the MediaPipe landmark embedding (pip install mediapipe==0.10.21)")
    path = Path(list(spec.submodule_search_locations)[0]) / "python" / "solutions" / "face_mesh_connections.py"
    mod_spec = importlib.util.spec_from_file_location("_fbench_face_mesh_connections", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _adjacency(edges) -> dict[int, list[int]]:
    adj: dict[int, list[int]] = {}
    for a, b in sorted(edges):
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    return {k: sorted(v) for k, v in adj.items()}


def _path(adj: dict[int, list[int]], start: int, end: int, via: int, avoid: set[int] = frozenset()) -> list[int]:
    """The simple path start..end through `via` (breadth-first on each leg)."""
    def bfs(a: int, b: int, banned: set[int]) -> list[int]:
        prev = {a: a}
        queue = [a]
        while queue:
            nxt = []
            for node in queue:
                for m in adj[node]:
                    if m not in prev and m not in banned:
                        prev[m] = node
                        nxt.append(m)
            queue = nxt
        if b not in prev:
            raise ValueError(f"MediaPipe connections: no path {a}->{b}")
        out = [b]
        while out[-1] != a:
            out.append(prev[out[-1]])
        return out[::-1]

    first = bfs(start, via, set(avoid) | {end})
    second = bfs(via, end, set(avoid) | set(first[:-1]))
    return first + second[1:]


def _polylines(edges) -> list[list[int]]:
    """Split an edge set made of disjoint simple paths into ordered paths."""
    adj = _adjacency(edges)
    seen: set[int] = set()
    out = []
    for start in sorted(k for k, v in adj.items() if len(v) == 1):
        if start in seen:
            continue
        line = [start]
        while True:
            nxt = [m for m in adj[line[-1]] if m not in line]
            if not nxt:
                break
            line.append(nxt[0])
        seen.update(line)
        out.append(line)
    return out


def mediapipe_embedding(g: HeadGeometry, emb: Embedder) -> Embedding:
    conn = _load_face_mesh_connections()
    where: dict[int, tuple[int, np.ndarray]] = {}

    def put(ids: list[int], e: Embedding) -> None:
        for i, f, b in zip(ids, e.faces, e.bary):
            where[i] = (int(f), b)

    # Eyes: upper path outer->inner over the upper lid, lower path inner->outer.
    for eye, edges in (("right", conn.FACEMESH_RIGHT_EYE), ("left", conn.FACEMESH_LEFT_EYE)):
        a = MP_ANCHORS[f"{eye}_eye"]
        adj = _adjacency(edges)
        upper = _path(adj, a["outer"], a["inner"], a["upper"])
        lower = _path(adj, a["inner"], a["outer"], a["lower"], avoid=set(upper[1:-1]))
        up_ids, lo_ids = lid_margin(g, eye, True), lid_margin(g, eye, False)  # outer -> inner
        put(upper, emb.polyline(up_ids, np.linspace(0.0, 1.0, len(upper)), _side_faces(g, up_ids)))
        put(lower[1:-1], emb.polyline(lo_ids, np.linspace(1.0, 0.0, len(lower))[1:-1], _side_faces(g, lo_ids)))

    # Lips: the outer loop on the vermilion border, the inner loop along the slit.
    adj = _adjacency(conn.FACEMESH_LIPS)
    a = MP_ANCHORS["lips_outer"]
    upper = _path(adj, a["right"], a["left"], a["upper"])
    lower = _path(adj, a["left"], a["right"], a["lower"], avoid=set(upper[1:-1]))
    upper_faces, lower_faces = lip_side_faces(g)
    put(upper, Embedding(*emb.param(vermilion_theta_phi(g, np.linspace(-1.0, 1.0, len(upper)), True), upper_faces)))
    put(lower[1:-1], Embedding(*emb.param(
        vermilion_theta_phi(g, np.linspace(1.0, -1.0, len(lower))[1:-1], False), lower_faces)))
    a = MP_ANCHORS["lips_inner"]
    upper = _path(adj, a["right"], a["left"], a["upper"])
    lower = _path(adj, a["left"], a["right"], a["lower"], avoid=set(upper[1:-1]))
    up_slit, lo_slit = mouth_slit(g, True), mouth_slit(g, False)
    span = 0.93  # inner corners sit just inside the mouth corners
    put(upper, emb.polyline(up_slit, _u_to_fraction(g, up_slit, np.linspace(-span, span, len(upper))),
                            _side_faces(g, up_slit)))
    put(lower[1:-1], emb.polyline(lo_slit, _u_to_fraction(g, lo_slit, np.linspace(span, -span, len(lower))[1:-1]),
                                  _side_faces(g, lo_slit)))

    # Brows: two polylines each; the one holding the upper anchor is the upper edge.
    for side, sign, edges in (("right", -1.0, conn.FACEMESH_RIGHT_EYEBROW), ("left", 1.0, conn.FACEMESH_LEFT_EYEBROW)):
        a = MP_ANCHORS[f"{side}_brow"]
        for line in _polylines(edges):
            if a["upper_outer"] in line:
                offset, outer = 1.0, a["upper_outer"]
            elif a["lower_outer"] in line:
                offset, outer = -1.0, a["lower_outer"]
            else:
                raise ValueError("MediaPipe eyebrow connections changed")
            line = line if line[0] == outer else line[::-1]  # outer -> inner
            u = np.linspace(1.0, 0.0, len(line))
            put(line, Embedding(*emb.front(brow_curve(u, sign, offset))))

    # Nose: bridge and tip by height on the midline, under the tip along the profile,
    # the side chains round the nostril-wing outline.
    a = MP_ANCHORS["nose"]
    adj = _adjacency(conn.FACEMESH_NOSE)
    midline = _path(adj, a["top"], a["subnasale"], a["tip"])
    k_tip = midline.index(a["tip"])
    prof = nose_profile(g)
    y_tip = g.vertices[prof["tip"], 1]
    y_top = EYE_CENTRE[1] + 0.006
    bridge = midline[:k_tip]
    put(bridge, Embedding(*emb.front(np.array([[0.0, y] for y in np.linspace(y_top, y_tip, k_tip + 1)[:-1]]))))
    under = prof["column"][prof["tip_k"]: prof["sn_k"] + 1]
    front_faces = set(emb.front_faces.tolist())
    put(midline[k_tip:], emb.polyline(under, np.linspace(0.0, 1.0, len(midline) - k_tip), front_faces))
    y_sn = g.vertices[prof["subnasale"], 1]
    above_tip = np.array([0.0, y_tip + 0.0045])
    for side, sign, wing in (("right", -1.0, a["right_wing"]), ("left", 1.0, a["left_wing"])):
        others = set(midline) - {a["subnasale"], a["above_tip"]}
        chain = _path(adj, a["subnasale"], a["above_tip"], wing, avoid=others)
        outline = _nose_outline(y_sn, above_tip, sign)
        seg = np.linalg.norm(np.diff(outline, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
        frac = np.linspace(0.0, 1.0, len(chain))[1:-1]
        xy = np.stack([np.interp(frac, cum, outline[:, 0]), np.interp(frac, cum, outline[:, 1])], axis=1)
        put(chain[1:-1], Embedding(*emb.front(xy)))
        lateral = ALA_CENTRE * np.array([sign, 1.0]) + np.array([sign * (ALA_RADII[0] + 0.0005), 0.0])
        put([MP_ALAR_OUTER[side]], Embedding(*emb.front(lateral)))

    missing = [i for i in SMIRK_MEDIAPIPE_INDICES if i not in where]
    if missing:
        raise ValueError(f"MediaPipe landmarks without a synthetic position: {missing}")
    faces = np.array([where[i][0] for i in SMIRK_MEDIAPIPE_INDICES], np.int64)
    bary = np.array([where[i][1] for i in SMIRK_MEDIAPIPE_INDICES])
    return Embedding(faces, bary)


def _nose_outline(y_sn: float, above_tip: np.ndarray, sign: float) -> np.ndarray:
    """Front-view outline from the subnasale round one nostril wing and up the side of the tip."""
    psi = np.radians(np.linspace(-150.0, 120.0, 28))  # from below-inside, out round the wing, to above it
    cx, cy = ALA_CENTRE
    ring = np.stack([sign * (cx + ALA_RADII[0] * np.cos(psi)), cy + ALA_RADII[1] * np.sin(psi)], axis=1)
    side_of_tip = np.array([sign * 0.006, above_tip[1] - 0.002])
    return np.concatenate([[[0.0, y_sn + 0.001]], ring, [side_of_tip, above_tip]])
