"""Geometry of the synthetic FLAME-format head (see `fbench.flame.synthetic`).

The skin is one latitude-longitude grid wrapped around an implicit head: every
grid vertex sits where a ray leaves a smooth signed-distance-like field built
from ellipsoids, capsules and spheres (cranium, face, jaw, chin, cheekbones,
brow ridges, nose, eyelid shells, ears, neck). Rows are rays from one origin
inside the head (polar angle `theta` from +y, azimuth `phi` from +z towards +x)
and, for the lower neck, horizontal rays from the neck axis so that the open
neck boundary is a horizontal ring, like FLAME's.

The mouth and the two eye openings are slits along one grid row: the vertices
strictly between the corners are duplicated (upper copy for the triangles
above, lower copy for those below), so the lower lip can follow the jaw and the
eyes can be opened. The eye slits are opened by moving lid vertices along their
columns in (theta, phi) parameter space and re-casting them, so the lids stay
on the eyelid shell that wraps each eyeball. Lips are a radial relief added in
the same parameter space, which puts the lip crease exactly on the slit row.

Coordinates follow FLAME: metres, y up, z forward (the face looks towards +z),
x towards the subject's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --- layout (metres); features with an x coordinate are given for the subject's left (+x)
RAY_ORIGIN = np.array([0.0, 0.0, -0.015])  # origin of the polar rays, on the neck axis
NECK_AXIS_Z = -0.015
NECK_BOTTOM_Y = -0.175
EYE_CENTRE = np.array([0.031, 0.035, 0.057])  # left eyeball centre; the right one is mirrored
EYEBALL_RADIUS = 0.013
LID_RADIUS = EYEBALL_RADIUS + 0.0013  # eyelid skin shell around the eyeball
# Corners sit at the eyeball's sides so the opening never shows what is behind the eyeball.
EYE_INNER_CORNER = EYE_CENTRE + np.array([-0.95 * EYEBALL_RADIUS, 0.0, 0.0])
EYE_OUTER_CORNER = EYE_CENTRE + np.array([0.95 * EYEBALL_RADIUS, 0.0, 0.0])
EYE_OPEN_UP_DEG = 4.4  # upper-lid opening at the middle of the eye (about 5 mm)
EYE_OPEN_DOWN_DEG = 2.4  # lower-lid opening (about 3 mm)
EYE_OPEN_FALLOFF_DEG = 5.5  # how fast the opening fades away from the slit
MOUTH_Y = -0.040  # height of the lip crease on the midline
MOUTH_CORNER = np.array([0.0245, -0.040, 0.080])
UPPER_LIP_HEIGHT_DEG = 4.0  # crease to vermilion border, in ray angle (about 7 mm)
LOWER_LIP_HEIGHT_DEG = 4.6
UPPER_LIP_BULGE = 0.0030
LOWER_LIP_BULGE = 0.0034

N_COLUMNS = 76  # azimuth samples around the head (even: one column at phi=0 and one at phi=pi)
ROW_STEP_DEG = 3.2  # polar spacing over the face
FINE_ROW_STEP_DEG = 1.6  # polar spacing around the eyes and the mouth
EYEBALL_ROWS = 8
EYEBALL_COLUMNS = 14


# --- smooth implicit primitives (negative inside)

def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("...i,...i->...", v, v))


def _ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    # Distance estimate for an ellipsoid that stays well behaved away from the surface.
    q = (p - np.asarray(centre)) / np.asarray(radii)
    k0 = _norm(q)
    k1 = _norm(q / np.asarray(radii))
    # At the very centre the estimate degenerates to 0; it is deep inside there.
    return np.where(k0 < 1e-9, -float(np.min(radii)), k0 * (k0 - 1.0) / np.maximum(k1, 1e-12))


def _sphere(p: np.ndarray, centre, radius: float) -> np.ndarray:
    return _norm(p - np.asarray(centre)) - radius


def _tapered_capsule(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    # Distance to the segment a-b minus a radius interpolated along it.
    a = np.asarray(a, dtype=float)
    ab = np.asarray(b, dtype=float) - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    return _norm(p - (a + t[..., None] * ab)) - (ra + (rb - ra) * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    # Polynomial smooth minimum: a union with a fillet of size ~k.
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1.0 - h) + a * h - k * h * (1.0 - h)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smin(-a, -b, k)


def mirror_x(p: np.ndarray) -> np.ndarray:
    """Fold onto the subject's left (+x) so one primitive serves both sides."""
    q = np.array(p, dtype=float, copy=True)
    q[..., 0] = np.abs(q[..., 0])
    return q


