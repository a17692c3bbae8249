"""SMIRK's augmentation recipe: each transform's probability, parameter range and place in the order.

The recipe is SMIRK's datasets/base_dataset.py:41-52 (albumentations 1.3.0, requirements.txt):

    A.RandomBrightnessContrast(p=0.5)                                  # limits 0.2, brightness_by_max
    A.RandomGamma(p=0.5)                                               # gamma_limit (80, 120)
    A.ColorJitter(brightness=0.05, contrast=0.05, saturation=0.05, hue=0.05, p=0.25)  # shuffled order
    A.CLAHE(p=0.255)                                                   # clip_limit 4 -> (1, 4), tiles 8x8
    A.RGBShift(p=0.25)                                                 # +-20 per channel
    A.Blur(p=0.1)                                                      # blur_limit 7 -> ksize 3, 5, 7
    A.GaussNoise(p=0.5)                                                # var_limit (10, 50), mean 0
    A.ShiftScaleRotate(shift_limit=0.05, scale_limit=0.1, rotate_limit=10, border_mode=0, p=0.9)

The numbers are spelled here (albumentations 1.3.0 defaults as in its transforms' signatures),
never imported from fbench. Every transform function is replaced by a recorder, so thousands of
draws cost milliseconds; probabilities are checked with a binomial 5-sigma band, continuous
parameters with a Kolmogorov-Smirnov test against the uniform law of the recipe.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from methods.smirk import augment
from methods.smirk.augment import SmirkAugment

N = 4000
ORDER = ["brightness_contrast", "gamma", "color_jitter", "clahe", "rgb_shift", "box_blur", "gauss_noise",
         "shift_scale_rotate"]
P = {"brightness_contrast": 0.5, "gamma": 0.5, "color_jitter": 0.25, "clahe": 0.255, "rgb_shift": 0.25,
     "box_blur": 0.1, "gauss_noise": 0.5, "shift_scale_rotate": 0.9}
JITTER = ("jitter_brightness", "jitter_contrast", "jitter_saturation", "jitter_hue")


@pytest.fixture(scope="module")
def draws():
    """N calls of the default SmirkAugment with every transform recorded (name, parameters)."""
    calls: list[list[tuple[str, tuple]]] = []
    mp = pytest.MonkeyPatch()

    def recorder(name):
        def record(image, *args):
            calls[-1].append((name, tuple(a for a in args if not isinstance(a, np.random.Generator))))
            return image
        return record

    for name in ("brightness_contrast", "gamma", "clahe", "rgb_shift", "box_blur", "gauss_noise") + JITTER:
        mp.setattr(augment, name, recorder(name))

    def ssr(width, height, angle, scale, dx, dy):
        calls[-1].append(("shift_scale_rotate", (angle, scale, dx, dy)))
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    mp.setattr(augment, "shift_scale_rotate_matrix", ssr)
    try:
        aug, rng = SmirkAugment(), np.random.default_rng(1234)
        image, mask = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8)
        for _ in range(N):
            calls.append([])
            aug(rng, image, mask, [np.zeros((2, 2))])
    finally:
        mp.undo()
    return calls


def _grouped(call):
    """The call's transform names with the four ColorJitter parts folded into one."""
    names = []
    for name, _ in call:
        name = "color_jitter" if name in JITTER else name
        if not names or names[-1] != name:
            names.append(name)
    return names


def _params(draws, name):
    return np.array([args for call in draws for n, args in call if n == name], dtype=np.float64)


def test_each_transform_fires_with_the_recipes_probability(draws):
    counts = Counter(n for call in draws for n in _grouped(call))
    for name, p in P.items():
        sigma = math.sqrt(N * p * (1 - p))
        assert abs(counts[name] - N * p) < 5 * sigma, (name, counts[name] / N, p)
    # Independent draws: e.g. both photometric halves together at p^2.
    both = sum({"brightness_contrast", "gamma"} <= set(_grouped(c)) for c in draws)
    assert abs(both - N * 0.25) < 5 * math.sqrt(N * 0.25 * 0.75)


def test_transforms_run_in_the_recipes_order(draws):
    for call in draws:
        names = _grouped(call)
        assert names == sorted(names, key=ORDER.index), names
        assert len(names) == len(set(names))


