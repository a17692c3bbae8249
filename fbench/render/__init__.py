"""Differentiable rasterizer and SMIRK's shaded-geometry renderer.

- `rasterize_meshes(verts_ndc, faces, image_size, backend=...)`: pytorch3d's
  `rasterize_meshes` semantics (faces_per_pixel=1, blur_radius=0) in plain PyTorch,
  or pytorch3d itself when installed (`backend='pytorch3d'`, or 'auto' on CUDA).
- `SmirkRenderer`: SMIRK's grey five-light rendering of a masked mesh under its
  orthographic camera; `render_flame` runs it on a FLAME model.
- `render_params_file`: .npz of FlameParams fields -> PNG(s), for `fbench render`.
"""

from .files import render_params_file, save_png
from .rasterizer import Fragments, interpolate_face_attributes, pixel_centers_ndc, pytorch3d_available, rasterize_meshes
from .smirk import (
    SmirkRenderer,
    default_cam,
    directional_shading,
    faces_in_mask,
    orthographic_project,
    render_flame,
    smirk_renderer_for,
    vertex_normals,
)

__all__ = [
    "Fragments", "SmirkRenderer", "default_cam", "directional_shading", "faces_in_mask",
    "interpolate_face_attributes", "orthographic_project", "pixel_centers_ndc", "pytorch3d_available",
    "rasterize_meshes", "render_flame", "render_params_file", "save_png", "smirk_renderer_for", "vertex_normals",
]
