"""Readers for raw scan files the fitting pipelines meet: VRML 2.0 (.wrl) meshes and 3D landmark text files.

OBJ and PLY go through :func:`fbench.geometry.read_mesh`; VRML is read here because
BP4D-Spontaneous (like the BU-3DFE/BU-4DFE releases from the same lab) may ship it.
The VRML reader is tolerant: it collects every ``Coordinate { point [...] }`` with the
``coordIndex [...]`` of the same ``IndexedFaceSet`` (several shapes are concatenated),
fan-triangulates polygons, ignores textures, normals and anything else, and never
evaluates the file beyond parsing numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fbench.geometry import Mesh, MeshError, read_mesh
from fbench.geometry.mesh import read_mesh_file

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)", re.IGNORECASE)


def _block(text: str, start: int) -> tuple[str, int]:
    """Contents of the [...] list starting at or after ``start``, and the index after it."""
    open_at = text.find("[", start)
    if open_at < 0:
        raise ValueError("'[' expected")
    close_at = text.find("]", open_at)
    if close_at < 0:
        raise ValueError("unterminated '[' list")
    return text[open_at + 1:close_at], close_at + 1


def read_wrl(path: str | Path, units: str = "mm") -> Mesh:
    """Read the IndexedFaceSet geometry of a VRML 2.0 file as one triangle mesh."""
    path = Path(path)
    text = read_mesh_file(path).decode("utf-8", errors="replace")
    if not text.lstrip().startswith("#VRML"):
        raise MeshError("not a VRML file (no '#VRML' header)", path)
    text = re.sub(r"#[^\n]*", "", text)  # comments (the header included)
    vertices: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    offset = 0
    try:
        for match in re.finditer(r"\bIndexedFaceSet\b", text):
            end = text.find("IndexedFaceSet", match.end())
            body = text[match.end(): end if end >= 0 else len(text)]
            coord = re.search(r"\bCoordinate\s*\{\s*point\b", body)
            index = re.search(r"\bcoordIndex\b", body)
            if coord is None or index is None:
                continue
            points_text, _ = _block(body, coord.end())
            numbers = np.array([float(x) for x in _NUMBER.findall(points_text)])
            if numbers.size % 3:
                raise ValueError(f"{numbers.size} coordinates is not a multiple of 3")
            pts = numbers.reshape(-1, 3)
            index_text, _ = _block(body, index.end())
            idx = [int(float(x)) for x in _NUMBER.findall(index_text)]
            polys, current = [], []
            for i in idx + [-1]:
                if i < 0:
                    if len(current) >= 3:
                        polys.extend([current[0], current[k], current[k + 1]] for k in range(1, len(current) - 1))
                    elif current:
                        raise ValueError(f"a face with {len(current)} corner(s)")
                    current = []
                else:
                    current.append(i)
            tri = np.asarray(polys, dtype=np.int64).reshape(-1, 3)
            if tri.size and tri.max() >= len(pts):
                raise ValueError(f"coordIndex {int(tri.max())} out of range for {len(pts)} points")
            vertices.append(pts)
            faces.append(tri + offset)
            offset += len(pts)
    except ValueError as exc:
        raise MeshError(f"malformed VRML: {exc}", path) from None
    if not vertices:
        raise MeshError("no IndexedFaceSet with coordinates and coordIndex", path)
    try:
        return Mesh(np.concatenate(vertices), np.concatenate(faces), units)  # type: ignore[arg-type]
    except MeshError as exc:
        raise MeshError(exc.reason, path) from None


def read_scan(path: str | Path, units: str = "mm") -> Mesh:
    """A scan mesh from .obj, .ply or .wrl (by suffix)."""
    path = Path(path)
    if path.suffix.lower() in (".wrl", ".vrml"):
        return read_wrl(path, units)
    return read_mesh(path, units=units)  # type: ignore[arg-type]


def read_landmarks_3d(path: str | Path, expected: int | None = None) -> np.ndarray:
    """(K, 3) points from a text file, one point per line; the last three numbers of each line.

    Tolerates an index column ("i x y z"), commas, and blank or '#' comment lines.
    Raises ValueError naming the file when a line has fewer than 3 numbers, a value is not
    finite, or the count differs from ``expected``.
    """
    from fbench.safe_read import read_regular_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such landmark file")
    rows = []
    text = read_regular_file(path, max_bytes=1 << 20).decode("utf-8", errors="replace")  # a few KB: capped at 1 MiB
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        values = _NUMBER.findall(line.replace(",", " "))
        if len(values) < 3:
            raise ValueError(f"{path}: line {lineno} has {len(values)} number(s), need x y z")
        rows.append([float(v) for v in values[-3:]])
    points = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if expected is not None and len(points) != expected:
        raise ValueError(f"{path}: {len(points)} landmarks, expected {expected}")
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: landmarks contain NaN or infinite values")
    return points
