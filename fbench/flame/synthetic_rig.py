"""Rig of the synthetic FLAME-format head: masks, joints, skinning, blendshapes.

Everything here is derived from `HeadGeometry` and documented design choices:

- masks from the template's 3D layout (hairline, ears, neck junction, feature
  ellipses), so they agree with where the features were built;
- joints regressed from vertex sets (root: the neck-bottom ring; neck: two
  cross-section rings; jaw: patches in front of the ears; eyes: eyeball vertices);
- skinning weights: the jaw weight is a harmonic (Laplace) interpolation on the
  skin between "moves with the jaw" (lower lip, chin, jaw line) and "stays with
  the head" (upper lip and above, behind the hinge, lower neck); the mouth slit
  keeps the two lips apart, so the lower lip follows the jaw and the mouth opens;
- shape bases: smooth random fields (low-order polynomials, then Gaussian RBFs
  of decreasing width, each along one axis or one random direction), made
  orthonormal in the V*3 space and scaled to decreasing standard deviations;
  eyeballs move rigidly with the field at their centre and the lid margins
  with them (see `build_shapedirs`);
- expression bases: 20 designed, localised actions, then random localised bumps,
  all multiplied by a face weight that is exactly zero outside the face mask;
- pose correctives: a partial extra rotation, (R - I)(v - J) times a smooth
  bump over each joint's blending zone (tiny for the eyes: lids follow gaze);
- eyelids: closed-lid positions minus the template, upper lid of one eye only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from fbench.flame.synthetic_geometry import (
    EYE_CENTRE,
    EYEBALL_RADIUS,
    MOUTH_Y,
    RAY_ORIGIN,
    HeadGeometry,
    _smoothstep,
    ear_field,
    lip_heights,
    nose_field,
)

NUM_SHAPE = 300
NUM_EXPRESSION = 100
NUM_DESIGNED_EXPRESSIONS = 20
KINTREE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")
MASK_NAMES = ("face", "eye_region", "left_eye_region", "right_eye_region", "lips", "nose", "forehead", "scalp",
              "boundary", "neck", "left_ear", "right_ear", "left_eyeball", "right_eyeball")
HAIRLINE_Y = (0.080, 0.094)  # the face weight fades out between these heights
BROW_TOP_Y = 0.063


def azimuth(v: np.ndarray) -> np.ndarray:
    """Angle around the vertical axis through the ray origin, 0 at the front, + towards the subject's left."""
    return np.arctan2(v[:, 0], v[:, 2] - RAY_ORIGIN[2])


def neck_junction_y(z: np.ndarray) -> np.ndarray:
    """Height of the head/neck junction: under the chin at the front, the nape at the back."""
    return -0.062 - 0.043 * np.clip((z + 0.07) / 0.115, 0.0, 1.0)


