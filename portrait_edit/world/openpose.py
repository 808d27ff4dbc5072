"""OpenPose-style drawing of COCO-18 keypoints (the conditioning image of a pose ControlNet).

Matches controlnet_aux's `draw_bodypose` at 512 px (limbs as filled ellipses of half-width 4 in 0.6 x
the limb colour, joints as discs of radius 4 in the joint colour, black background), with the stick
width and joint radius scaled by image size and kept at least ~1 pixel so 64 px drawings stay visible.
"""

from __future__ import annotations

import math

import numpy as np

# 1-based (first, second) keypoint of each limb; controlnet_aux draws these 17 of OpenPose's 19.
LIMBS = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
    (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)  # fmt: skip
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip


def draw_pose(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """Draw keypoints (18, 3) [x, y, visible] in pixel units on a black (height, width, 3) uint8 canvas.

    Limbs are drawn only when both ends are visible, joints only when visible; pixels are tested at
    their centres (x + 0.5, y + 0.5), with no anti-aliasing, as OpenPose's drawing does.
    """
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape != (18, 3):
        raise ValueError(f"keypoints must have shape (18, 3), got {keypoints.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    canvas = np.zeros((height, width, 3), np.uint8)
    unit = min(height, width) / 512.0
    stick, radius = max(1.0, 4.0 * unit), max(1.5, 4.0 * unit)
    px = np.arange(width)[None, :] + 0.5
    py = np.arange(height)[:, None] + 0.5
    for (a, b), colour in zip(LIMBS, COLOURS):
        (xa, ya, va), (xb, yb, vb) = keypoints[a - 1], keypoints[b - 1]
        if not (va > 0 and vb > 0):
            continue
        half = max(math.hypot(xb - xa, yb - ya) / 2.0, stick)
        angle = math.atan2(yb - ya, xb - xa)
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = px - (xa + xb) / 2.0, py - (ya + yb) / 2.0
        along, across = c * dx + s * dy, -s * dx + c * dy
        canvas[(along / half) ** 2 + (across / stick) ** 2 <= 1.0] = [int(ch * 0.6) for ch in colour]
    for (x, y, visible), colour in zip(keypoints, COLOURS):
        if visible > 0:
            canvas[(px - x) ** 2 + (py - y) ** 2 <= radius**2] = colour
    return canvas


def draw_pose_pair(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """The same pose drawn on the left and the right half of a (height, 2 * width, 3) uint8 canvas,
    the pose condition of the paper's paired generation (keypoints in single-image pixels)."""
    single = draw_pose(keypoints, height, width)
    return np.concatenate([single, single], axis=1)
