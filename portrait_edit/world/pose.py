"""Pose of a world portrait and its OpenPose COCO-18 keypoints.

The renderer places the head and body with `head_frame` / `body_frame` and the keypoints come from
the same frames, so the drawn nose, eyes, ears, neck and shoulders sit on their keypoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from portrait_edit.world.raster import Frame

KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip

HEAD_UNIT = 0.19  # head unit (about the face half-height) as a fraction of the image size at scale 1
NECK_DROP = 1.38  # neck keypoint below the head centre, in head units

# Keypoints in local units: head ones in the (tilted) head frame, body ones in the upright body frame
# whose origin is the neck. The person faces the viewer, so their right side is the image's left.
HEAD_POINTS = {
    "nose": (0.0, 0.3), "r_eye": (-0.36, -0.02), "l_eye": (0.36, -0.02),
    "r_ear": (-0.92, 0.05), "l_ear": (0.92, 0.05),
}  # fmt: skip
BODY_POINTS = {
    "neck": (0.0, 0.0), "r_shoulder": (-1.7, 0.5), "l_shoulder": (1.7, 0.5),
    "r_elbow": (-2.15, 2.7), "l_elbow": (2.15, 2.7), "r_wrist": (-2.0, 4.8), "l_wrist": (2.0, 4.8),
    "r_hip": (-1.05, 4.4), "l_hip": (1.05, 4.4), "r_knee": (-1.1, 7.6), "l_knee": (1.1, 7.6),
    "r_ankle": (-1.1, 10.6), "l_ankle": (1.1, 10.6),
}  # fmt: skip


@dataclass(frozen=True)
class Pose:
    """Head placement. cx, cy: head centre as fractions of the image width / height; tilt: in-plane
    rotation of the head in degrees (positive = clockwise on screen); scale: head size, 1 = default."""

    cx: float
    cy: float
    tilt: float
    scale: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Pose:
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"pose dict needs exactly the keys {sorted(names)}, got {sorted(data)}")
        return cls(**{k: float(v) for k, v in data.items()})


def sample_pose(rng: np.random.Generator) -> Pose:
    """A head-shot pose: the head anywhere in the middle 44% x 20% of the frame (so that where the head is
    drawn is something a pose ControlNet must control: two random poses are a median ~10 px apart at
    64 x 64), up to 14 degrees of tilt, +-10% size."""
    return Pose(
        cx=float(round(rng.uniform(0.28, 0.72), 4)),
        cy=float(round(rng.uniform(0.32, 0.52), 4)),
        tilt=float(round(rng.uniform(-14.0, 14.0), 3)),
        scale=float(round(rng.uniform(0.9, 1.1), 4)),
    )


def head_frame(pose: Pose, size: int) -> Frame:
    """Frame of the head: origin at the face centre, unit = head unit, rotated by the tilt."""
    return Frame(pose.cx * size, pose.cy * size, HEAD_UNIT * size * pose.scale, pose.tilt)


def body_frame(pose: Pose, size: int) -> Frame:
    """Frame of the upright body: origin at the neck keypoint, same unit as the head."""
    unit = HEAD_UNIT * size * pose.scale
    return Frame(pose.cx * size, pose.cy * size + NECK_DROP * unit, unit, 0.0)


def pose_keypoints(pose: Pose, size: int) -> np.ndarray:
    """OpenPose COCO-18 keypoints of `pose` in a size x size image.

    Returns:
        float32 (18, 3): x, y in pixels (pixel centres at integer + 0.5) and visibility 1 for points
        inside the image, 0 for points outside it (arms, hips and legs of a head shot).
    """
    head, body = head_frame(pose, size), body_frame(pose, size)
    out = np.zeros((len(KEYPOINT_NAMES), 3), np.float32)
    for index, name in enumerate(KEYPOINT_NAMES):
        frame, (u, v) = (head, HEAD_POINTS[name]) if name in HEAD_POINTS else (body, BODY_POINTS[name])
        x, y = frame.to_pixel(u, v)
        out[index] = (x, y, float(0.0 <= x < size and 0.0 <= y < size))
    return out