def nose_field(p: np.ndarray) -> np.ndarray:
    """Nose on its own (bridge, tip, alae); also used to define the nose mask."""
    ps = mirror_x(p)
    d = _tapered_capsule(p, (0.0, 0.040, 0.077), (0.0, 0.004, 0.100), 0.0055, 0.0085)
    d = _smin(d, _ellipsoid(p, (0.0, -0.001, 0.1005), (0.0105, 0.0105, 0.0115)), 0.006)
    d = _smin(d, _ellipsoid(ps, (0.0115, -0.009, 0.0885), (0.0068, 0.0062, 0.0078)), 0.007)
    # Columella: a thin bridge from the tip down to the upper lip.
    d = _smin(d, _tapered_capsule(p, (0.0, -0.006, 0.104), (0.0, -0.016, 0.092), 0.0045, 0.0045), 0.004)
    return d


def neck_field(p: np.ndarray) -> np.ndarray:
    """Elliptic neck cylinder, capped smoothly inside the head."""
    neck = _ellipsoid(p * np.array([1.0, 0.0, 1.0]), (0.0, 0.0, NECK_AXIS_Z), (0.054, 1.0, 0.057))
    return _smax(neck, p[..., 1] + 0.015, 0.02)


def ear_field(p: np.ndarray) -> np.ndarray:
    ps = mirror_x(p)
    return _ellipsoid(ps, (0.0735, 0.012, -0.014), (0.013, 0.031, 0.0185))


def head_field(p: np.ndarray) -> np.ndarray:
    """Implicit head: negative inside, zero on the skin."""
    ps = mirror_x(p)
    d = _ellipsoid(p, (0.0, 0.028, -0.020), (0.073, 0.097, 0.093))  # cranium
    d = _smin(d, _ellipsoid(p, (0.0, 0.052, 0.002), (0.062, 0.052, 0.078)), 0.02)  # forehead
    d = _smin(d, _ellipsoid(p, (0.0, 0.002, 0.012), (0.062, 0.058, 0.072)), 0.02)  # mid face
    d = _smin(d, _ellipsoid(p, (0.0, -0.043, 0.012), (0.052, 0.041, 0.068)), 0.02)  # lower face
    d = _smin(d, _tapered_capsule(ps, (0.056, -0.030, -0.012), (0.024, -0.071, 0.054), 0.013, 0.010), 0.014)  # jaw
    d = _smin(d, _ellipsoid(p, (0.0, -0.075, 0.064), (0.022, 0.021, 0.019)), 0.012)  # chin
    d = _smin(d, _ellipsoid(ps, (0.044, 0.010, 0.048), (0.022, 0.016, 0.024)), 0.02)  # cheekbone
    d = _smin(d, _ellipsoid(ps, (0.040, -0.022, 0.044), (0.024, 0.028, 0.028)), 0.02)  # cheek
    d = _smin(d, neck_field(p), 0.03)
    d = _smin(d, _tapered_capsule(ps, (0.012, 0.054, 0.075), (0.050, 0.051, 0.058), 0.0075, 0.006), 0.015)  # brow
    d = _smin(d, nose_field(p), 0.006)
    d = _smax(d, -_ellipsoid(ps, (0.031, 0.036, 0.077), (0.021, 0.015, 0.014)), 0.006)  # orbit
    d = _smin(d, _sphere(ps, EYE_CENTRE, LID_RADIUS), 0.005)  # eyelid shell
    d = _smin(d, ear_field(p), 0.005)
    return d


# --- ray casting

