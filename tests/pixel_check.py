"""Is a stored crop the source's pixels under the stored affine, to a fraction of a pixel?

The reference is an independent warp: `skimage.transform.warp` with the stored 2x3 affine
(source -> crop, OpenCV's pixel-centre convention: pixel i has its centre at coordinate i,
which is also skimage's), after a Gaussian anti-alias pre-filter of the source so downscaled
crops compare with a band-limited image. The sub-pixel offset between the crop and that
reference is measured by least squares on both images blurred alike (a symmetric blur moves nothing), so JPEG
noise and resize kernels do not matter but a shift of the pixel grid does: a 0.25 px error in the
affine's translation reads as 0.25 px here (checked by `test_crop_pixels.py`). The offset is a
Lucas-Kanade least-squares fit (gain, offset, dx, dy) over the crop's interior.
"""

from __future__ import annotations

import numpy as np

MAX_SHIFT_PX = 0.1  # a 0.25 px shift of the crop grid fails; JPEG and resampling stay below 0.05 px


def independent_warp(source: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The source under the affine (source -> crop), float grey, zero outside, via skimage only."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import AffineTransform, warp

    # Zero-pad explicitly (the crop is black outside the source) so interpolation across the
    # image border sees the zeros; warp()'s own mode="constant" would cut the border half a pixel in.
    pad = 8
    grey = np.pad(_grey(source), pad)
    affine = np.asarray(affine, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    if scale < 1:
        pad = max(pad, int(np.ceil(3 * 0.5 / scale)))
        grey = np.pad(_grey(source), pad)
        grey = gaussian_filter(grey, sigma=0.5 / scale)
    shifted = affine.copy()
    shifted[:, 2] -= affine[:, :2] @ [pad, pad]  # padded pixel p is source pixel p - pad
    matrix = np.vstack([shifted, [0.0, 0.0, 1.0]])
    # warp() takes the map from output (crop) coordinates to input (source) coordinates.
    return warp(grey, AffineTransform(matrix=matrix).inverse, output_shape=(size, size), order=1, mode="constant",
                cval=0.0, preserve_range=True)


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image.mean(axis=2) if image.ndim == 3 else image


def crop_shift(crop: np.ndarray, source: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(dx, dy) in crop pixels by which the crop is displaced from the independent warp.

    Lucas-Kanade: least squares for got(x) = gain * ref(x - d) + offset over the interior, with
    the reference re-shifted by the estimate and solved again (a few iterations converge for
    shifts well under a pixel; larger ones still read as large)."""
    from scipy.ndimage import gaussian_filter, shift as nd_shift

    size = crop.shape[0]
    expected = independent_warp(source, affine, size)
    got = _grey(crop)
    assert got.std() > 5 and expected.std() > 5, "a blank crop or reference cannot be registered"
    sigma = 1.0
    a, b = gaussian_filter(got, sigma), gaussian_filter(expected, sigma)
    # Fit only where the crop sees the source itself: the black padding's step edge would be
    # placed differently by every resampling kernel, the image content is not.
    h, w = source.shape[:2]
    affine = np.asarray(affine, dtype=np.float64)
    inv_scale = 1.0 / float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    xy = np.linalg.solve(affine[:, :2], np.stack([u.ravel() - affine[0, 2], v.ravel() - affine[1, 2]]))
    margin = 3 * max(1.0, inv_scale) + 2
    inside = ((xy[0] > margin) & (xy[0] < w - 1 - margin) & (xy[1] > margin) & (xy[1] < h - 1 - margin))
    m = max(4, size // 16)
    inner = inside.reshape(size, size)
    inner[:m], inner[-m:], inner[:, :m], inner[:, -m:] = False, False, False, False
    assert inner.sum() > size * size / 8, "too little of the crop shows the source to register it"
    d = np.zeros(2)  # (dx, dy)
    for _ in range(4):
        ref = nd_shift(b, (d[1], d[0]), order=3, mode="nearest")
        gy, gx = np.gradient(ref)
        design = np.stack([-gx[inner].ravel(), -gy[inner].ravel(), ref[inner].ravel(), np.ones(gx[inner].size)], 1)
        step, *_ = np.linalg.lstsq(design, a[inner].ravel() - ref[inner].ravel(), rcond=None)
        d = d + step[:2] / (1 + step[2])
        if np.abs(step[:2]).max() < 1e-4:
            break
    return d


def assert_crop_matches_affine(crop: np.ndarray, source: np.ndarray, affine: np.ndarray, what: str = "") -> float:
    shift = crop_shift(crop, source, affine)
    worst = float(np.abs(shift).max())
    assert worst < MAX_SHIFT_PX, f"{what}: crop is off its affine by {shift} px"
    return worst
