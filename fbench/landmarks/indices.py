"""Landmark set sizes and the MediaPipe subset SMIRK trains with."""

from __future__ import annotations

MEDIAPIPE_POINTS = 478  # face mesh 468 + 10 iris (refine_landmarks=True)
FAN_POINTS = 68

# The 105 MediaPipe points that have FLAME barycentric embeddings (SMIRK's
# datasets/base_dataset.py `mediapipe_indices`; also FLAME's mp_landmark_indices), in that order.
SMIRK_MEDIAPIPE_INDICES: tuple[int, ...] = (
    276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53, 55, 63, 65, 66, 70, 105, 107,
    249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466, 7, 33, 133,
    144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246, 168, 6, 197, 195, 5, 4, 129,
    98, 97, 2, 326, 327, 358, 0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95,
    146, 178, 181, 185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375,
    402, 405, 409, 415,
)

# The 49-point scheme of BP4D's 2D feature tracks (2DFeatures/<subject>_<task>.mat, pts_2d (49, 2)):
# iBUG-68 without the 17 jaw-contour points and the two inner mouth corners (60, 64), in iBUG order
# (brows 17-26, nose 27-35, eyes 36-47, outer mouth 48-59, inner mouth 61-63 and 65-67).
IBUG49_IN_68: tuple[int, ...] = tuple(i for i in range(17, 68) if i not in (60, 64))
