"""Render FLAME parameter files to PNG (backs `fbench render --params P.npz --out img.png`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fbench.io import atomic_write

from .smirk import render_flame, smirk_renderer_for


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a (3, H, W) image in [0, 1] as an 8-bit PNG, atomically (temp file + rename)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return atomic_write(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"))


def render_params_file(params_path: str | Path, out_png: str | Path, flame: nn.Module | None = None,
                       size: int = 224) -> list[Path]:
    """Render every parameter set of an .npz of FlameParams fields with SMIRK's renderer.

    The file holds some of `shape`, `expression`, `jaw`, `eyelids`, `global_pose`,
    `neck`, `eyes`, `cam`, `translation` as (n,) or (B, n) arrays; missing fields are
    zero, unknown keys are an error. `flame` defaults to `load_flame(None)` (the
    configured FLAME, else the synthetic model).

    Camera: an item whose `cam` scale is 0 (including a missing `cam`) is framed by
    `default_cam`: its FLAME 'face' region centred, with the mean side of its xy
    bounding box times 1.4 spanning the image, as SMIRK's demo crops faces.

    Output: one item writes `out_png`; a batch of B writes `<stem>_000<suffix>` ...
    `<stem>_{B-1:03d}<suffix>` next to it. Returns the written paths in batch order.
    """
    from fbench.flame import load_flame
    from fbench.flame.params import load_params_npz

    if flame is None:
        flame = load_flame(None)
    params = load_params_npz(params_path, n_shape=flame.n_shape, n_exp=flame.n_exp)
    renderer = smirk_renderer_for(flame, "face", image_size=size)
    with torch.no_grad():
        images = render_flame(flame, params, renderer)["rendered_img"]

    out_png = Path(out_png)
    if images.shape[0] == 1:
        return [save_png(images[0], out_png)]
    return [save_png(img, out_png.with_name(f"{out_png.stem}_{i:03d}{out_png.suffix or '.png'}"))
            for i, img in enumerate(images)]
