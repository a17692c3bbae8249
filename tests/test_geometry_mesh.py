"""Mesh I/O: OBJ/PLY round trips, vertex order, UV seams, bad files, MultiFace formats."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from fbench.geometry import (
    Mesh,
    MeshError,
    read_mesh,
    read_multiface_bin,
    read_multiface_transform,
    write_mesh,
    write_multiface_bin,
    write_multiface_transform,
)

# A quad split into two triangles whose texture has a seam: vertices 0 and 2 carry
# different UVs in the two faces (as in FLAME's and MultiFace's topology OBJs), plus an
# unreferenced vertex 4 that must survive (vertex ids are correspondences).
SEAM_OBJ = """\
# test
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 5 5 5
vt 0 0
vt 0.5 0
vt 0.5 0.5
vt 0 0.5
vt 1 1
vt 0.9 0.9
vn 0 0 1
f 1/1/1 2/2/1 3/3/1
f 1/5/1 3/6/1 4/4/1
"""


def _random_mesh(rng: np.random.Generator, units: str = "mm", **extra: object) -> Mesh:
    v = rng.normal(size=(30, 3)) * 100.0
    f = rng.integers(0, 30, size=(40, 3))
    return Mesh(v, f, units, **extra)  # type: ignore[arg-type]


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ------------------------------------------------------------------------------ OBJ


def test_obj_seams_keep_vertex_order_and_corner_uvs(tmp_path: Path) -> None:
    mesh = read_mesh(_write(tmp_path / "seam.obj", SEAM_OBJ), units="m")
    assert mesh.num_vertices == 5  # the unreferenced vertex is kept
    np.testing.assert_array_equal(mesh.vertices[4], [5, 5, 5])
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])
    assert mesh.uv is not None and mesh.uv_faces is not None
    np.testing.assert_array_equal(mesh.uv_faces, [[0, 1, 2], [4, 5, 3]])
    # Vertex 0 really has two UVs, so there is no per-vertex UV.
    np.testing.assert_array_equal(mesh.uv[mesh.uv_faces[0, 0]], [0, 0])
    np.testing.assert_array_equal(mesh.uv[mesh.uv_faces[1, 0]], [1, 1])
    assert mesh.vertex_uv() is None
    assert mesh.units == "m"


def test_obj_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    uv = rng.uniform(size=(50, 2))
    uv_faces = rng.integers(0, 50, size=(40, 3))
    colors = rng.integers(0, 256, size=(30, 3)).astype(np.uint8)
    mesh = _random_mesh(rng, colors=colors, uv=uv, uv_faces=uv_faces)
    mesh.vertices[0] = [1 / 3, -2e-300, 1e17]  # digits that %.6f-style writers lose
    path = tmp_path / "sub" / "m.obj"
    write_mesh(path, mesh)
    back = read_mesh(path, units="mm")
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.colors, colors)
    np.testing.assert_array_equal(back.uv, uv)
    np.testing.assert_array_equal(back.uv_faces, uv_faces)
    assert not list(path.parent.glob(".*tmp"))  # atomic write left nothing behind
    # Same permissions as a plain open() would give (mkstemp alone makes 0600).
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_obj_polygons_negative_indices_and_slash_forms(tmp_path: Path) -> None:
    text = """\
