"""Bad inputs to the geometry code fail early with a message that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

from fbench.geometry.alignment import Similarity, icp, umeyama
from fbench.geometry.distance import (
    ClosestPointIndex,
    MeshTopology,
    point_mesh_distance,
    point_mesh_distance_stacked,
)

RNG = np.random.default_rng(0)
SRC = RNG.normal(size=(6, 3))
DST = SRC + 1.0
TET_V = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
TET_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def _with(a: np.ndarray, index, value) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


@pytest.mark.parametrize(("src", "dst", "weights", "match"), [
    (_with(SRC, (2, 1), np.nan), DST, None, "NaN or infinite"),
    (SRC, _with(DST, (0, 0), np.inf), None, "NaN or infinite"),
    (SRC, DST[:5], None, r"both be \(N, 2\) or \(N, 3\), got \(6, 3\) and \(5, 3\)"),
    (np.c_[SRC, SRC[:, :1]], np.c_[DST, DST[:, :1]], None, r"both be \(N, 2\) or \(N, 3\)"),  # 4D points
    (SRC[None], DST[None], None, r"both be \(N, 2\) or \(N, 3\)"),
    (SRC, DST, np.ones(5), r"weights must be \(N,\) finite and non-negative"),
    (SRC, DST, _with(np.ones(6), 3, -0.5), "non-negative"),
    (SRC, DST, _with(np.ones(6), 1, np.nan), "finite"),
    (SRC, DST, np.ones((6, 1)), r"weights must be \(N,\)"),
    (SRC, DST, np.array([1.0, 1.0, 0, 0, 0, 0]), "at least 3 points with positive weight"),
])
def test_umeyama_rejects_bad_input(src, dst, weights, match) -> None:
    with pytest.raises(ValueError, match=match):
        umeyama(src, dst, weights=weights)


@pytest.mark.parametrize(("matrix", "match"), [
    (np.eye(3), r"\(3, 4\) or \(4, 4\)"),
    (np.hstack([np.diag([1.0, 1.0, -1.0]), np.zeros((3, 1))]), "positive scale and det"),
    (np.zeros((3, 4)), "positive scale"),
])
def test_similarity_from_matrix_rejects_non_similarities(matrix, match) -> None:
    with pytest.raises(ValueError, match=match):
        Similarity.from_matrix(matrix)


@pytest.mark.parametrize(("source", "kwargs", "match"), [
    (_with(SRC, (0, 2), np.nan), {}, "source contains NaN or infinite"),
    (SRC[:2], {}, r"N >= 3, got \(2, 3\)"),
    (SRC[:, :2], {}, r"source must be \(N, 3\)"),
    (SRC, {"robust": "cauchy"}, "unknown robust kind 'cauchy'"),
    (SRC, {"robust": "Huber"}, "unknown robust kind 'Huber'"),
    (SRC, {"robust": "trimmed", "trim_fraction": 0.0}, r"trim_fraction must be in \(0, 1\]"),
    (SRC, {"robust": "trimmed", "trim_fraction": 1.5}, "trim_fraction"),
    (SRC, {"max_iterations": -1}, "max_iterations must be >= 0"),
])
def test_icp_rejects_bad_input(source, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        icp(source, TET_V, TET_F, **kwargs)


def test_icp_rejects_a_bad_target() -> None:
    with pytest.raises(ValueError, match="vertices contain NaN"):
        icp(SRC, _with(TET_V, (1, 1), np.nan), TET_F)
    with pytest.raises(ValueError, match="out of range"):
        icp(SRC, TET_V, _with(TET_F, (2, 2), 4))


@pytest.mark.parametrize(("vertices", "faces", "match"), [
    (_with(TET_V, (3, 0), np.nan), TET_F, "vertices contain NaN or infinite"),
    (_with(TET_V, (0, 2), -np.inf), TET_F, "vertices contain NaN or infinite"),
    (TET_V[:, :2], TET_F, r"vertices must have shape \(N, 3\)"),
    (TET_V, _with(TET_F, (1, 2), 4), r"out of range: must lie in \[0, 4\), got \[0, 4\]"),
    (TET_V, _with(TET_F, (0, 0), -1), r"out of range: must lie in \[0, 4\), got \[-1, 3\]"),
    (TET_V, TET_F.astype(float) + 0.5, "integer vertex indices"),
    (TET_V, TET_F[:, :2], r"faces must have shape \(F, 3\)"),
    (TET_V, TET_F.ravel(), r"faces must have shape \(F, 3\)"),
])
def test_distance_rejects_bad_meshes(vertices, faces, match) -> None:
    with pytest.raises(ValueError, match=match):
        point_mesh_distance(np.zeros((2, 3)), vertices, faces)


def test_distance_rejects_bad_points_and_mismatched_topology() -> None:
    with pytest.raises(ValueError, match="points contain NaN or infinite"):
        ClosestPointIndex(TET_V, TET_F).query(np.array([[0.1, np.nan, 0.1]]))
    with pytest.raises(ValueError, match="topology has 5 vertices, vertices has 4"):
        ClosestPointIndex(TET_V, TET_F, topology=MeshTopology(TET_F, 5))


@pytest.mark.parametrize(("points", "vertices", "match"), [
    (np.zeros((2, 5, 3)), np.stack([TET_V] * 3), "batch sizes differ: 2 point sets, 3 meshes"),
    (np.zeros((5, 3)), np.stack([TET_V] * 2), r"points must have shape \(B, N, 3\)"),
    (np.zeros((2, 5, 3)), TET_V, r"vertices must have shape \(B, V, 3\)"),
    (np.zeros((1, 5, 3)), _with(np.stack([TET_V]), (0, 1, 1), np.nan), "vertices contain NaN"),
])
def test_stacked_distance_rejects_bad_input(points, vertices, match) -> None:
    with pytest.raises(ValueError, match=match):
        point_mesh_distance_stacked(points, vertices, TET_F)
