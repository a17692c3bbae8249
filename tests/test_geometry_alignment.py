"""Umeyama and scan-to-mesh ICP: exact recovery, reflections, weights, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from fbench.geometry import ClosestPointIndex, Similarity, icp, umeyama


def _random_similarity(rng: np.random.Generator, angle: float | None = None) -> Similarity:
    if angle is None:
        rot = Rotation.random(random_state=rng).as_matrix()
    else:
        axis = rng.normal(size=3)
        rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    return Similarity(float(rng.uniform(0.5, 2.0)), rot, rng.normal(size=3) * 5.0)


def _rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(Rotation.from_matrix(a.T @ b).magnitude())


# ------------------------------------------------------------------------------ Umeyama


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 60))
def test_umeyama_recovers_exact_similarity(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    truth = _random_similarity(rng)
    src = rng.normal(size=(n, 3)) * rng.uniform(0.1, 10.0)
    dst = truth.apply(src)
    s, rot, t = umeyama(src, dst)
    assert s == pytest.approx(truth.scale, rel=1e-6)
    np.testing.assert_allclose(rot, truth.rotation, atol=1e-6)
    np.testing.assert_allclose(t, truth.translation, atol=1e-6 * (1 + np.abs(truth.translation).max()))
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_umeyama_without_scale() -> None:
    rng = np.random.default_rng(1)
    truth = _random_similarity(rng)
    src = rng.normal(size=(40, 3))
    rigid = Similarity(1.0, truth.rotation, truth.translation)
    s, rot, t = umeyama(src, rigid.apply(src), with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(rot, truth.rotation, atol=1e-10)
    np.testing.assert_allclose(t, truth.translation, atol=1e-10)
    # With a true scale != 1 the rigid fit still returns s = 1 and the optimal rotation.
    s2, rot2, _ = umeyama(src, truth.apply(src), with_scale=False)
    assert s2 == 1.0
    np.testing.assert_allclose(rot2, truth.rotation, atol=1e-10)


def test_umeyama_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3)) * [3.0, 2.0, 1.0]
    mirror = np.diag([1.0, 1.0, -1.0])
    dst = src @ mirror.T + 0.01 * rng.normal(size=src.shape)
    s, rot, t = umeyama(src, dst, with_scale=False)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # It is the best proper rotation: compare with scipy's (independent) Kabsch solver.
    ref, _ = Rotation.align_vectors(dst - dst.mean(0), src - src.mean(0))
    np.testing.assert_allclose(rot, ref.as_matrix(), atol=1e-8)
    np.testing.assert_allclose(t, dst.mean(0) - rot @ src.mean(0), atol=1e-12)


def test_umeyama_weights() -> None:
    rng = np.random.default_rng(3)
    truth = _random_similarity(rng)
    src = rng.normal(size=(50, 3))
    dst = truth.apply(src)
    dst[:10] += rng.normal(scale=5.0, size=(10, 3))  # gross outliers
    w = np.ones(50)
    w[:10] = 0.0
    s, rot, t = umeyama(src, dst, weights=w)
    assert s == pytest.approx(truth.scale, rel=1e-10)
    np.testing.assert_allclose(rot, truth.rotation, atol=1e-10)
    # Integer weights equal repeating the rows.
    k = rng.integers(1, 4, size=50)
    noisy = truth.apply(src) + 0.1 * rng.normal(size=src.shape)
    a = umeyama(src, noisy, weights=k.astype(float))
    b = umeyama(np.repeat(src, k, axis=0), np.repeat(noisy, k, axis=0))
    assert a.scale == pytest.approx(b.scale, rel=1e-12)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=1e-12)
    np.testing.assert_allclose(a.translation, b.translation, atol=1e-12)


@pytest.mark.parametrize(
    ("src", "match"),
    [
        (np.zeros((2, 3)), "at least 3"),
        (np.outer(np.arange(5.0), [1.0, 2.0, 3.0]), "collinear"),
        (np.full((5, 3), 2.0), "collinear"),
    ],
)
def test_umeyama_degenerate_input(src: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        umeyama(src, src + 1.0)


def test_similarity_algebra() -> None:
    rng = np.random.default_rng(4)
    a, b = _random_similarity(rng), _random_similarity(rng)
    x = rng.normal(size=(7, 3))
    np.testing.assert_allclose(a.inverse().apply(a.apply(x)), x, atol=1e-12)
    np.testing.assert_allclose(a.compose(b).apply(x), a.apply(b.apply(x)), atol=1e-12)
    back = Similarity.from_matrix(a.matrix())
    assert back.scale == pytest.approx(a.scale)
    np.testing.assert_allclose(back.rotation, a.rotation, atol=1e-12)
    homo = np.concatenate((x, np.ones((7, 1))), axis=1) @ a.matrix().T
    np.testing.assert_allclose(homo[:, :3], a.apply(x), atol=1e-12)


# ---------------------------------------------------------------------------------- ICP


def _target() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric closed surface (so the alignment is unique), about 2 units across."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    v = np.asarray(sphere.vertices) * [1.0, 0.75, 0.55]
    v[:, 0] += 0.25 * v[:, 1] ** 2 + 0.15 * np.sin(3.0 * v[:, 2])
    v[:, 2] += 0.2 * np.maximum(v[:, 0], 0.0) ** 2
    return v, np.asarray(sphere.faces)


def _surface_samples(v: np.ndarray, f: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    face = rng.choice(len(f), size=n, p=area / area.sum())
    w = rng.dirichlet(np.ones(3), size=n)
    return np.einsum("ni,nij->nj", w, v[f[face]])


def _perturb(t: Similarity, rng: np.random.Generator) -> Similarity:
    """A wrong start: ~6 degrees, 0.08 units and 4% scale away from ``t``."""
    delta = _random_similarity(rng, angle=np.deg2rad(6.0))
    delta = Similarity(1.04, delta.rotation, rng.normal(size=3) / np.sqrt(3) * 0.08)
    return delta.compose(t)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, ClosestPointIndex]:
    v, f = _target()
    return v, f, ClosestPointIndex(v, f)


def _displacement(est: Similarity, truth: Similarity, points: np.ndarray) -> float:
    """Largest distance between where ``est`` and ``truth`` put the points.

    The error that matters for a scan: a translation error at the origin mixes in the
    rotation error times the distance to the origin.
    """
    return float(np.linalg.norm(est.apply(points) - truth.apply(points), axis=1).max())


def test_icp_recovers_transform_without_noise(scene: tuple) -> None:
    v, f, index = scene
    rng = np.random.default_rng(5)
    truth = Similarity(1.3, Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix(), np.array([0.4, -1.0, 2.0]))
    on_target = _surface_samples(v, f, 500, rng)
    source = truth.inverse().apply(on_target)  # ICP must find `truth`
    init = _perturb(truth, rng)
    assert _displacement(init, truth, source) > 0.1
    res = icp(source, v, f, init=init, index=index, max_iterations=600, tol=0.0, atol=1e-9)
    assert res.converged and res.history[-1] <= 1e-9
    assert res.transform.scale == pytest.approx(truth.scale, rel=1e-6)
    assert _rotation_angle(res.transform.rotation, truth.rotation) < 1e-6
    np.testing.assert_allclose(res.transform.translation, truth.translation, atol=1e-6)
    assert _displacement(res.transform, truth, source) < 1e-6
    assert res.history[0] > 1e-2
    assert len(res.history) == len(res.mean_distances) == res.iterations + 1
    np.testing.assert_allclose(res.distances, index.query(res.transform.apply(source)).distances)
    # Without acceleration (linear convergence) 3x as many steps are not enough.
    budget = 3 * res.iterations
    plain = icp(source, v, f, init=init, index=index, max_iterations=budget, tol=0.0, atol=1e-9, accelerate=False)
    assert not plain.converged and plain.history[-1] > 1e-9
    assert plain.history[-1] < plain.history[0]  # but it is heading the same way


def test_icp_with_noise_reaches_the_noise_level(scene: tuple) -> None:
    v, f, index = scene
    rng = np.random.default_rng(6)
    truth = _random_similarity(rng)
    sigma = 0.01  # 0.5% of the object size
    on_target = _surface_samples(v, f, 1500, rng) + rng.normal(scale=sigma, size=(1500, 3))
    source = truth.inverse().apply(on_target)
    init = _perturb(truth, rng)
    res = icp(source, v, f, init=init, index=index, max_iterations=300)
    assert res.converged
    # Started ~10 sigma away; 1500 points pin the pose below one point's noise.
    assert _displacement(init, truth, source) > 10 * sigma
    assert _displacement(res.transform, truth, source) < 0.5 * sigma
    assert res.transform.scale == pytest.approx(truth.scale, rel=0.3 * sigma)
    # The fit is the least-squares optimum: no worse than the true pose on this data.
    at_truth = index.query(truth.apply(source)).distances
    assert (res.distances**2).mean() <= (at_truth**2).mean() * (1 + 1e-3)
    # Residual ~ mean |normal component of the noise| = sigma * sqrt(2 / pi).
    assert res.mean_distances[-1] == pytest.approx(sigma * np.sqrt(2 / np.pi), rel=0.1)
    # (ICP minimises the mean *squared* distance, so the mean distance in the history
    # may tick up by ~1e-4 near the end; it must have dropped to the residual level.)
    assert res.history[-1] < res.history[0] / 5
    # Plain (unaccelerated) ICP never increases the mean squared distance and lands on
    # the same optimum.
    plain = icp(source, v, f, init=init, index=index, max_iterations=300, accelerate=False)
    assert plain.converged
    sq = [(index.query(t.apply(source)).distances ** 2).mean() for t in (plain.transform, res.transform)]
    assert sq[1] == pytest.approx(sq[0], rel=1e-3)
    assert _displacement(plain.transform, truth, source) < 0.5 * sigma


def _with_outliers(
    v: np.ndarray, f: np.ndarray, rng: np.random.Generator, n_out: int, radius: tuple[float, float]
) -> tuple[Similarity, np.ndarray, int]:
    truth = _random_similarity(rng)
    n_in = 1000
    inliers = _surface_samples(v, f, n_in, rng) + rng.normal(scale=0.005, size=(n_in, 3))
    direction = rng.normal(size=(n_out, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    outliers = direction * rng.uniform(*radius, size=(n_out, 1)) + [0.3, 0.0, 0.0]
    return truth, truth.inverse().apply(np.concatenate((inliers, outliers))), n_in


@pytest.mark.parametrize(
    ("robust", "kwargs"), [("trimmed", {"trim_fraction": 0.8}), ("geman-mcclure", {})]
)
def test_robust_icp_ignores_gross_outliers(scene: tuple, robust: str, kwargs: dict) -> None:
    v, f, index = scene
    rng = np.random.default_rng(7)
    # 17% of the points 1.5-2.5 units off a 2-unit object (hair, shoulders, a cap).
    truth, source, n_in = _with_outliers(v, f, rng, 200, (2.5, 3.5))
    init = _perturb(truth, rng)
    plain = icp(source, v, f, init=init, index=index, max_iterations=30)
    res = icp(source, v, f, init=init, index=index, max_iterations=200, robust=robust, **kwargs)  # type: ignore[arg-type]
    assert _displacement(plain.transform, truth, source[:n_in]) > 0.2  # plain least squares fails
    assert res.converged
    assert _displacement(res.transform, truth, source[:n_in]) < 0.005  # the noise level
    assert res.weights[n_in:].max() < 1e-3 * res.weights[:n_in].mean()


def test_huber_icp_reduces_moderate_outlier_bias(scene: tuple) -> None:
    v, f, index = scene
    rng = np.random.default_rng(9)
    # 5% of the points a little off the surface (0.05-0.2 units): where Huber is meant.
    truth, source, n_in = _with_outliers(v, f, rng, 50, (1.2, 1.4))
    init = _perturb(truth, rng)
    plain = icp(source, v, f, init=init, index=index, max_iterations=100)
    huber = icp(source, v, f, init=init, index=index, max_iterations=100, robust="huber")
    err_plain = _displacement(plain.transform, truth, source[:n_in])
    err_huber = _displacement(huber.transform, truth, source[:n_in])
    assert huber.converged
    assert err_huber < 0.5 * err_plain
    assert huber.weights[n_in:].mean() < 0.5 * huber.weights[:n_in].mean()


def test_icp_iteration_limit_and_identity_init(scene: tuple) -> None:
    v, f, index = scene
    rng = np.random.default_rng(8)
    pts = _surface_samples(v, f, 500, rng)
    zero = icp(pts + 0.05, v, f, index=index, max_iterations=0)
    assert zero.iterations == 0 and not zero.converged and len(zero.history) == 1
    # A plain (s, R, t) tuple, e.g. straight from umeyama on landmarks, is accepted.
    shifted = icp(pts + 0.05, v, f, index=index, max_iterations=0, init=(1.0, np.eye(3), [-0.05] * 3))
    assert shifted.history[0] < 1e-9 < zero.history[0]
    np.testing.assert_array_equal(zero.transform.rotation, np.eye(3))
    three = icp(pts + 0.05, v, f, index=index, max_iterations=3, tol=0.0)
    assert three.iterations == 3 and len(three.history) == 4 and not three.converged
    assert three.history[-1] < three.history[0]
    # Points already on the surface: converged immediately at (numerically) zero error.
    exact = icp(pts, v, f, index=index, with_scale=False)
    assert exact.converged and exact.history[-1] < 1e-9
    with pytest.raises(ValueError, match="trim_fraction"):
        icp(pts, v, f, index=index, robust="trimmed", trim_fraction=0.0)