def mouth_coords(g: HeadGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(u, side) per vertex: u = phi / phi_corner; side -1 above the mouth row (or upper copy), +1 below."""
    u = g.phi / g.phi_mouth_corner
    side = np.where(g.theta < g.theta_mouth, -1.0, 1.0)
    side[g.mouth.upper] = -1.0
    side[~np.isfinite(g.theta) | (g.row <= 0)] = 0.0
    return np.nan_to_num(u, nan=99.0), side


def face_weight(g: HeadGeometry) -> np.ndarray:
    """Smooth 0..1 weight of 'being face' on the skin (0 on eyeballs)."""
    v = g.vertices
    w = 1.0 - _smoothstep(v[:, 1], *HAIRLINE_Y)
    w *= 1.0 - _smoothstep(np.abs(azimuth(v)), np.radians(64.0), np.radians(80.0))
    w *= _smoothstep(v[:, 1] - neck_junction_y(v[:, 2]), 0.0, 0.012)
    w *= _smoothstep(ear_field(v), 0.006, 0.014)  # away from the ears
    return np.where(g.skin, np.clip(w, 0.0, 1.0), 0.0)


def build_masks(g: HeadGeometry) -> dict[str, np.ndarray]:
    v, skin = g.vertices, g.skin
    x, y, z = v.T
    ears = skin & (ear_field(v) < 0.006) & (np.abs(x) > 0.05)
    neck = skin & (y < neck_junction_y(z))
    face = skin & (face_weight(g) > 0.5) & ~ears & ~neck
    eye_x, eye_y = EYE_CENTRE[0], EYE_CENTRE[1]
    eye_sides = {}
    for name, sign in (("left_eye_region", 1.0), ("right_eye_region", -1.0)):
        inside = ((x - sign * eye_x) / 0.025) ** 2 + ((y - eye_y) / 0.019) ** 2 < 1.0
        eye_sides[name] = face & inside & (z > 0.035)
    band = face & (np.abs(x) < 0.06) & (y > eye_y - 0.021) & (y < 0.072)
    u, side = mouth_coords(g)
    up_h, lo_h = lip_heights(u)
    dtheta = np.nan_to_num(g.theta - g.theta_mouth)
    # The vermilion plus a margin of about one grid row, so triangles on the lip border are inside.
    lips = skin & (np.abs(u) <= 1.2) & (
        ((side < 0) & (-dtheta <= 1.45 * up_h)) | ((side > 0) & (dtheta <= 1.45 * lo_h)))
    lips[g.grid[g.mouth.row, list(g.mouth.corners)]] = True
    nose = face & (nose_field(v) < 0.0035) & (y > -0.022)
    scalp = skin & ~face & ~ears & ~neck & ((y > 0.035) | (np.abs(azimuth(v)) > np.radians(100.0)))
    boundary = np.zeros(len(v), bool)
    boundary[g.neck_boundary] = True
    left_ball = np.zeros(len(v), bool)
    left_ball[g.left_eyeball] = True
    right_ball = np.zeros(len(v), bool)
    right_ball[g.right_eyeball] = True
    masks = {
        "face": face, "eye_region": band | eye_sides["left_eye_region"] | eye_sides["right_eye_region"],
        "lips": lips & face, "nose": nose, "forehead": face & (y > BROW_TOP_Y), "scalp": scalp,
        "boundary": boundary, "neck": neck, "left_ear": ears & (x > 0), "right_ear": ears & (x < 0),
        "left_eyeball": left_ball, "right_eyeball": right_ball, **eye_sides,
    }
    return {name: np.nonzero(masks[name])[0].astype(np.int64) for name in MASK_NAMES}


# --- joints

def _ring_weights(g: HeadGeometry, ids: np.ndarray) -> np.ndarray:
    """Weights over one vertex per column, proportional to the column spacing, so that the
    centroid is the centre of the cross-section rather than biased towards the dense face."""
    phi = g.col_phi[g.col[ids]]
    order = np.argsort(phi)
    gaps = np.diff(np.concatenate([phi[order], [phi[order][0] + 2 * np.pi]]))
    span = np.empty_like(phi)
    span[order] = 0.5 * (gaps + np.roll(gaps, 1))
    return span / span.sum()


def _column_ring(g: HeadGeometry, y_target: float, exclude: np.ndarray) -> np.ndarray:
    """For every column, the skin vertex nearest to height y_target (ignoring `exclude`)."""
    out = []
    for j in range(len(g.col_phi)):
        cand = np.concatenate([g.grid[1:, j], g.grid_lower[1:, j]])
        cand = np.unique(cand[~exclude[cand]])
        out.append(cand[np.argmin(np.abs(g.vertices[cand, 1] - y_target))])
    return np.array(out, np.int64)


def build_joint_regressor(g: HeadGeometry) -> sp.csc_matrix:
    n_v = len(g.vertices)
    rows: list[np.ndarray] = []
    # Root: the open ring at the bottom of the neck.
    root = np.zeros(n_v)
    root[g.neck_boundary] = _ring_weights(g, g.neck_boundary)
    rows.append(root)
    # Neck: between a neck section and the head section at the jaw hinge, i.e. the upper neck.
    not_skin = ~g.skin
    low = _column_ring(g, -0.100, not_skin)
    high = _column_ring(g, -0.025, not_skin)
    neck = np.zeros(n_v)
    np.add.at(neck, low, 0.55 * _ring_weights(g, low))
    np.add.at(neck, high, 0.45 * _ring_weights(g, high))
    rows.append(neck)
    # Jaw: skin patches just in front of each ear at the hinge height; their centroid is on the midline.
    jaw = np.zeros(n_v)
    for sign in (1.0, -1.0):
        target = np.array([sign * 0.068, -0.012, 0.006])
        d = np.linalg.norm(g.vertices - target, axis=1)
        d[~g.skin] = np.inf
        near = np.argsort(d, kind="stable")[:12]
        jaw[near] += 0.5 / len(near)
    rows.append(jaw)
    for ball in (g.left_eyeball, g.right_eyeball):
        eye = np.zeros(n_v)
        eye[ball] = 1.0 / len(ball)
        rows.append(eye)
    reg = np.stack(rows)
    reg /= reg.sum(axis=1, keepdims=True)
    return sp.csc_matrix(reg)


# --- skinning

def _skin_laplacian(g: HeadGeometry) -> sp.csr_matrix:
    f = g.faces[g.face_triangle_kind == 0]
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    n = len(g.vertices)
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    adj = (adj + adj.T).tocsr()
    return (sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()


def _harmonic(lap: sp.csr_matrix, fixed: np.ndarray, values: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Solve the graph Laplace equation on `free` vertices with Dirichlet values on `fixed` ones."""
    out = np.zeros(lap.shape[0])
    out[fixed] = values
    a = lap[free][:, free].tocsc()
    b = -lap[free][:, fixed] @ values
    out[free] = spla.spsolve(a, b)
    return np.clip(out, 0.0, 1.0)


def build_weights(g: HeadGeometry) -> np.ndarray:
    v = g.vertices
    y, z = v[:, 1], v[:, 2]
    n = len(v)
    skin = g.skin
    # Root: the lower neck follows the body.
    w_root = np.where(skin, 1.0 - _smoothstep(y, -0.165, -0.115), 0.0)

    # Jaw: Dirichlet constraints, then a harmonic fill in between.
    y_line = -0.040 + np.maximum(0.0, 0.078 - z) * 0.4  # mouth corner back up to the hinge
    u, side = mouth_coords(g)
    lips_zone = (np.abs(u) <= 0.85) & (side != 0) & (y > MOUTH_Y - 0.03)
    junction = neck_junction_y(z)
    below_neck = y < junction - 0.003  # the throat stays with the head: only the skin under the chin stretches
    facing_down = _vertex_normals(v, g.faces)[:, 1] < -0.5
    jaw_core = skin & (y > junction + 0.015) & ~facing_down & (z > 0.02) & (
        ((y < y_line - 0.014) & ~lips_zone) | (lips_zone & (side > 0)))
    head_core = skin & ~jaw_core & (((y > y_line + 0.014) & ~lips_zone) | (lips_zone & (side < 0))
                                    | (z < -0.02) | below_neck)
    fixed = np.nonzero(jaw_core | head_core)[0]
    free = np.nonzero(skin & ~jaw_core & ~head_core)[0]
    w_jaw = _harmonic(_skin_laplacian(g), fixed, jaw_core[fixed].astype(float), free)
    w_jaw = np.where(skin, w_jaw, 0.0) * (1.0 - w_root)

    weights = np.zeros((n, 5))
    weights[:, 0] = w_root
    weights[:, 2] = w_jaw
    weights[:, 1] = np.where(skin, 1.0 - w_root - w_jaw, 0.0)
    weights[g.left_eyeball, 3] = 1.0
    weights[g.right_eyeball, 4] = 1.0
    return weights / weights.sum(axis=1, keepdims=True)


def build_posedirs(g: HeadGeometry, weights: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(V,3,36): row j-1 block of 9 holds beta * zone(v) * (v - J_j) in the column of (R - I)[a, b]."""
    v = g.vertices
    posedirs = np.zeros((len(v), 3, 36))
    zones = {
        1: (0.30, 4.0 * weights[:, 0] * (1.0 - weights[:, 0])),  # root/neck blend: the lower neck
        2: (0.15, 4.0 * weights[:, 2] * (1.0 - weights[:, 2])),  # jaw blend: cheeks, mouth corners, under the chin
    }
    for j, sign in ((3, 1.0), (4, -1.0)):  # lids follow the gaze a little
        centre = EYE_CENTRE * np.array([sign, 1.0, 1.0])
        d = np.linalg.norm(v - centre, axis=1)
        lid = g.skin & (d < 0.026) & (v[:, 1] > centre[1] - 0.002)  # upper lid and brow skin over that eye
        zones[j] = (0.12, np.where(lid, np.exp(-((d - 0.014) / 0.004) ** 2), 0.0))
    for j, (beta, zone) in zones.items():
        rel = v - joints[j]
        for a in range(3):
            posedirs[:, a, 9 * (j - 1) + 3 * a: 9 * (j - 1) + 3 * a + 3] = beta * zone[:, None] * rel
    return posedirs


# --- blendshapes

def build_shapedirs(g: HeadGeometry, rng: np.random.Generator) -> np.ndarray:
    """300 identity bases, orthogonal in the V*3 space, with decreasing standard deviations.

    Built from scalar fields f_k on the vertices (9 monomials up to degree 2, then 273 Gaussian
    bumps of decreasing width around random skin points), orthonormalised over the vertices.
    The vector fields f_m * e_axis (27, from the monomials) and f_k * d_k (273, a random unit
    direction each) are then orthonormal in the V*3 space with no further work: fields along
    different axes, or built from different orthonormal scalars, are orthogonal. Eyeball
    vertices take the fields' value at the eyeball centre, so eyeballs move rigidly, and the
    skin around each eye is evaluated at points pulled towards that centre (fully at the lid
    margins, not at all 2.5 cm away), so the lids move with the eyeball and no gap opens.
    """
    v = _eye_pulled_positions(g)
    n_mono, n_rbf = 9, NUM_SHAPE - 27
    rbf_centres = g.vertices[rng.choice(np.nonzero(g.skin)[0], size=n_rbf, replace=False)]
    rbf_widths = np.geomspace(0.055, 0.018, n_rbf)
    rbf_dirs = rng.normal(size=(n_rbf, 3))
    rbf_dirs /= np.linalg.norm(rbf_dirs, axis=1, keepdims=True)

    q = v / 0.1  # decimetres keep the monomials of order one
    scalars = np.empty((len(v), n_mono + n_rbf))
    scalars[:, :n_mono] = np.stack([q[:, 0], q[:, 1], q[:, 2], q[:, 0] ** 2, q[:, 1] ** 2, q[:, 2] ** 2,
                                    q[:, 0] * q[:, 1], q[:, 1] * q[:, 2], q[:, 0] * q[:, 2]], axis=1)
    d2 = ((v[:, None, :] - rbf_centres[None]) ** 2).sum(-1)
    scalars[:, n_mono:] = np.exp(-0.5 * d2 / rbf_widths ** 2)
    scalars = _orthonormalise(scalars)

    fields = np.zeros((len(v), 3, NUM_SHAPE))
    for m in range(n_mono):  # linear then quadratic fields, each along x, y and z
        for axis in range(3):
            fields[:, axis, 3 * m + axis] = scalars[:, m]
    fields[:, :, 27:] = scalars[:, None, n_mono:] * rbf_dirs.T[None]
    # Unit coefficient = one standard deviation; the RMS vertex displacement decays from 4 mm.
    rms = 0.004 * (1.0 + np.arange(NUM_SHAPE)) ** -0.7
    return fields * (rms * np.sqrt(len(v)))


def _eye_weight(g: HeadGeometry) -> np.ndarray:
    """1 on the eyeballs and lid margins, fading to 0 at 2.5 cm from the eyeball centres."""
    w = np.zeros(len(g.vertices))
    for centre in g.eye_centres:
        d = np.linalg.norm(g.vertices - centre, axis=1)
        w = np.maximum(w, 1.0 - _smoothstep(d, EYEBALL_RADIUS + 0.0015, 0.025))
    return w


def _eye_pulled_positions(g: HeadGeometry) -> np.ndarray:
    v = g.vertices.copy()
    w = _eye_weight(g)
    for ball, centre in ((g.left_eyeball, g.eye_centres[0]), (g.right_eyeball, g.eye_centres[1])):
        near = np.linalg.norm(v - centre, axis=1) < 0.025
        v[near] += w[near, None] * (centre - v[near])
        v[ball] = centre
    return v


def _orthonormalise(a: np.ndarray) -> np.ndarray:
    """Columns made orthonormal in order (what Gram-Schmidt gives), by Cholesky QR done twice.

    Only numpy's own loops are used (einsum without BLAS, Cholesky and triangular inverse
    written out), so the result does not depend on how many threads BLAS runs: the files
    must come out byte-identical on every run.
    """
    q = a
    for _ in range(2):  # the second pass removes the first one's loss of orthogonality
        gram = np.einsum("ij,ik->jk", q, q)
        inv_t = np.ascontiguousarray(_lower_inverse(_cholesky(gram)).T)
        q = np.einsum("ik,kj->ij", q, inv_t)
    return q


def _cholesky(g: np.ndarray) -> np.ndarray:
    n = len(g)
    low = np.zeros_like(g)
    for j in range(n):
        low[j, j] = np.sqrt(g[j, j] - np.einsum("k,k->", low[j, :j], low[j, :j]))
        low[j + 1:, j] = (g[j + 1:, j] - np.einsum("ik,k->i", low[j + 1:, :j], low[j, :j])) / low[j, j]
    return low


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    n = len(low)
    inv = np.zeros_like(low)
    for i in range(n):  # forward substitution, one row of the inverse at a time
        row = -np.einsum("k,kj->j", low[i, :i], inv[:i])
        row[i] += 1.0
        inv[i] = row / low[i, i]
    return inv


def _gauss(v: np.ndarray, centre, radius: float) -> np.ndarray:
    return np.exp(-0.5 * np.sum((v - np.asarray(centre)) ** 2, axis=1) / radius ** 2)


def build_expressiondirs(g: HeadGeometry, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    v = g.vertices
    n = len(v)
    mask = _smoothstep(face_weight(g), 0.5, 0.9)  # exactly zero wherever the face mask is not
    u, side = mouth_coords(g)
    lateral = np.where(np.abs(u) < 1.0, np.cos(0.5 * np.pi * np.minimum(np.abs(u), 1.0)) ** 2, 0.0)
    mouth_c = np.array([0.0, MOUTH_Y, 0.09])
    corner = np.array([0.0255, MOUTH_Y, 0.079])
    up_lip = lateral * (side < 0) * _gauss(v, mouth_c + [0, 0.006, 0], 0.016)
    lo_lip = lateral * (side > 0) * _gauss(v, mouth_c - [0, 0.008, 0], 0.018)
    normals = _vertex_normals(v, g.faces)
    ex, ey, ez = np.eye(3)

    def at(sign: float, p) -> np.ndarray:
        return np.asarray(p, dtype=float) * np.array([sign, 1.0, 1.0])

    designed: list[tuple[str, np.ndarray]] = []
    # Lips part without the jaw.
    designed.append(("mouth_open", (0.0025 * up_lip[:, None] - 0.0035 * lo_lip[:, None]) * ey))
    for name, sign in (("smile_left", 1.0), ("smile_right", -1.0)):
        c = _gauss(v, at(sign, corner), 0.014)
        cheek = _gauss(v, at(sign, [0.036, -0.012, 0.062]), 0.016)
        d = c[:, None] * (0.003 * ey - 0.0015 * ez + 0.0015 * sign * ex) + 0.0015 * cheek[:, None] * ey
        designed.append((name, d))
    corners = _gauss(v, corner, 0.013) + _gauss(v, at(-1, corner), 0.013)
    designed.append(("mouth_corners_down", -0.003 * corners[:, None] * ey))
    lips_all = lateral * _gauss(v, mouth_c, 0.02)
    inward = -np.sign(v[:, 0]) * (_gauss(v, corner, 0.012) + _gauss(v, at(-1, corner), 0.012))
    designed.append(("lip_pucker", 0.004 * lips_all[:, None] * ez + 0.003 * inward[:, None] * ex))
    designed.append(("lip_funnel", 0.003 * lips_all[:, None] * ez
                     + (0.0015 * up_lip[:, None] - 0.002 * lo_lip[:, None]) * ey))
    designed.append(("lip_stretch", -0.004 * inward[:, None] * ex - 0.001 * corners[:, None] * ey))
    designed.append(("upper_lip_raise", 0.003 * up_lip[:, None] * ey
                     + 0.001 * _gauss(v, [0.0, -0.014, 0.095], 0.012)[:, None] * ey))
    designed.append(("lower_lip_depress", (-0.0035 * ey + 0.001 * ez) * lo_lip[:, None]))
    for name, sign in (("brow_inner_raise_left", 1.0), ("brow_inner_raise_right", -1.0)):
        designed.append((name, 0.004 * _gauss(v, at(sign, [0.018, 0.058, 0.08]), 0.012)[:, None] * ey))
    for name, sign in (("brow_outer_raise_left", 1.0), ("brow_outer_raise_right", -1.0)):
        designed.append((name, 0.004 * _gauss(v, at(sign, [0.046, 0.056, 0.064]), 0.012)[:, None] * ey))
    inner = _gauss(v, [0.017, 0.056, 0.08], 0.011) + _gauss(v, [-0.017, 0.056, 0.08], 0.011)
    designed.append(("brow_lower", -0.003 * inner[:, None] * ey - 0.002 * (np.sign(v[:, 0]) * inner)[:, None] * ex))
    for name, sign in (("cheek_puff_left", 1.0), ("cheek_puff_right", -1.0)):
        designed.append((name, 0.005 * _gauss(v, at(sign, [0.042, -0.03, 0.055]), 0.017)[:, None] * normals))
    wrinkle = _gauss(v, [0.01, 0.022, 0.086], 0.009) + _gauss(v, [-0.01, 0.022, 0.086], 0.009)
    designed.append(("nose_wrinkle", (0.002 * ey - 0.001 * ez) * wrinkle[:, None]
                     + 0.001 * up_lip[:, None] * ey))
    for name, sign in (("squint_left", 1.0), ("squint_right", -1.0)):
        lower_lid = _gauss(v, at(sign, [0.031, 0.024, 0.067]), 0.008) * (v[:, 1] < EYE_CENTRE[1])
        cheek = _gauss(v, at(sign, [0.035, 0.008, 0.065]), 0.014)
        designed.append((name, (0.002 * lower_lid + 0.001 * cheek)[:, None] * ey))
    designed.append(("mouth_left", 0.003 * _gauss(v, mouth_c, 0.02)[:, None] * ex))
    assert len(designed) == NUM_DESIGNED_EXPRESSIONS

    dirs = np.zeros((n, 3, NUM_EXPRESSION))
    names = [name for name, _ in designed]
    for k, (_, d) in enumerate(designed):
        dirs[:, :, k] = d
    # The rest: localised random bumps on the face with decreasing magnitude.
    face_ids = np.nonzero(mask > 0.9)[0]
    eye_w = _eye_weight(g)
    for k in range(NUM_DESIGNED_EXPRESSIONS, NUM_EXPRESSION):
        c = v[rng.choice(face_ids)]
        radius = rng.uniform(0.008, 0.02)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        amp = 0.002 * (1.0 + k - NUM_DESIGNED_EXPRESSIONS) ** -0.35
        # Damped at the lid margins, which stay on the eyeballs (only designed actions move them).
        dirs[:, :, k] = amp * (_gauss(v, c, radius) * (1.0 - eye_w))[:, None] * direction
        names.append(f"random_{k:02d}")
    dirs *= mask[:, None, None]
    return dirs, names


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, f[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def build_eyelids(g: HeadGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(l_eyelid, r_eyelid): closed minus open positions, non-zero only on that eye's upper lid."""
    return g.closed_lid["left"] - g.vertices, g.closed_lid["right"] - g.vertices


@dataclass
class Rig:
    masks: dict[str, np.ndarray]
    j_regressor: sp.csc_matrix
    joints: np.ndarray
    weights: np.ndarray
    posedirs: np.ndarray
    shapedirs: np.ndarray  # (V,3,400): 300 identity then 100 expression
    expression_names: list[str]
    l_eyelid: np.ndarray
    r_eyelid: np.ndarray


def build_rig(g: HeadGeometry, seed: int) -> Rig:
    rng = np.random.default_rng(seed)
    masks = build_masks(g)
    reg = build_joint_regressor(g)
    joints = reg @ g.vertices
    weights = build_weights(g)
    posedirs = build_posedirs(g, weights, joints)
    shape = build_shapedirs(g, rng)
    expr, names = build_expressiondirs(g, rng)
    l_eyelid, r_eyelid = build_eyelids(g)
    return Rig(masks=masks, j_regressor=reg, joints=joints, weights=weights, posedirs=posedirs,
               shapedirs=np.concatenate([shape, expr], axis=2), expression_names=names,
               l_eyelid=l_eyelid, r_eyelid=r_eyelid)
