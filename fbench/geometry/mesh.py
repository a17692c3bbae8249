"""Triangle meshes with explicit units; OBJ/PLY and MultiFace ``.bin`` reading and writing.

Vertex order is never changed: FLAME, MultiFace tracked meshes and fitted meshes are
compared vertex by vertex, so a reader that merges or reorders vertices silently
corrupts every metric downstream.

* PLY goes through trimesh's PLY parser (``trimesh.exchange.ply``) with
  ``fix_texture=False`` (trimesh would otherwise split vertices at UV seams), and the
  Trimesh used for export is built with ``process=False, maintain_order=True``.
  trimesh writes PLY coordinates as float32 (about 1e-7 relative; 0.02 µm on a head scan).
* OBJ is parsed and written here, not by trimesh: trimesh's OBJ loader, even with
  ``process=False, maintain_order=True``, drops unreferenced vertices and either splits
  vertices at UV seams or (with ``maintain_order``) keeps one UV per vertex and silently
  assigns the wrong one. FLAME's ``head_template.obj`` and MultiFace's topology OBJ both
  have UV seams, so texture coordinates are kept per face corner (``uv`` + ``uv_faces``,
  exactly as OBJ's ``vt`` indices) and vertices stay in file order.

Units: FLAME meshes are in metres, scans and MultiFace meshes in millimetres. A
:class:`Mesh` always says which (``units``), and :meth:`Mesh.to_units` converts.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fbench.io import atomic_write

Units = Literal["m", "mm"]
_METRES_PER_UNIT: dict[str, float] = {"m": 1.0, "mm": 1e-3}
PathLike = str | os.PathLike[str]


class MeshError(ValueError):
    """A mesh file or array is unusable; the message names the file when there is one."""

    def __init__(self, message: str, path: PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.reason = message
        super().__init__(f"{path}: {message}" if path is not None else message)


def _check_units(units: str) -> None:
    if units not in _METRES_PER_UNIT:
        raise MeshError(f"units must be one of {sorted(_METRES_PER_UNIT)}, got {units!r}")


@dataclass(eq=False)
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: (V, 3) float64.
        faces: (F, 3) int64 indices into ``vertices`` (F may be 0 for a point set).
        units: ``"m"`` or ``"mm"``; never implied.
        colors: optional (V, 3) uint8 RGB per vertex.
        uv: optional (T, 2) float64 texture coordinates.
        uv_faces: optional (F, 3) int64 indices into ``uv`` per face corner (OBJ ``vt``
            indices). When ``uv`` is given without ``uv_faces``, ``uv`` is per vertex
            (T == V).

    Construction validates shapes, finiteness and index ranges and raises
    :class:`MeshError` on violation.
    """

    vertices: np.ndarray
    faces: np.ndarray
    units: Units
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    uv_faces: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_units(self.units)
        v = np.asarray(self.vertices, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 3:
            raise MeshError(f"vertices must have shape (V, 3), got {v.shape}")
        if v.shape[0] == 0:
            raise MeshError("mesh has no vertices")
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            raise MeshError(
                f"{int(bad.sum())} vertices are NaN or infinite (first: vertex {int(np.argmax(bad))})"
            )
        self.vertices = v
        self.faces = _check_indices(self.faces, v.shape[0], "faces")
        if self.colors is not None:
            c = np.asarray(self.colors)
            if c.shape != (v.shape[0], 3):
                raise MeshError(f"colors must have shape ({v.shape[0]}, 3), got {c.shape}")
            if c.dtype != np.uint8:
                if not np.issubdtype(c.dtype, np.number) or c.min() < 0 or c.max() > 255:
                    raise MeshError("colors must be uint8 RGB (0..255)")
                c = np.round(c).astype(np.uint8)
            self.colors = c
        if self.uv is None and self.uv_faces is not None:
            raise MeshError("uv_faces given without uv")
        if self.uv is not None:
            uv = np.asarray(self.uv, dtype=np.float64)
            if uv.ndim != 2 or uv.shape[1] != 2:
                raise MeshError(f"uv must have shape (T, 2), got {uv.shape}")
            if not np.isfinite(uv).all():
                raise MeshError("uv contains NaN or infinite values")
            self.uv = uv
            if self.uv_faces is None:
                if uv.shape[0] != v.shape[0]:
                    raise MeshError(
                        f"per-vertex uv needs {v.shape[0]} rows, got {uv.shape[0]} "
                        "(pass uv_faces for per-corner texture coordinates)"
                    )
            else:
                self.uv_faces = _check_indices(self.uv_faces, uv.shape[0], "uv_faces")
                if self.uv_faces.shape != self.faces.shape:
                    raise MeshError(
                        f"uv_faces must have the shape of faces {self.faces.shape}, "
                        f"got {self.uv_faces.shape}"
                    )

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to_units(self, units: Units) -> Mesh:
        """This mesh with vertices expressed in ``units`` (a copy; self if unchanged)."""
        _check_units(units)
        if units == self.units:
            return self
        factor = _METRES_PER_UNIT[self.units] / _METRES_PER_UNIT[units]
        return replace(self, vertices=self.vertices * factor, units=units)

    def with_vertices(self, vertices: Any) -> Mesh:
        """Same topology, colours and UVs, new vertex positions (same units)."""
        return replace(self, vertices=vertices)

    def vertex_uv(self) -> np.ndarray | None:
        """Per-vertex UVs if every vertex has a single UV, else None."""
        if self.uv is None:
            return None
        if self.uv_faces is None:
            return self.uv
        per_vertex = np.full((self.num_vertices, 2), np.nan)
        per_vertex[self.faces.ravel()] = self.uv[self.uv_faces.ravel()]
        # A vertex on a UV seam has several corner UVs: compare them all with the one kept.
        if not np.array_equal(per_vertex[self.faces.ravel()], self.uv[self.uv_faces.ravel()]):
            return None
        return np.nan_to_num(per_vertex, nan=0.0)


def _check_indices(idx: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(idx)
    if a.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise MeshError(f"{name} must have shape (F, 3), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.number) or not np.array_equal(a, np.round(a)):
            raise MeshError(f"{name} must hold integer indices")
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= n:
        raise MeshError(f"{name} index out of range: indices span [{lo}, {hi}], valid is [0, {n - 1}]")
    return a


# ----------------------------------------------------------------------------- helpers


def _fan(polys: list[list[int]]) -> list[list[int]]:
    return [[p[0], p[i], p[i + 1]] for p in polys for i in range(1, len(p) - 1)]


# ------------------------------------------------------------------------------- OBJ


def _obj_index(token: str, count: int, lineno: int) -> int:
    i = int(token)
    if i > 0:
        return i - 1
    if i < 0:  # relative to the elements read so far
        return count + i
    raise ValueError(f"line {lineno}: OBJ indices start at 1, got 0")


def _read_obj(path: Path, data: bytes, units: Units, require_faces: bool) -> Mesh:
    text = data.decode("utf-8", errors="replace")
    verts: list[list[float]] = []
    colors: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    uv_faces: list[list[int]] = []
    faces_without_uv = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        tag = parts[0]
        try:
            if tag == "v":
                vals = [float(x) for x in parts[1:]]
                if len(vals) in (3, 4):  # optional w is ignored (polygonal meshes use 1)
                    verts.append(vals[:3])
                elif len(vals) in (6, 7):  # x y z r g b [a] (MeshLab/Meshroom extension)
                    verts.append(vals[:3])
                    colors.append(vals[3:6])
                else:
                    raise ValueError(f"line {lineno}: 'v' needs 3 coordinates, got {len(vals)}")
            elif tag == "vt":
                vals = [float(x) for x in parts[1:]]
                if len(vals) < 2:
                    raise ValueError(f"line {lineno}: 'vt' needs 2 coordinates")
                uvs.append(vals[:2])
            elif tag == "f":
                if len(parts) < 4:
                    raise ValueError(f"line {lineno}: a face needs at least 3 corners")
                vi: list[int] = []
                ti: list[int] = []
                for corner in parts[1:]:
                    fields = corner.split("/")
                    vi.append(_obj_index(fields[0], len(verts), lineno))
                    if len(fields) > 1 and fields[1]:
                        ti.append(_obj_index(fields[1], len(uvs), lineno))
                if ti and len(ti) != len(vi):
                    raise ValueError(f"line {lineno}: texture index missing on some corners")
                if ti:
                    uv_faces.extend(_fan([ti]))
                else:
                    faces_without_uv += 1
                faces.extend(_fan([vi]))
        except ValueError as exc:
            msg = str(exc) if str(exc).startswith("line ") else f"line {lineno}: {exc}"
            raise MeshError(f"malformed OBJ, {msg}", path) from None
    if not verts:
        raise MeshError("empty mesh: no vertices", path)
    if colors and len(colors) != len(verts):
        raise MeshError("vertex colours given on some 'v' lines only", path)
    if require_faces and not faces:
        raise MeshError("mesh has no faces", path)
    uv = np.asarray(uvs, dtype=np.float64) if uvs else None
    uvf: np.ndarray | None = np.asarray(uv_faces, dtype=np.int64) if uv_faces else None
    if uvf is not None and faces_without_uv:
        warnings.warn(
            f"{path}: {faces_without_uv} faces have no texture indices; UVs dropped",
            stacklevel=3,
        )
        uv = uvf = None
    if uvf is None:
        uv = None
    col = None
    if colors:
        c = np.asarray(colors, dtype=np.float64)
        # Float colours in [0, 1] are the common convention; some tools write 0..255.
        col = np.clip(np.round(c * 255.0 if c.max() <= 1.0 else c), 0, 255).astype(np.uint8)
    face_arr = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    try:
        return Mesh(np.asarray(verts), face_arr, units, colors=col, uv=uv, uv_faces=uvf)
    except MeshError as exc:
        raise MeshError(exc.reason, path) from None


def _fmt_rows(arr: np.ndarray, prefix: str, fmt: str) -> str:
    if arr.size == 0:
        return ""
    row = prefix + " " + " ".join([fmt] * arr.shape[1]) + "\n"
    return "".join(row % tuple(r) for r in arr.tolist())


def _write_obj(path: PathLike, mesh: Mesh) -> None:
    # %.17g round-trips float64 exactly.
    if mesh.colors is not None:
        vrows = np.concatenate((mesh.vertices, mesh.colors / 255.0), axis=1)
        vtext = _fmt_rows(vrows, "v", "%.17g")
    else:
        vtext = _fmt_rows(mesh.vertices, "v", "%.17g")
    parts = [f"# fbench mesh, units: {mesh.units}\n", vtext]
    f1 = mesh.faces + 1
    if mesh.uv is not None:
        parts.append(_fmt_rows(mesh.uv, "vt", "%.17g"))
        t1 = (mesh.uv_faces if mesh.uv_faces is not None else mesh.faces) + 1
        corners = np.stack((f1, t1), axis=2).reshape(-1, 6)
        parts.append("".join("f %d/%d %d/%d %d/%d\n" % tuple(r) for r in corners.tolist()))
    else:
        parts.append(_fmt_rows(f1, "f", "%d"))
    text = "".join(parts)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------- PLY


PLY_MIN_BYTES = {"vertex": 6, "face": 6}  # the least a vertex ("0 0 0\n") or face ("3 0 1 2\n") can take


def _ply_header_counts(path: Path, data: bytes) -> dict[str, int]:
    """Element counts declared in a PLY header (to catch truncated files); a header that declares
    more elements than the file's bytes can hold is refused before any reader sizes arrays by it."""
    counts: dict[str, int] = {}
    with io.BytesIO(data) as fh:
        first = fh.readline().strip()
        if first != b"ply":
            raise MeshError("not a PLY file (missing 'ply' magic)", path)
        for _ in range(10_000):
            line = fh.readline()
            if not line:
                raise MeshError("truncated PLY header (no end_header)", path)
            tokens = line.split()
            if tokens[:1] == [b"end_header"]:
                body = len(data) - fh.tell()
                for name, minimum in PLY_MIN_BYTES.items():
                    if counts.get(name, 0) * minimum > body:
                        raise MeshError(f"truncated PLY: header declares {counts[name]} {name} elements, "
                                        f"the file holds {body} bytes after the header", path)
                return counts
            if tokens[:1] == [b"element"] and len(tokens) >= 3:
                try:
                    counts[tokens[1].decode("ascii", "replace")] = int(tokens[2])
                except ValueError:
                    raise MeshError(f"malformed PLY header line {line[:60]!r}", path) from None
    raise MeshError("PLY header too long", path)


def _read_ply(path: Path, data: bytes, units: Units, require_faces: bool) -> Mesh:
    from trimesh.exchange.ply import load_ply  # noqa: PLC0415 - trimesh import is slow

    counts = _ply_header_counts(path, data)
    try:
        with io.BytesIO(data) as fh:
            # fix_texture=False: keep one vertex per file vertex even on UV seams.
            kw = load_ply(fh, fix_texture=False, skip_materials=True, prefer_color="vertex")
    except MeshError:
        raise
    except Exception as exc:  # trimesh raises ValueError/IndexError/... on bad data
        raise MeshError(f"unreadable PLY ({type(exc).__name__}: {exc})", path) from None
    vertices = np.asarray(kw.get("vertices", np.zeros((0, 3))), dtype=np.float64)
    if vertices.size == 0:
        raise MeshError("empty mesh: no vertices", path)
    if counts.get("vertex", len(vertices)) != len(vertices):
        raise MeshError(
            f"truncated PLY: header declares {counts['vertex']} vertices, file holds {len(vertices)}",
            path,
        )
    raw_faces = kw.get("faces")
    n_read = 0 if raw_faces is None else len(raw_faces)
    if counts.get("face", n_read) != n_read:
        raise MeshError(
            f"truncated PLY: header declares {counts['face']} faces, file holds {n_read}", path
        )
    faces = _ply_faces(raw_faces, path)
    if require_faces and len(faces) == 0:
        raise MeshError("mesh has no faces", path)
    colors = None
    vc = kw.get("vertex_colors")
    if vc is not None and len(vc) == len(vertices):
        colors = np.asarray(vc)[:, :3].astype(np.uint8)
    uv = _ply_vertex_uv(kw, len(vertices))
    try:
        return Mesh(vertices, faces, units, colors=colors, uv=uv)
    except MeshError as exc:
        raise MeshError(exc.reason, path) from None


_PLY_UV_NAMES = (("s", "t"), ("u", "v"), ("texture_u", "texture_v"), ("texture_s", "texture_t"))


def _ply_vertex_uv(kw: dict[str, Any], num_vertices: int) -> np.ndarray | None:
    """Per-vertex UVs, read from the raw vertex columns when trimesh exposes them.

    trimesh's TextureVisuals zero the UVs of vertices no face uses; the raw columns
    keep them (vertex ids are correspondences, unreferenced ones included).
    """
    raw = (kw.get("metadata") or {}).get("_ply_raw", {}).get("vertex", {}).get("data")
    # ASCII files give a dict of columns, binary ones a structured array.
    if isinstance(raw, np.ndarray) and raw.dtype.names:
        names: set[str] = set(raw.dtype.names)
    elif isinstance(raw, dict):
        names = set(raw)
    else:
        names = set()
    for u_name, v_name in _PLY_UV_NAMES:
        if u_name in names and v_name in names:
            uv = np.stack((np.ravel(raw[u_name]), np.ravel(raw[v_name])), axis=1).astype(np.float64)
            if uv.shape == (num_vertices, 2):
                return uv
    visual = kw.get("visual")
    if visual is not None and getattr(visual, "uv", None) is not None:
        cand = np.asarray(visual.uv, dtype=np.float64)
        if cand.shape == (num_vertices, 2):
            return cand
    return None


def _ply_faces(raw: Any, path: Path) -> np.ndarray:
    """trimesh gives an (F, k) array for uniform polygons, a sequence otherwise."""
    if raw is None or len(raw) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if isinstance(raw, np.ndarray) and raw.dtype != object and raw.ndim == 2:
        if raw.shape[1] == 3:
            return raw.astype(np.int64)
        polys = raw.astype(np.int64).tolist()
    else:
        polys = [[int(i) for i in np.ravel(f)] for f in raw]
    if any(len(poly) < 3 for poly in polys):
        raise MeshError("a face has fewer than 3 vertices", path)
    return np.asarray(_fan(polys), dtype=np.int64).reshape(-1, 3)


def _write_ply(path: PathLike, mesh: Mesh, binary: bool) -> None:
    import trimesh  # noqa: PLC0415 - trimesh import is slow
    from trimesh.exchange.ply import export_ply  # noqa: PLC0415

    visual = None
    uv = mesh.vertex_uv()
    if mesh.uv is not None and uv is None:
        raise MeshError(
            "PLY stores one texture coordinate per vertex but this mesh has UV seams "
            "(several UVs per vertex); write it as OBJ",
            path,
        )
    if uv is not None:
        if mesh.colors is not None:
            # A Trimesh holds one visual: colours would silently be lost next to UVs.
            raise MeshError("PLY export of both vertex colours and UVs is not supported", path)
        visual = trimesh.visual.TextureVisuals(uv=uv)
    tm = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_colors=None if mesh.colors is None else mesh.colors,
        visual=visual,
        process=False,
        maintain_order=True,
    )
    data = export_ply(tm, encoding="binary" if binary else "ascii")
    atomic_write(path, lambda fh: fh.write(data))


# ------------------------------------------------------------------------- public API


def read_mesh(path: PathLike, *, units: Units, require_faces: bool = True) -> Mesh:
    """Read an OBJ or PLY triangle mesh, keeping the file's vertex order.

    Args:
        path: ``.obj`` or ``.ply`` file. Polygons are fan-triangulated.
        units: the units the file is in (``"m"`` for FLAME, ``"mm"`` for scans); files
            do not say, so the caller must.
        require_faces: reject point sets (no faces), the default for meshes.

    Raises:
        MeshError: unreadable, truncated or empty file, NaN/inf vertices, face indices
            out of range; the message names the file.
    """
    _check_units(units)
    p = Path(path)
    suffix = mesh_format(p)
    data = read_mesh_file(p)
    if suffix == ".obj":
        return _read_obj(p, data, units, require_faces)
    return _read_ply(p, data, units, require_faces)


def read_mesh_file(path: PathLike, allow_empty: bool = False) -> bytes:
    """The bytes of a mesh or scan file through fbench.safe_read (regular files only, after
    resolving links; byte cap); MeshError naming the file otherwise, or when it is empty."""
    from fbench.safe_read import FileRefusedError, read_regular_file

    p = Path(path)
    if not p.exists():
        raise MeshError("no such file", p)
    try:
        data = read_regular_file(p)
    except FileRefusedError as exc:
        raise MeshError(str(exc).removeprefix(f"{p}: "), p) from None
    if not data and not allow_empty:
        raise MeshError("empty file", p)
    return data


def mesh_format(path: PathLike) -> str:
    """'.obj' or '.ply' from a path's suffix (case-insensitive); MeshError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".obj", ".ply"):
        raise MeshError(f"unsupported mesh format {suffix!r} (use .obj or .ply)", Path(path))
    return suffix


def write_mesh(path: PathLike, mesh: Mesh, *, binary: bool = True) -> None:
    """Write ``mesh`` as OBJ or PLY (by suffix), atomically, vertex order unchanged.

    OBJ keeps float64 coordinates exactly and per-corner UVs; PLY (binary unless
    ``binary=False``) stores float32 coordinates and per-vertex UVs. Units are not
    stored by either format: keep track of them (OBJ gets a comment line).
    """
    p = Path(path)
    if mesh_format(p) == ".obj":
        _write_obj(p, mesh)
    else:
        _write_ply(p, mesh, binary)


# ------------------------------------------------------------------------- MultiFace


def read_multiface_bin(
    path: PathLike,
    *,
    num_vertices: int | None = None,
    topology: Mesh | PathLike | None = None,
    units: Units = "mm",
) -> Mesh:
    """Read a MultiFace tracked-mesh ``.bin``: raw little-endian float32, V x 3, no header.

    The file cannot tell its own vertex count, so a truncated file would look valid:
    give ``num_vertices`` or a ``topology`` (the companion OBJ or an already read Mesh)
    whose faces and UVs are attached to the result. MultiFace meshes are in mm.

    Raises:
        MeshError: size not V * 12 bytes, NaN/inf values, or neither count nor topology.
    """
    p = Path(path)
    topo: Mesh | None
    if topology is None or isinstance(topology, Mesh):
        topo = topology
    else:
        topo = read_mesh(topology, units=units)
    if topo is not None:
        if num_vertices is not None and num_vertices != topo.num_vertices:
            raise MeshError(
                f"num_vertices={num_vertices} disagrees with the topology's {topo.num_vertices}", p
            )
        num_vertices = topo.num_vertices
    if num_vertices is None:
        raise MeshError("vertex count unknown: pass num_vertices or a topology OBJ", p)
    if num_vertices <= 0:
        raise MeshError(f"num_vertices must be positive, got {num_vertices}", p)
    if not p.is_file():
        raise MeshError("no such file", p)
    size = p.stat().st_size
    expected = num_vertices * 3 * 4
    if size != expected:
        what = "truncated" if size < expected else "too long"
        raise MeshError(
            f"{what}: {size} bytes, expected {expected} for {num_vertices} float32 xyz vertices", p
        )
    vertices = np.fromfile(p, dtype="<f4").reshape(num_vertices, 3).astype(np.float64)
    faces = topo.faces if topo is not None else np.zeros((0, 3), np.int64)
    try:
        return Mesh(
            vertices,
            faces,
            units,
            uv=None if topo is None else topo.uv,
            uv_faces=None if topo is None else topo.uv_faces,
        )
    except MeshError as exc:
        raise MeshError(exc.reason, p) from None


def write_multiface_bin(path: PathLike, vertices: Any) -> None:
    """Write (V, 3) vertices in MultiFace's raw ``.bin`` layout (float32 LE), atomically."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise MeshError(f"vertices must have shape (V, 3) with V > 0, got {v.shape}", path)
    if not np.isfinite(v).all():
        raise MeshError("vertices contain NaN or infinite values", path)
    data = v.astype("<f4").tobytes()
    atomic_write(path, lambda fh: fh.write(data))


def read_multiface_transform(path: PathLike) -> np.ndarray:
    """Read a MultiFace ``*_transform.txt`` head pose: 3 rows of 4 numbers -> (3, 4) float64.

    The matrix is ``[R | t]`` as stored (translation in the file's units, mm for
    MultiFace); this reader does not interpret or invert it.
    """
    p = Path(path)
    rows: list[list[float]] = []
    for lineno, line in enumerate(read_mesh_file(p, allow_empty=True).decode("utf-8", errors="replace").splitlines(),
                                     start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            vals = [float(t) for t in tokens]
        except ValueError:
            raise MeshError(f"line {lineno}: not a number in {line.strip()!r}", p) from None
        if len(vals) != 4:
            raise MeshError(f"line {lineno}: expected 4 numbers, got {len(vals)}", p)
        rows.append(vals)
    if len(rows) != 3:
        raise MeshError(f"expected 3 rows of 4 numbers, got {len(rows)} rows", p)
    m = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(m).all():
        raise MeshError("transform contains NaN or infinite values", p)
    return m


def write_multiface_transform(path: PathLike, matrix: Any) -> None:
    """Write a (3, 4) head pose in MultiFace's ``*_transform.txt`` layout, atomically."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 4) or not np.isfinite(m).all():
        raise MeshError(f"transform must be a finite (3, 4) matrix, got shape {m.shape}", path)
    text = "".join(" ".join("%.17g" % x for x in row) + "\n" for row in m)
    atomic_write(path, lambda fh: fh.write(text.encode("ascii")))