def test_color_jitter_applies_all_four_parts_in_shuffled_order(draws):
    orders = Counter()
    for call in draws:
        parts = tuple(n for n, _ in call if n in JITTER)
        if parts:
            assert sorted(parts) == sorted(JITTER)
            orders[parts] += 1
    # albumentations' ColorJitter shuffles its transforms on every call: all 24 orders occur.
    assert set(orders) == set(itertools.permutations(JITTER))


def _uniform(values, lo, hi, name):
    assert values.min() >= lo and values.max() <= hi, (name, values.min(), values.max())
    assert stats.kstest(values, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4, name


def test_parameter_ranges_follow_the_recipe(draws):
    bc = _params(draws, "brightness_contrast")  # (alpha, beta): alpha = 1 + U(-0.2, 0.2), beta = U(-0.2, 0.2)
    _uniform(bc[:, 0], 0.8, 1.2, "contrast alpha")
    _uniform(bc[:, 1], -0.2, 0.2, "brightness beta")
    _uniform(_params(draws, "gamma")[:, 0], 0.8, 1.2, "gamma")  # gamma_limit (80, 120) / 100
    for name in JITTER[:3]:
        _uniform(_params(draws, name)[:, 0], 0.95, 1.05, name)  # 1 +- 0.05
    _uniform(_params(draws, "jitter_hue")[:, 0], -0.05, 0.05, "hue")
    _uniform(_params(draws, "clahe")[:, 0], 1.0, 4.0, "clahe clip limit")
    shifts = np.array([np.ravel(a[0]) for call in draws for n, a in call if n == "rgb_shift"])
    assert shifts.shape[1] == 3 and abs(np.corrcoef(shifts.T)[0, 1]) < 0.15  # one shift per channel
    for c in range(3):
        _uniform(shifts[:, c], -20.0, 20.0, f"rgb shift {c}")
    ksize = Counter(int(k) for k in _params(draws, "box_blur")[:, 0])
    assert set(ksize) == {3, 5, 7}  # blur_limit 7: odd kernel sizes 3..7, uniformly
    assert stats.chisquare(list(ksize.values())).pvalue > 1e-4
    _uniform(_params(draws, "gauss_noise")[:, 0] ** 2, 10.0, 50.0, "noise variance")  # var_limit, sigma = sqrt
    ssr = _params(draws, "shift_scale_rotate")  # (angle, scale, dx, dy)
    _uniform(ssr[:, 0], -10.0, 10.0, "rotation degrees")
    _uniform(ssr[:, 1], 0.9, 1.1, "scale")
    _uniform(ssr[:, 2], -0.05, 0.05, "shift x")
    _uniform(ssr[:, 3], -0.05, 0.05, "shift y")


@pytest.mark.parametrize("angle, scale, dx, dy", [(10.0, 1.1, 0.05, -0.05), (-7.5, 0.9, -0.02, 0.03)])
def test_shift_scale_rotate_matrix_is_albumentations(angle, scale, dx, dy):
    # albumentations 1.3.0 geometric/functional.py shift_scale_rotate and keypoint_shift_scale_rotate:
    # cv2.getRotationMatrix2D about (width / 2, height / 2) (positive angle: counter-clockwise on
    # screen), then + (dx * width, dy * height). Written out without OpenCV:
    w, h = 120, 80
    a, b = scale * math.cos(math.radians(angle)), scale * math.sin(math.radians(angle))
    cx, cy = w / 2, h / 2
    expected = np.array([[a, b, (1 - a) * cx - b * cy + dx * w], [-b, a, b * cx + (1 - a) * cy + dy * h]])
    np.testing.assert_allclose(augment.shift_scale_rotate_matrix(w, h, angle, scale, dx, dy), expected, atol=1e-9)


def test_photometric_formulas():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    x = np.arange(256, dtype=np.float64).reshape(16, 16, 1)
    # albumentations 1.3.0 brightness_contrast_adjust (uint8, brightness_by_max): LUT of x * alpha + beta * 255,
    # clipped to [0, 255] and cast (truncated; float32 tables may land one level either side).
    got = augment.brightness_contrast(img, 1.15, -0.1).astype(np.int64)
    assert np.abs(got - np.clip(x * 1.15 - 0.1 * 255, 0, 255).astype(np.int64).repeat(3, 2)).max() <= 1
    # gamma_transform (uint8): LUT of (x / 255) ** gamma * 255.
    got = augment.gamma(img, 1.2).astype(np.int64)
    assert np.abs(got - ((x / 255) ** 1.2 * 255).repeat(3, 2)).max() <= 1
