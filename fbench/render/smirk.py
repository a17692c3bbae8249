"""SMIRK's shaded-geometry renderer on top of the fbench rasterizer.

Every detail below was checked against SMIRK's code (github.com/georgeretsi/smirk,
`src/renderer/renderer.py` and `src/renderer/util.py`); the comments name the place.
The renderer takes plain tensors (vertices, faces, a face/vertex mask, camera,
landmarks) so it does not depend on FLAME internals; `render_flame` is the thin
convenience that feeds it a FLAME model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rasterizer import Backend, Fragments, interpolate_covered, rasterize_meshes

# renderer.py Renderer.__init__: `colors = torch.tensor([180, 180, 180]) / 255.`
ALBEDO = 180.0 / 255.0
# renderer.py Renderer.render: light_positions and `light_intensities = ... * 1.7`; the
# positions are used as directions and normalised in add_directionlight (F.normalize).
LIGHT_DIRECTIONS = ((-1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 0.0, 1.0))
LIGHT_INTENSITY = 1.7
# renderer.py Renderer.render: "rasterizer near 0 far 100. move mesh so minz larger than 0".
Z_OFFSET = 10.0
# SMIRK's demo crops the MediaPipe landmark box enlarged 1.4 times (demo.py crop_face(...,
# scale=1.4)); the default camera frames the face region the same way.
DEFAULT_CROP_SCALE = 1.4


def orthographic_project(points: Tensor, cam: Tensor) -> Tensor:
    """SMIRK's camera in image space: x' = s (x + tx), y' = -s (y + ty), z' = -s z.

    util.py batch_orth_proj, then renderer.py Renderer.forward flips y and z so that
    y points down the image. In the result (x', y') = (-1, -1) is the top-left image
    corner and (1, 1) the bottom-right (pixel centres at (2 i + 1) / size - 1, i.e.
    grid_sample's align_corners=False convention), and smaller z' is nearer the camera.

    points: (B, N, 3); cam: (B, 3) = (scale, tx, ty).
    """
    scale, t = cam[:, None, 0:1], cam[:, None, 1:3]
    xy = scale * (points[..., :2] + t)
    z = scale * points[..., 2:3]
    return torch.cat([xy[..., 0:1], -xy[..., 1:2], -z], dim=-1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals, (B, V, 3), counter-clockwise faces outward.

    util.py vertex_normals: each face corner adds the unnormalised cross product of
    its two edges, then F.normalize(eps=1e-6); vertices used by no face get zero.
    """
    v = vertices[:, faces]  # (B, F, 3, 3)
    face_n = torch.linalg.cross(v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    for corner in range(3):  # three corners, not a loop over triangles
        normals = normals.index_add(1, faces[:, corner], face_n)
    return F.normalize(normals, dim=-1, eps=1e-6)


def directional_shading(normals: Tensor, directions: Tensor | None = None,
                        intensity: float = LIGHT_INTENSITY) -> Tensor:
    """mean over lights of clamp(n . l, 0, 1) * intensity, shape normals[..., :1].

    renderer.py add_directionlight: light directions are normalised, normals are not
    (interpolated normals keep their shortened length, as in SMIRK).
    """
    if directions is None:
        directions = torch.tensor(LIGHT_DIRECTIONS, dtype=normals.dtype, device=normals.device)
    directions = F.normalize(directions, dim=-1)
    n_dot_l = (normals[..., None, :] * directions).sum(-1).clamp(0.0, 1.0)
    return n_dot_l.mean(-1, keepdim=True) * intensity


def faces_in_mask(faces: Tensor, vertex_mask: Tensor, num_vertices: int | None = None) -> Tensor:
    """Boolean (F,) mask of faces whose three vertices are all in `vertex_mask`.

    vertex_mask: vertex indices (int) or a boolean per vertex. Mirrors
    renderer.py keep_vertices_and_update_faces (SMIRK renders only such faces).
    """
    if vertex_mask.dtype == torch.bool:
        keep = vertex_mask.to(faces.device)
    else:
        n = num_vertices if num_vertices is not None else int(max(faces.max(), vertex_mask.max())) + 1
        keep = torch.zeros(n, dtype=torch.bool, device=faces.device)
        keep[vertex_mask.to(faces.device).long()] = True
    return keep[faces].all(dim=1)


class SmirkRenderer(nn.Module):
    """Grey, five-light shaded geometry as SMIRK feeds its generator.

    Args:
        faces: (F, 3) triangle vertex indices of the full mesh.
        vertex_mask: vertex indices (or a bool per vertex) of the region to draw;
            only faces with all three vertices inside are kept (SMIRK: FLAME 'face').
        face_mask: alternatively a bool per face. Give at most one of the two;
            neither draws the whole mesh (SMIRK's render_full_head=True).
        image_size: output side in pixels (SMIRK: 224).
        backend: rasterizer backend, see `fbench.render.rasterize_meshes`.

    Face indices keep pointing into the full vertex array; SMIRK re-indexes the kept
    vertices instead, which changes nothing in the image: normals only accumulate
    over kept faces either way.
    """

    faces: Tensor

    def __init__(self, faces: Tensor, vertex_mask: Tensor | None = None, face_mask: Tensor | None = None,
                 image_size: int = 224, backend: Backend = "auto") -> None:
        super().__init__()
        if vertex_mask is not None and face_mask is not None:
            raise ValueError("give vertex_mask or face_mask, not both")
        faces = torch.as_tensor(faces, dtype=torch.int64)
        if vertex_mask is not None:
            face_mask = faces_in_mask(faces, torch.as_tensor(vertex_mask))
        if face_mask is not None:
            face_mask = torch.as_tensor(face_mask, dtype=torch.bool)
            if face_mask.shape != faces.shape[:1]:
                raise ValueError(f"face_mask must be ({faces.shape[0]},), got {tuple(face_mask.shape)}")
            faces = faces[face_mask]
        if faces.numel() == 0:
            raise ValueError("no face to render: the mask keeps no triangle")
        self.register_buffer("faces", faces, persistent=False)
        self.image_size = image_size
        self.backend: Backend = backend

    def forward(self, vertices: Tensor, cam: Tensor, **landmarks: Tensor) -> dict[str, Tensor]:
        """Render (B, V, 3) metric vertices with cameras (B, 3); project landmarks.

        Returns SMIRK's keys (renderer.py Renderer.forward):
          'rendered_img' (B, 3, H, W) in [0, ~0.8], black background;
          'transformed_vertices' (B, V, 3) image-space vertices (`orthographic_project`);
          each landmark keyword, e.g. 'landmarks_fan' / 'landmarks_mp', as (B, N, 2)
          in [-1, 1] image coordinates (x right, y down);
        plus 'mask' (B, 1, H, W), 1 where the mesh covers the pixel.
        """
        transformed = orthographic_project(vertices, cam)
        image, mask = self.render(vertices, transformed)
        out = {"rendered_img": image, "transformed_vertices": transformed, "mask": mask}
        for name, points in landmarks.items():
            out[name] = orthographic_project(points, cam)[..., :2]
        return out

    def rasterize(self, transformed: Tensor) -> Fragments:
        """Rasterize image-space vertices; pix_to_face indexes the kept faces (packed)."""
        # renderer.py Renderer.rasterize negates x and y into pytorch3d's NDC (+X left,
        # +Y up); Renderer.render shifts z by +10 so every face lies in front.
        ndc = torch.cat([-transformed[..., :2], transformed[..., 2:3] + Z_OFFSET], dim=-1)
        return rasterize_meshes(ndc, self.faces, self.image_size, backend=self.backend)

    def render(self, vertices: Tensor, transformed: Tensor) -> tuple[Tensor, Tensor]:
        """Shaded image (B, 3, H, W) and coverage mask (B, 1, H, W)."""
        b = vertices.shape[0]
        fragments = self.rasterize(transformed)
        # Normals of the unprojected mesh (renderer.py render: vertex_normals(vertices, ...)).
        normals = vertex_normals(vertices, self.faces)
        face_normals = normals[:, self.faces].reshape(b * self.faces.shape[0], 3, 3)
        # Shaded on the covered pixels only: the constant albedo interpolates to itself there
        # and the background is black (the values of shading every pixel and masking, ours).
        where, normal_px = interpolate_covered(fragments, face_normals)  # (P, 3)
        mask = fragments.mask[..., None].to(vertices.dtype)
        shaded = mask.new_zeros(mask.shape).index_put(where, ALBEDO * directional_shading(normal_px))
        image = shaded.expand(-1, -1, -1, 3).permute(0, 3, 1, 2).contiguous()
        return image, mask.permute(0, 3, 1, 2)


def default_cam(vertices: Tensor, region: Tensor | None = None,
                crop_scale: float = DEFAULT_CROP_SCALE) -> Tensor:
    """A SMIRK-like camera (B, 3) that frames the given vertices.

    The xy bounding box of `region` (vertex indices; all vertices when None) is
    centred, and its mean side times `crop_scale` spans the image, as SMIRK's demo
    crop does with the landmark box (demo.py crop_face: size = mean(w, h) * 1.4).
    """
    pts = vertices if region is None else vertices[:, region.to(vertices.device)]
    lo, hi = pts[..., :2].amin(1), pts[..., :2].amax(1)
    center = (lo + hi) / 2
    size = (hi - lo).mean(-1) * crop_scale
    scale = 2.0 / size.clamp_min(torch.finfo(vertices.dtype).eps)
    return torch.cat([scale[:, None], -center], dim=-1)


def render_flame(flame: nn.Module, params: Any, renderer: SmirkRenderer | None = None,
                 region: str = "face") -> dict[str, Any]:
    """Run a FLAME model and SMIRK-render it.

    `params` is a FlameParams; a camera whose scale is 0 (e.g. all-zero `cam`)
    is replaced by `default_cam` on the `region` mask. Landmarks come out as SMIRK's
    'landmarks_fan' (68) and 'landmarks_mp' (105), plus the FLAME output under 'flame'.
    """
    if renderer is None:
        renderer = smirk_renderer_for(flame, region)
    flame_out = flame(params)
    vertices = flame_out.vertices
    cam = params.cam.to(device=vertices.device, dtype=vertices.dtype)
    unset = cam[:, 0] == 0
    if bool(unset.any()):
        region_idx = flame.masks[region] if region in getattr(flame, "masks", {}) else None
        cam = torch.where(unset[:, None], default_cam(vertices.detach(), region_idx), cam)
    out = renderer(vertices, cam, landmarks_fan=flame_out.landmarks, landmarks_mp=flame_out.landmarks_mp)
    out["cam"] = cam
    out["flame"] = flame_out
    return out


def smirk_renderer_for(flame: nn.Module, region: str | None = "face", image_size: int = 224,
                       backend: Backend = "auto") -> SmirkRenderer:
    """SmirkRenderer for a FLAME model's topology, drawing the `region` mask (None: whole head)."""
    vertex_mask = flame.masks[region] if region is not None else None
    renderer = SmirkRenderer(flame.faces, vertex_mask=vertex_mask, image_size=image_size, backend=backend)
    return renderer.to(flame.faces.device)
