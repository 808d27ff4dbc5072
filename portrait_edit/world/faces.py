"""Face-dataset view of the world (the FFHQ stand-in for the identity encoder).

`make_face(identity_seed, view_seed)` shows identity `identity_seed` in normal clothes under a pose and
an expression drawn from the view seed, so many (identity x view) samples teach an encoder what stays
fixed (the identity) and what does not (pose, expression).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portrait_edit.tasks import TASKS
from portrait_edit.world.identity import identity_from_seed
from portrait_edit.world.pose import sample_pose
from portrait_edit.world.render import check_size, render

# Neutral plus the four expressions; costumes stay off (they hide the hair and clothes).
FACE_EXPRESSIONS: tuple[str | None, ...] = (None, *TASKS["expression"])


@dataclass
class FaceSample:
    """image: uint8 (size, size, 3); meta: JSON-serialisable parameters (identity, pose, expression)."""

    image: np.ndarray
    gender: str
    identity_seed: int
    meta: dict


def make_face(identity_seed: int, view_seed: int, size: int = 64) -> FaceSample:
    """Identity `identity_seed` under view `view_seed` (pose and expression from the stream
    [identity_seed, view_seed, 3]); both seeds are integers >= 0."""
    for name, value in (("identity_seed", identity_seed), ("view_seed", view_seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    size = check_size(size)
    identity = identity_from_seed(int(identity_seed))
    rng = np.random.default_rng([int(identity_seed), int(view_seed), 3])
    pose = sample_pose(rng)
    expression = FACE_EXPRESSIONS[int(rng.integers(len(FACE_EXPRESSIONS)))]
    meta = {
        "identity_seed": int(identity_seed),
        "view_seed": int(view_seed),
        "size": size,
        "expression": expression,
        "identity": identity.to_dict(),
        "pose": pose.to_dict(),
    }
    return FaceSample(render(identity, pose, expression, size), identity.gender, int(identity_seed), meta)
