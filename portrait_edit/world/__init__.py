"""The procedural portrait world (DESIGN.md section 5): deterministic cartoon head-and-shoulders
portraits with 8 edit directions, exact targets and exact edit regions. Reading order: raster.py
(supersampled layers), identity.py / pose.py (parameters), portrait.py (the neutral portrait),
edits.py (the directions of the shipped tasks, portrait_edit/tasks.py), render.py (images and edit regions), pairs.py / faces.py (datasets),
openpose.py (pose images). docs/world.md shows a sample sheet."""

from portrait_edit.world.faces import FaceSample, make_face
from portrait_edit.world.identity import Identity, identity_from_seed, sample_identity
from portrait_edit.world.openpose import draw_pose, draw_pose_pair
from portrait_edit.world.pairs import WorldPair, make_pair, pair_from_meta, pair_from_params
from portrait_edit.world.pose import KEYPOINT_NAMES, Pose, pose_keypoints, sample_pose
from portrait_edit.world.render import edit_mask, render, render_edit

__all__ = [
    "KEYPOINT_NAMES",
    "FaceSample",
    "Identity",
    "Pose",
    "WorldPair",
    "draw_pose",
    "draw_pose_pair",
    "edit_mask",
    "identity_from_seed",
    "make_face",
    "make_pair",
    "pair_from_meta",
    "pair_from_params",
    "pose_keypoints",
    "render",
    "render_edit",
    "sample_identity",
    "sample_pose",
]