o thing
g group
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
s off
usemtl skin
f 1//1 2//1 3//1 4//1
f -4 -2 -1
l 1 2
"""
    mesh = read_mesh(_write(tmp_path / "quad.obj", text), units="m")
    # Quad fan-triangulated in order, then the relative-index triangle (1, 3, 4).
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    assert mesh.uv is None and mesh.colors is None


def test_obj_vertex_colours_in_0_1_and_0_255(tmp_path: Path) -> None:
    a = read_mesh(_write(tmp_path / "a.obj", "v 0 0 0 1 0.5 0\nv 1 0 0 0 0 1\nv 0 1 0 0 0 0\nf 1 2 3\n"), units="m")
    np.testing.assert_array_equal(a.colors, [[255, 128, 0], [0, 0, 255], [0, 0, 0]])
    b = read_mesh(_write(tmp_path / "b.obj", "v 0 0 0 255 128 0\nv 1 0 0 0 0 255\nv 0 1 0 0 0 0\nf 1 2 3\n"), units="m")
    np.testing.assert_array_equal(b.colors, a.colors)


# ------------------------------------------------------------------------------ PLY


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path: Path, binary: bool) -> None:
    rng = np.random.default_rng(1)
    colors = rng.integers(0, 256, size=(30, 3)).astype(np.uint8)
    mesh = _random_mesh(rng, colors=colors)
    mesh.faces[:, 0] = np.minimum(mesh.faces[:, 0], 28)  # vertex 29 may be unreferenced
    path = tmp_path / "m.ply"
    write_mesh(path, mesh, binary=binary)
    back = read_mesh(path, units="mm")
    assert back.num_vertices == mesh.num_vertices
    # PLY stores float32 coordinates (binary: bit-exact float32; ASCII: 8 decimals).
    np.testing.assert_allclose(back.vertices, mesh.vertices, rtol=1e-7, atol=1e-5)
    if binary:
        np.testing.assert_array_equal(back.vertices, mesh.vertices.astype(np.float32))
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.colors, colors)


def test_ply_per_vertex_uv_round_trip_and_seam_refusal(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    uv = rng.uniform(size=(30, 2))
    mesh = _random_mesh(rng, uv=uv)
    mesh.faces[mesh.faces == 29] = 0  # vertex 29 unreferenced: its UV must survive too
    for binary in (True, False):
        write_mesh(tmp_path / "uv.ply", mesh, binary=binary)
        back = read_mesh(tmp_path / "uv.ply", units="mm")
        np.testing.assert_allclose(back.uv, uv, atol=1e-7)
        assert back.num_vertices == 30
    # Per-corner UVs with a seam cannot be written to PLY; nothing is written.
    seam = read_mesh(_write(tmp_path / "seam.obj", SEAM_OBJ), units="m")
    with pytest.raises(MeshError, match="seams"):
        write_mesh(tmp_path / "seam.ply", seam)
    assert not (tmp_path / "seam.ply").exists()


def test_ply_quads_are_triangulated(tmp_path: Path) -> None:
    text = (
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
        "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"
    )
    mesh = read_mesh(_write(tmp_path / "q.ply", text), units="mm")
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])


# ------------------------------------------------------------------------- bad files

PLY_HEAD = (
    "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
    "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
)


def _binary_ply(tmp_path: Path) -> bytes:
    mesh = _random_mesh(np.random.default_rng(3))
    write_mesh(tmp_path / "full.ply", mesh)
    return (tmp_path / "full.ply").read_bytes()


BAD_FILES: list[tuple[str, str, object]] = [
    ("empty.obj", "empty", ""),
    ("empty.ply", "empty", ""),
    ("nan.obj", "NaN", "v 0 0 0\nv nan 1 0\nv 0 1 0\nf 1 2 3\n"),
    ("inf.obj", "NaN or infinite", "v 0 0 0\nv inf 1 0\nv 0 1 0\nf 1 2 3\n"),
    ("range.obj", "out of range", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n"),
    ("zero.obj", "start at 1", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n"),
    ("nofaces.obj", "no faces", "v 0 0 0\nv 1 0 0\nv 0 1 0\n"),
    ("noverts.obj", "no vertices", "# nothing here\n"),
    ("garbage.obj", "line 2", "v 0 0 0\nv 1 zero 0\nv 0 1 0\nf 1 2 3\n"),
    ("short.obj", "line 1", "v 0 0\n"),
    ("cut.obj", "line 4", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n"),
    ("nan.ply", "NaN", PLY_HEAD + "0 0 0\nnan 1 0\n0 1 0\n3 0 1 2\n"),
    ("range.ply", "out of range", PLY_HEAD + "0 0 0\n1 1 0\n0 1 0\n3 0 1 7\n"),
    ("cut_ascii.ply", "truncated", PLY_HEAD + "0 0 0\n1 1 0\n"),
    ("cut_faces.ply", "truncated", PLY_HEAD.replace("face 1", "face 2") + "0 0 0\n1 1 0\n0 1 0\n3 0 1 2\n"),
    ("notply.ply", "not a PLY", "hello\n"),
    ("noheader.ply", "header", "ply\nformat ascii 1.0\n"),
    ("mesh.stl", "unsupported", "solid x\n"),
]


@pytest.mark.parametrize(("name", "match", "content"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_raise_mesh_error_naming_the_file(tmp_path: Path, name: str, match: str, content: object) -> None:
    path = _write(tmp_path / name, content)  # type: ignore[arg-type]
    with pytest.raises(MeshError, match=match) as info:
        read_mesh(path, units="mm")
    assert str(path) in str(info.value)
    assert info.value.path == path
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("cut", [1, 7, 60, 200])
def test_truncated_binary_ply(tmp_path: Path, cut: int) -> None:
    data = _binary_ply(tmp_path)
    path = _write(tmp_path / "cut.ply", data[:-cut])
    with pytest.raises(MeshError) as info:
        read_mesh(path, units="mm")
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="no such file"):
        read_mesh(tmp_path / "nope.obj", units="m")


def test_point_set_allowed_on_request(tmp_path: Path) -> None:
    path = _write(tmp_path / "pts.obj", "v 0 0 0\nv 1 0 0\n")
    mesh = read_mesh(path, units="mm", require_faces=False)
    assert mesh.num_faces == 0 and mesh.faces.shape == (0, 3)


# ------------------------------------------------------------------- Mesh and units


def test_units_conversion() -> None:
    mesh = Mesh(np.array([[0.1, 0.2, 0.3], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), "m")
    mm = mesh.to_units("mm")
    assert mm.units == "mm"
    np.testing.assert_allclose(mm.vertices, mesh.vertices * 1000.0)
    np.testing.assert_array_equal(mm.faces, mesh.faces)
    np.testing.assert_allclose(mm.to_units("m").vertices, mesh.vertices, rtol=1e-15)
    assert mesh.to_units("m") is mesh
    np.testing.assert_array_equal(mesh.vertices[0], [0.1, 0.2, 0.3])  # input untouched
    with pytest.raises(MeshError, match="units"):
        mesh.to_units("cm")  # type: ignore[arg-type]
    with pytest.raises(MeshError, match="units"):
        Mesh(mesh.vertices, mesh.faces, "inch")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vertices": np.zeros((3, 2))}, "shape"),
        ({"vertices": np.array([[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]])}, "vertex 1"),
        ({"faces": np.array([[0, 1, 3]])}, "out of range"),
        ({"faces": np.array([[0, 1, -1]])}, "out of range"),
        ({"colors": np.zeros((2, 3), np.uint8)}, "colors"),
        ({"uv": np.zeros((2, 2))}, "per-vertex uv"),
        ({"uv": np.zeros((4, 2)), "uv_faces": np.array([[0, 1, 9]])}, "uv_faces"),
    ],
)
def test_mesh_validation(kwargs: dict[str, np.ndarray], match: str) -> None:
    base = {"vertices": np.eye(3), "faces": np.array([[0, 1, 2]])}
    base.update(kwargs)
    with pytest.raises(MeshError, match=match):
        Mesh(base["vertices"], base["faces"], "m", **{k: v for k, v in base.items() if k not in ("vertices", "faces")})


# ------------------------------------------------------------------------- MultiFace


def test_multiface_bin_layout_and_topology(tmp_path: Path) -> None:
    topo = _write(tmp_path / "topology.obj", SEAM_OBJ)
    values = np.arange(15, dtype=np.float32).reshape(5, 3) * 1.5 - 7.25
    # Raw little-endian float32 xyz, no header, written independently of fbench.
    raw = struct.pack("<15f", *values.ravel().tolist())
    path = _write(tmp_path / "000102.bin", raw)
    mesh = read_multiface_bin(path, topology=topo)
    assert mesh.units == "mm"
    np.testing.assert_array_equal(mesh.vertices, values)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])
    assert mesh.uv_faces is not None
    bare = read_multiface_bin(path, num_vertices=5)
    np.testing.assert_array_equal(bare.vertices, values)
    assert bare.num_faces == 0
    # The writer produces exactly that layout.
    write_multiface_bin(tmp_path / "again.bin", values)
    assert (tmp_path / "again.bin").read_bytes() == raw


@pytest.mark.parametrize(
    ("nbytes", "kwargs", "match"),
    [
        (5 * 12 - 4, {"num_vertices": 5}, "truncated"),
        (5 * 12 + 12, {"num_vertices": 5}, "too long"),
        (5 * 12, {}, "vertex count unknown"),
        (5 * 12, {"num_vertices": 4, "topology": "topo"}, "disagrees"),
    ],
)
def test_multiface_bin_errors(tmp_path: Path, nbytes: int, kwargs: dict, match: str) -> None:
    if kwargs.get("topology") == "topo":
        kwargs["topology"] = _write(tmp_path / "t.obj", SEAM_OBJ)
    path = _write(tmp_path / "x.bin", b"\0" * nbytes)
    with pytest.raises(MeshError, match=match) as info:
        read_multiface_bin(path, **kwargs)
    assert str(path) in str(info.value)


def test_multiface_bin_nan(tmp_path: Path) -> None:
    path = _write(tmp_path / "nan.bin", struct.pack("<6f", 0, 0, 0, float("nan"), 0, 0))
    with pytest.raises(MeshError, match="NaN") as info:
        read_multiface_bin(path, num_vertices=2)
    assert str(path) in str(info.value)


def test_multiface_transform(tmp_path: Path) -> None:
    text = "0.9 -0.1 0 12.5\n\n0.1\t0.9 0 -3\n0 0 1 1e3   \n"
    m = read_multiface_transform(_write(tmp_path / "000102_transform.txt", text))
    np.testing.assert_array_equal(m, [[0.9, -0.1, 0, 12.5], [0.1, 0.9, 0, -3], [0, 0, 1, 1000]])
    write_multiface_transform(tmp_path / "t.txt", m)
    np.testing.assert_array_equal(read_multiface_transform(tmp_path / "t.txt"), m)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1 0 0 0\n0 1 0 0\n", "3 rows"),
        ("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "3 rows"),
        ("1 0 0\n0 1 0 0\n0 0 1 0\n", "4 numbers"),
        ("1 0 0 0\n0 1 x 0\n0 0 1 0\n", "not a number"),
        ("1 0 0 0\n0 1 nan 0\n0 0 1 0\n", "NaN"),
        ("", "3 rows"),
    ],
)
def test_multiface_transform_errors(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "bad_transform.txt", text)
    with pytest.raises(MeshError, match=match) as info:
        read_multiface_transform(path)
    assert str(path) in str(info.value)