def polar_dirs(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    theta, phi = np.broadcast_arrays(theta, phi)
    s = np.sin(theta)
    return np.stack([s * np.sin(phi), np.cos(theta), s * np.cos(phi)], axis=-1)


def cast_rays(origins: np.ndarray, dirs: np.ndarray, t_min: float = 0.04, t_max: float = 0.17,
              step: float = 0.003) -> np.ndarray:
    """Distance along each ray to the outermost crossing of the skin.

    Outermost (not first) so that overhangs such as the ears or the brow are
    wrapped like a star-shaped hull instead of producing folds. The skin is
    between t_min and t_max from every origin used here (checked).
    """
    origins = np.broadcast_to(origins, dirs.shape)
    ts = np.arange(t_min, t_max + 0.5 * step, step)
    inside = head_field(origins[:, None, :] + ts[None, :, None] * dirs[:, None, :]) < 0.0
    if not inside[:, 0].all() or inside[:, -1].any():
        raise ValueError("the skin is not between t_min and t_max along some ray")
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    lo = ts[last]
    hi = lo + step
    f_lo, f_hi = head_field(origins + lo[:, None] * dirs), head_field(origins + hi[:, None] * dirs)
    for _ in range(16):  # bisection on the bracketing interval, then one secant step
        mid = 0.5 * (lo + hi)
        f_mid = head_field(origins + mid[:, None] * dirs)
        inside_mid = f_mid < 0.0
        lo, f_lo = np.where(inside_mid, mid, lo), np.where(inside_mid, f_mid, f_lo)
        hi, f_hi = np.where(inside_mid, hi, mid), np.where(inside_mid, f_hi, f_mid)
    return lo + (hi - lo) * f_lo / np.minimum(f_lo - f_hi, -1e-300)


def lip_heights(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angular height of the upper and lower vermilion at mouth coordinate u = phi / phi_corner
    (thinner towards the corners)."""
    t = 1.0 - 0.45 * np.minimum(np.abs(u), 1.0) ** 2
    return np.radians(UPPER_LIP_HEIGHT_DEG) * t, np.radians(LOWER_LIP_HEIGHT_DEG) * t


def _lip_profile(s: np.ndarray) -> np.ndarray:
    # 0 at the crease (s=0), a rounded bulge, back to 0 a little beyond the vermilion border (s=1).
    return np.where((s > 0.0) & (s < 1.3), np.sin(np.pi * np.clip(s, 0.0, 1.3) / 1.3) ** 1.5, 0.0)


def lip_relief(theta: np.ndarray, phi: np.ndarray, theta_mouth: float, phi_corner: float) -> np.ndarray:
    """Radial offset that raises the two lips on either side of the mouth row."""
    u = np.abs(phi) / phi_corner
    lateral = np.where(u < 1.0, np.cos(0.5 * np.pi * np.minimum(u, 1.0)) ** 0.6, 0.0)
    up_h, lo_h = lip_heights(u)
    s_up = (theta_mouth - theta) / up_h
    s_lo = (theta - theta_mouth) / lo_h
    return lateral * (UPPER_LIP_BULGE * _lip_profile(s_up) + LOWER_LIP_BULGE * _lip_profile(s_lo))


def _column_angles(n: int) -> np.ndarray:
    """Azimuths, about 4.5 times denser over the face than at the back of the head."""
    half = n // 2
    grid = np.linspace(0.0, np.pi, 4001)
    density = 1.0 + 3.5 * (1.0 - _smoothstep(grid, np.radians(50.0), np.radians(95.0)))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    pos = np.interp(np.linspace(0.0, cum[-1], half + 1), cum, grid)
    pos[0], pos[-1] = 0.0, np.pi
    # Columns 0..half go from the front over the subject's left to the back; the rest mirror them.
    return np.concatenate([pos, -pos[half - 1:0:-1]])


def _smoothstep(x: np.ndarray, a: float, b: float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=float) - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _solve_row(phi: float, y_target: float, lo: float, hi: float) -> float:
    """Polar angle whose ray meets the skin at height y_target (y decreases with theta there)."""
    for _ in range(4):  # each pass narrows the bracket 63-fold
        thetas = np.linspace(lo, hi, 64)
        d = polar_dirs(thetas, np.full(64, phi))
        y = RAY_ORIGIN[1] + cast_rays(RAY_ORIGIN, d) * d[:, 1]
        k = int(np.clip(np.searchsorted(-y, -y_target) - 1, 0, 62))
        lo, hi = thetas[k], thetas[k + 1]
    return 0.5 * (lo + hi)


def _azimuth(p: np.ndarray) -> float:
    return float(np.arctan2(p[0], p[2] - RAY_ORIGIN[2]))


@dataclass
class Slit:
    """A row segment whose interior vertices are duplicated (mouth, eyes)."""

    row: int
    cols: np.ndarray  # grid columns from one corner to the other, corners included
    upper: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # vertex ids, interior, upper copy
    lower: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # vertex ids, interior, lower copy

    @property
    def corners(self) -> tuple[int, int]:
        """The two corner columns (the corner vertices are shared by both sides)."""
        return int(self.cols[0]), int(self.cols[-1])


@dataclass
class HeadGeometry:
    """Template mesh plus the parametrisation the other builders need."""

    vertices: np.ndarray  # (V,3)
    faces: np.ndarray  # (F,3) int64, counter-clockwise seen from outside
    theta: np.ndarray  # (V,) polar ray angle of skin vertices (nan for ring rows and eyeballs)
    phi: np.ndarray  # (V,) azimuth (nan for eyeballs and the pole)
    row: np.ndarray  # (V,) grid row (-1 for eyeballs)
    col: np.ndarray  # (V,) grid column (-1 for eyeballs and the pole)
    grid: np.ndarray  # (R, N) vertex id at (row, column) (upper copy on slits; row 0 is the pole)
    grid_lower: np.ndarray  # (R, N) vertex id used by triangles below (differs on slits)
    row_theta: np.ndarray  # (R,) polar angle per row, nan for horizontal neck rings
    row_ring_y: np.ndarray  # (R,) height of the neck rings, nan for polar rows
    col_phi: np.ndarray  # (N,)
    mouth: Slit
    left_eye: Slit
    right_eye: Slit
    theta_mouth: float
    theta_eye: float
    phi_mouth_corner: float
    skin: np.ndarray  # (V,) bool
    left_eyeball: np.ndarray  # vertex ids
    right_eyeball: np.ndarray
    eye_centres: np.ndarray  # (2,3) left, right
    closed_lid: dict[str, np.ndarray]  # 'left'/'right' -> (V,3) positions with that upper lid closed
    neck_boundary: np.ndarray  # vertex ids of the open neck ring, in column order
    face_triangle_kind: np.ndarray  # (F,) 0 skin, 1 left eyeball, 2 right eyeball


def _eye_opening(theta: np.ndarray, phi: np.ndarray, theta_eye: float, phi_in: float, phi_out: float,
                 upper: np.ndarray, closed: bool) -> np.ndarray:
    """Polar angle of lid vertices once the eye is opened (or, with closed=True, with the upper lid shut)."""
    mid, half = 0.5 * (phi_in + phi_out), 0.5 * abs(phi_out - phi_in)
    u = np.clip(np.abs(phi - mid) / half, 0.0, 1.0)
    # Almond shape: widest a little towards the inner corner, zero at both corners.
    skew = 1.0 + 0.12 * np.sign(np.abs(phi) - abs(mid)) * u
    up = np.radians(EYE_OPEN_UP_DEG) * (1.0 - u ** 2) * skew
    down = np.radians(EYE_OPEN_DOWN_DEG) * (1.0 - u ** 2) * skew
    s = np.abs(theta - theta_eye)
    fall = np.exp(-s / np.radians(EYE_OPEN_FALLOFF_DEG)) * (1.0 - _smoothstep(s, np.radians(9.0), np.radians(16.0)))
    if closed:  # the upper lid slides down until its margin meets the lower margin
        return np.where(upper, theta + down * fall, theta)
    return np.where(upper, theta - up * fall, theta + down * fall)


def build_geometry() -> HeadGeometry:
    n = N_COLUMNS
    col_phi = _column_angles(n)

    # Rows: the eye-slit and mouth rows must be grid rows, so solve for them first.
    eye_phi = _azimuth(EYE_CENTRE)
    theta_eye = _solve_row(eye_phi, EYE_CENTRE[1], np.radians(50.0), np.radians(90.0))
    theta_mouth = _solve_row(0.0, MOUTH_Y, np.radians(95.0), np.radians(125.0))
    # Fine rows around the eye and mouth rows, coarser elsewhere; both slit rows are exact.
    r = np.radians
    breaks = [(r(40.0), ROW_STEP_DEG), (theta_eye - r(7.0), FINE_ROW_STEP_DEG), (theta_eye, FINE_ROW_STEP_DEG),
              (theta_eye + r(7.0), ROW_STEP_DEG), (theta_mouth - r(8.0), FINE_ROW_STEP_DEG),
              (theta_mouth, FINE_ROW_STEP_DEG), (theta_mouth + r(9.0), ROW_STEP_DEG), (r(142.0), ROW_STEP_DEG)]
    dense = [np.linspace(a, b, max(2, int(round((b - a) / r(step))) + 1))[:-1]
             for (a, step), (b, _) in zip(breaks[:-1], breaks[1:])]
    row_theta = np.concatenate([r(np.array([7.0, 14.0, 21.0, 28.0, 34.0])), *dense,
                                r(np.array([142.0, 146.0, 150.0, 154.0]))])
    i_eye = int(np.argmin(np.abs(row_theta - theta_eye)))
    i_mouth = int(np.argmin(np.abs(row_theta - theta_mouth)))

    # Cast the polar rows.
    th, ph = np.meshgrid(row_theta, col_phi, indexing="ij")
    dirs = polar_dirs(th.ravel(), ph.ravel())
    t = cast_rays(RAY_ORIGIN, dirs)
    pos = (RAY_ORIGIN + t[:, None] * dirs).reshape(len(row_theta), n, 3)

    # Lower neck: horizontal rings below the last polar row, down to a flat open boundary.
    y_start = pos[-1, :, 1].min() - 0.012
    n_rings = max(2, int(np.ceil((y_start - NECK_BOTTOM_Y) / 0.014)) + 1)
    ring_y = np.linspace(y_start, NECK_BOTTOM_Y, n_rings)
    ring_dirs = np.stack([np.sin(col_phi), np.zeros(n), np.cos(col_phi)], axis=-1)
    ring_pos = []
    for y in ring_y:
        origin = np.array([0.0, y, NECK_AXIS_Z])
        ring_pos.append(origin + cast_rays(origin, ring_dirs)[:, None] * ring_dirs)
    pos = np.concatenate([pos, np.stack(ring_pos)], axis=0)
    n_rows = pos.shape[0] + 1  # + the pole row
    all_theta = np.concatenate([[0.0], row_theta, np.full(n_rings, np.nan)])
    all_ring_y = np.concatenate([np.full(1 + len(row_theta), np.nan), ring_y])

    # Vertex ids: pole, then rows of n.
    top_t = cast_rays(RAY_ORIGIN, np.array([[0.0, 1.0, 0.0]]))[0]
    verts = [RAY_ORIGIN + np.array([0.0, top_t, 0.0])]
    grid = np.zeros((n_rows, n), np.int64)
    v_theta, v_phi, v_row, v_col = [0.0], [np.nan], [0], [-1]
    for i in range(1, n_rows):
        for j in range(n):
            grid[i, j] = len(verts)
            verts.append(pos[i - 1, j])
            v_theta.append(all_theta[i])
            v_phi.append(col_phi[j])
            v_row.append(i)
            v_col.append(j)
    i_eye += 1
    i_mouth += 1
    verts = np.array(verts)
    v_theta, v_phi = np.array(v_theta), np.array(v_phi)
    v_row, v_col = np.array(v_row), np.array(v_col)
    grid_lower = grid.copy()

    def nearest_col(phi: float) -> int:
        return int(np.argmin(np.abs(np.angle(np.exp(1j * (col_phi - phi))))))

    def make_slit(row: int, cols: np.ndarray) -> Slit:
        nonlocal verts, v_theta, v_phi, v_row, v_col
        interior = cols[1:-1]
        upper = grid[row, interior]
        lower = np.arange(len(verts), len(verts) + len(interior))
        grid_lower[row, interior] = lower
        verts = np.concatenate([verts, verts[upper]])
        v_theta = np.concatenate([v_theta, v_theta[upper]])
        v_phi = np.concatenate([v_phi, v_phi[upper]])
        v_row = np.concatenate([v_row, v_row[upper]])
        v_col = np.concatenate([v_col, v_col[upper]])
        return Slit(row=row, cols=cols, upper=upper, lower=lower)

    # Slit columns run from the subject's right to the left (increasing x).
    mouth_c = nearest_col(_azimuth(MOUTH_CORNER))
    mouth = make_slit(i_mouth, np.arange(-mouth_c, mouth_c + 1) % n)
    c_in, c_out = nearest_col(_azimuth(EYE_INNER_CORNER)), nearest_col(_azimuth(EYE_OUTER_CORNER))
    left_eye = make_slit(i_eye, np.arange(c_in, c_out + 1))
    right_eye = make_slit(i_eye, np.arange(n - c_out, n - c_in + 1))
    phi_mouth_corner = float(col_phi[mouth_c])

    # Lips: radial relief around the mouth row.
    polar = np.isfinite(v_theta) & (v_row > 0)
    relief = np.zeros(len(verts))
    relief[polar] = lip_relief(v_theta[polar], v_phi[polar], all_theta[i_mouth], phi_mouth_corner)
    # On the slit row itself the relief is zero for both copies, so they coincide.
    radial = np.where(polar[:, None], polar_dirs(np.nan_to_num(v_theta), np.nan_to_num(v_phi)), 0.0)
    verts = verts + relief[:, None] * radial

    # Eyes: open the slits by moving lid vertices along their columns, and keep the closed pose too.
    lid_moves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, slit in (("left", left_eye), ("right", right_eye)):
        # Inner corner is the one nearer the midline.
        ends = col_phi[[slit.cols[0], slit.cols[-1]]]
        phi_in, phi_out = (ends[0], ends[1]) if abs(ends[0]) < abs(ends[1]) else (ends[1], ends[0])
        corners = grid[slit.row, list(slit.corners)]
        sel = np.isin(v_col, slit.cols[1:-1]) | np.isin(np.arange(len(verts)), corners)
        sel &= polar & (np.abs(v_theta - all_theta[i_eye]) < np.radians(17.0))
        ids = np.nonzero(sel)[0]
        is_upper = (v_theta[ids] < all_theta[i_eye]) | np.isin(ids, slit.upper)
        opened = _eye_opening(v_theta[ids], v_phi[ids], all_theta[i_eye], phi_in, phi_out, is_upper, closed=False)
        shut = _eye_opening(v_theta[ids], v_phi[ids], all_theta[i_eye], phi_in, phi_out, is_upper, closed=True)
        d_open = polar_dirs(opened, v_phi[ids])
        d_shut = polar_dirs(shut, v_phi[ids])
        p_open = RAY_ORIGIN + cast_rays(RAY_ORIGIN, d_open)[:, None] * d_open
        p_shut = RAY_ORIGIN + cast_rays(RAY_ORIGIN, d_shut)[:, None] * d_shut
        # Lid margins rest on the eyeball, so no gap opens between lid and eyeball at oblique views.
        centre = EYE_CENTRE * np.array([1.0 if name == "left" else -1.0, 1.0, 1.0])
        margin = np.isin(ids, np.concatenate([slit.upper, slit.lower, corners]))
        for p in (p_open, p_shut):
            off = p[margin] - centre
            p[margin] = centre + (EYEBALL_RADIUS + 0.0003) * off / _norm(off)[:, None]
        verts[ids] = p_open
        v_theta[ids] = opened
        lid_moves[name] = (ids, np.where(is_upper[:, None], p_shut, p_open))

    # Triangles of the skin grid: the pole fan, then quads split mirror-symmetrically.
    faces = []
    for j in range(n):
        faces.append((grid[0, 0], grid[1, j], grid[1, (j + 1) % n]))
    for i in range(1, n_rows - 1):
        for j in range(n):
            j1 = (j + 1) % n
            a, c = grid_lower[i, j], grid_lower[i, j1]
            b, d = grid[i + 1, j], grid[i + 1, j1]
            if j < n // 2:  # quad on the subject's left; the right side gets the mirror split
                faces += [(a, b, c), (c, b, d)]
            else:
                faces += [(a, b, d), (a, d, c)]
    skin_faces = np.array(faces, np.int64)
    n_skin = len(verts)

    # Eyeballs: UV spheres with a pole looking forward, fully separate meshes.
    eye_centres = np.array([EYE_CENTRE, EYE_CENTRE * np.array([-1.0, 1.0, 1.0])])
    ball_verts, ball_faces, ball_ids, kinds = [], [], [], []
    offset = n_skin
    for k, centre in enumerate(eye_centres):
        v, f = _uv_sphere(centre, EYEBALL_RADIUS, EYEBALL_ROWS, EYEBALL_COLUMNS)
        ball_verts.append(v)
        ball_faces.append(f + offset)
        ball_ids.append(np.arange(offset, offset + len(v)))
        kinds.append(np.full(len(f), k + 1))
        offset += len(v)
    vertices = np.concatenate([verts, *ball_verts])
    faces_all = np.concatenate([skin_faces, *ball_faces])
    n_ball = offset - n_skin
    pad = lambda a, val: np.concatenate([a, np.full(n_ball, val, dtype=a.dtype)])  # noqa: E731

    closed = {}
    for name, (ids, p) in lid_moves.items():
        full = vertices.copy()
        full[ids] = p
        closed[name] = full

    return HeadGeometry(
        vertices=vertices, faces=faces_all,
        theta=pad(v_theta, np.nan), phi=pad(v_phi, np.nan), row=pad(v_row, -1), col=pad(v_col, -1),
        grid=grid, grid_lower=grid_lower, row_theta=all_theta, row_ring_y=all_ring_y, col_phi=col_phi,
        mouth=mouth, left_eye=left_eye, right_eye=right_eye,
        theta_mouth=float(all_theta[i_mouth]), theta_eye=float(all_theta[i_eye]), phi_mouth_corner=phi_mouth_corner,
        skin=np.arange(len(vertices)) < n_skin, left_eyeball=ball_ids[0], right_eyeball=ball_ids[1],
        eye_centres=eye_centres, closed_lid=closed, neck_boundary=grid[-1].copy(),
        face_triangle_kind=np.concatenate([np.zeros(len(skin_faces), np.int64), *kinds]),
    )


def _uv_sphere(centre: np.ndarray, radius: float, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Sphere with its first pole at +z (the gaze direction); faces counter-clockwise from outside."""
    alpha = np.linspace(0.0, np.pi, rows + 2)[1:-1]
    beta = np.arange(cols) * 2.0 * np.pi / cols
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    ring = np.stack([np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)], axis=-1).reshape(-1, 3)
    v = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]]) * radius + centre
    idx = lambda i, j: 1 + i * cols + (j % cols)  # noqa: E731
    back = len(v) - 1
    f = []
    for j in range(cols):
        f.append((0, idx(0, j), idx(0, j + 1)))
        f.append((back, idx(rows - 1, j + 1), idx(rows - 1, j)))
        for i in range(rows - 1):
            f += [(idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)), (idx(i, j), idx(i + 1, j + 1), idx(i, j + 1))]
    f = np.array(f, np.int64)
    # Orient outwards whatever the angle conventions above produce.
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if np.einsum("ij,ij->i", normal, tri.mean(1) - centre).sum() < 0:
        f = f[:, [0, 2, 1]]
    return v, f
