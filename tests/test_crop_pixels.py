"""A crop's pixels against an independent warp of its source by the stored affine, to 0.1 px.

The shard pipelines' own tests call the same check (`pixel_check.assert_crop_matches_affine`)
on their stored JPEG crops; this module pins the checker itself: it reads ~0 for fbench's crops
in every regime (upscale, 2x block-average downscale, zero padding, JPEG) and reads a 0.25 px
error in the affine as 0.25 px.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fbench.landmarks.crop import CropBox, crop_square
from pixel_check import MAX_SHIFT_PX, assert_crop_matches_affine, crop_shift


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512 x 512 RGB


BOXES = [
    (CropBox(250.3, 180.7, 200.4), 128),  # linear downscale
    (CropBox(250.3, 180.7, 200.4), 256),  # upscale
    (CropBox(260.0, 200.0, 400.0), 96),  # INTER_AREA pre-reduction, factor 4
    (CropBox(40.0, 60.0, 300.0), 128),  # zero padding top-left, factor 2
    (CropBox(480.2, 470.9, 250.0), 128),  # zero padding bottom-right
]


@pytest.mark.parametrize("box, size", BOXES)
def test_crop_is_its_source_under_the_affine(photo, box, size):
    crop = crop_square(photo, box, size)
    assert_crop_matches_affine(crop.image, photo, crop.affine, f"{box} -> {size}")
    ok, enc = cv2.imencode(".jpg", crop.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert_crop_matches_affine(cv2.imdecode(enc, cv2.IMREAD_UNCHANGED), photo, crop.affine, "after JPEG")


@pytest.mark.parametrize("dx, dy", [(0.25, 0.0), (0.0, -0.25), (0.5, 0.5)])
def test_the_check_sees_a_quarter_pixel(photo, dx, dy):
    crop = crop_square(photo, CropBox(250.3, 180.7, 200.4), 128)
    wrong = crop.affine.copy()
    wrong[:, 2] += (dx, dy)
    shift = crop_shift(crop.image, photo, wrong)
    # The crop sits at -(dx, dy) relative to what the wrong affine predicts.
    np.testing.assert_allclose(shift, [-dx, -dy], atol=0.03)
    with pytest.raises(AssertionError, match="off its affine"):
        assert_crop_matches_affine(crop.image, photo, wrong)
    assert MAX_SHIFT_PX < 0.25
