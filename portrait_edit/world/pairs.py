"""Training / validation pairs of the world: (x_A, x_B) plus the exact target and edit region.

Seeds: pair seed s shows identity s (`identity_from_seed`), its pose comes from the stream [s, 1] and
its jitter from the stream [s, 2, direction index], so the same seed gives the same person and pose for
every direction, and every array of a pair is a pure function of (seed, direction, size, jitter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from portrait_edit.tasks import DIRECTIONS, prompts_for, task_for_direction
from portrait_edit.world.identity import Identity, identity_from_seed
from portrait_edit.world.openpose import draw_pose
from portrait_edit.world.pose import Pose, pose_keypoints, sample_pose
from portrait_edit.world.render import check_direction, check_size, render, render_edit

WORLD_VERSION = 1


@dataclass
class WorldPair:
    """One edit pair. Images are uint8 (size, size, 3); edit_mask is bool (size, size) and belongs to
    `gt` (the un-jittered exact target); keypoints (18, 3) belong to `src` and `gt`."""

    src: np.ndarray
    tgt: np.ndarray
    gt: np.ndarray
    edit_mask: np.ndarray
    keypoints: np.ndarray
    pose_image: np.ndarray
    prompts: dict[str, str]
    direction: str
    task: str
    gender: str
    meta: dict


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_jitter(jitter: float) -> float:
    if not isinstance(jitter, int | float) or not math.isfinite(jitter) or not 0.0 <= jitter <= 1.0:
        raise ValueError(
            f"jitter must be a number in [0, 1] (0 = perfect pairs, 1 = strongest), got {jitter!r}"
        )
    return float(jitter)


def jitter_identity(identity: Identity, rng: np.random.Generator, amount: float) -> Identity:
    """Small identity drift of a generated x_B: skin and hair colour, face width, hair parting/line."""

    def drift(colour: tuple[int, int, int], spread: float) -> tuple[int, int, int]:
        shift = rng.uniform(-spread, spread, 3) * amount
        return tuple(int(np.clip(round(c + d), 0, 255)) for c, d in zip(colour, shift))

    return replace(
        identity,
        skin=drift(identity.skin, 14.0),
        hair_colour=drift(identity.hair_colour, 20.0),
        face_width=float(round(identity.face_width * (1.0 + amount * rng.uniform(-0.04, 0.04)), 6)),
        hair_detail=float(
            round(np.clip(identity.hair_detail + amount * rng.uniform(-0.3, 0.3), 0.0, 1.0), 6)
        ),
    )


def jitter_pose(pose: Pose, rng: np.random.Generator, amount: float) -> Pose:
    """Small layout drift of a generated x_B: head shift (<= 3% of the image), tilt (<= 6 degrees),
    scale (<= 6%)."""
    return Pose(
        cx=float(round(pose.cx + amount * rng.uniform(-0.03, 0.03), 6)),
        cy=float(round(pose.cy + amount * rng.uniform(-0.03, 0.03), 6)),
        tilt=float(round(pose.tilt + amount * rng.uniform(-6.0, 6.0), 6)),
        scale=float(round(pose.scale * (1.0 + amount * rng.uniform(-0.06, 0.06)), 6)),
    )


def pair_from_params(
    identity: Identity,
    pose: Pose,
    direction: str,
    size: int = 64,
    tgt_identity: Identity | None = None,
    tgt_pose: Pose | None = None,
    meta: dict | None = None,
) -> WorldPair:
    """Render a pair from explicit parameters; x_B uses (tgt_identity, tgt_pose) when given (jitter).

    Returns:
        WorldPair whose `meta` is `meta` (or a minimal parameter dict when None).
    """
    size, direction = check_size(size), check_direction(direction)
    if direction is None:
        raise ValueError(f"a pair needs a direction, one of {DIRECTIONS}")
    src, gt, mask = render_edit(identity, pose, direction, size)
    tgt_identity, tgt_pose = tgt_identity or identity, tgt_pose or pose
    tgt = (
        gt
        if (tgt_identity, tgt_pose) == (identity, pose)
        else render(tgt_identity, tgt_pose, direction, size)
    )
    keypoints = pose_keypoints(pose, size)
    task = task_for_direction(direction)
    return WorldPair(
        src=src,
        tgt=tgt.copy(),
        gt=gt,
        edit_mask=mask,
        keypoints=keypoints,
        pose_image=draw_pose(keypoints, size, size),
        prompts=prompts_for(direction, identity.gender, task),
        direction=direction,
        task=task,
        gender=identity.gender,
        meta=meta if meta is not None else _meta(identity, pose, tgt_identity, tgt_pose, direction, size),
    )


def _meta(identity, pose, tgt_identity, tgt_pose, direction, size, seed=None, jitter=0.0) -> dict:
    """JSON-serialisable parameters; identity_seed / pose_seed name the sources when seeded."""
    seeds = {} if seed is None else {"identity_seed": seed, "pose_seed": seed}
    return {
        "world_version": WORLD_VERSION,
        "seed": seed,
        **seeds,
        "direction": direction,
        "task": task_for_direction(direction),
        "size": size,
        "jitter": jitter,
        "identity": identity.to_dict(),
        "pose": pose.to_dict(),
        "tgt_identity": tgt_identity.to_dict(),
        "tgt_pose": tgt_pose.to_dict(),
    }


def make_pair(seed: int, direction: str, size: int = 64, jitter: float = 0.0) -> WorldPair:
    """The pair with integer `seed` (>= 0) edited towards `direction`.

    Args:
        seed: pair id; identity and pose depend on it alone (not on the direction).
        direction: one of DIRECTIONS.
        size: image side, a multiple of 8 and >= 16.
        jitter: in [0, 1]; > 0 gives x_B (`tgt`) the layout and identity drift of generated pairs,
            scaled by `jitter`. `gt` and `edit_mask` are always the exact, un-jittered edit.
    """
    seed, size, jitter = _check_seed(seed), check_size(size), _check_jitter(jitter)
    if check_direction(direction) is None:
        raise ValueError(f"a pair needs a direction, one of {DIRECTIONS}")
    identity = identity_from_seed(seed)
    pose = sample_pose(np.random.default_rng([seed, 1]))
    tgt_identity, tgt_pose = identity, pose
    if jitter > 0:
        rng = np.random.default_rng([seed, 2, DIRECTIONS.index(direction)])
        tgt_pose = jitter_pose(pose, rng, jitter)
        tgt_identity = jitter_identity(identity, rng, jitter)
    meta = _meta(identity, pose, tgt_identity, tgt_pose, direction, size, seed, jitter)
    return pair_from_params(identity, pose, direction, size, tgt_identity, tgt_pose, meta)


def pair_from_meta(meta: dict) -> WorldPair:
    """Re-render a pair bit-for-bit from its `meta` (e.g. read back from a shard's JSON)."""
    try:
        identity, pose = Identity.from_dict(meta["identity"]), Pose.from_dict(meta["pose"])
        tgt_identity, tgt_pose = Identity.from_dict(meta["tgt_identity"]), Pose.from_dict(meta["tgt_pose"])
        direction, size = meta["direction"], meta["size"]
    except KeyError as error:
        raise ValueError(
            f"world pair meta lacks the key {error}; it needs identity, pose, tgt_identity, tgt_pose, direction, size"
        ) from None
    if meta.get("world_version", WORLD_VERSION) != WORLD_VERSION:
        raise ValueError(
            f"meta was written by world version {meta['world_version']}, this is {WORLD_VERSION}"
        )
    return pair_from_params(identity, pose, direction, size, tgt_identity, tgt_pose, dict(meta))
