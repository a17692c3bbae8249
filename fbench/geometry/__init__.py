"""Mesh I/O, point-to-surface distance and similarity alignment.

Importing this package is cheap: open3d (needed only by the distance functions and
ICP) and trimesh (needed only for PLY) are imported on first use.
"""

from fbench.geometry.alignment import IcpResult, RobustKind, Similarity, icp, umeyama
from fbench.geometry.distance import (
    ClosestPointIndex,
    MeshTopology,
    PointMeshDistance,
    SurfaceQuery,
    point_mesh_distance,
    point_mesh_distance_batched,
    point_mesh_distance_stacked,
)
from fbench.geometry.mesh import (
    Mesh,
    MeshError,
    Units,
    read_mesh,
    read_multiface_bin,
    read_multiface_transform,
    write_mesh,
    write_multiface_bin,
    write_multiface_transform,
)

__all__ = [
    "ClosestPointIndex",
    "IcpResult",
    "Mesh",
    "MeshError",
    "MeshTopology",
    "PointMeshDistance",
    "RobustKind",
    "Similarity",
    "SurfaceQuery",
    "Units",
    "icp",
    "point_mesh_distance",
    "point_mesh_distance_batched",
    "point_mesh_distance_stacked",
    "read_mesh",
    "read_multiface_bin",
    "read_multiface_transform",
    "umeyama",
    "write_mesh",
    "write_multiface_bin",
    "write_multiface_transform",
]
