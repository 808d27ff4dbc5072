"""Rendering entry points: a portrait image, and the exact edit region of an edit.

Anti-aliasing: every layer is sampled on a SUPERSAMPLE x SUPERSAMPLE grid per pixel and the grid is
box-averaged with integer rounding. The edit region of (identity, pose, direction) is the set of pixels
in which any sub-sample shows a layer that the edit removed, replaced or added, in the source or in
the target. Hence:
  * pixels outside the region are bit-identical in source and target (by construction);
  * every pixel that differs is inside the region;
  * region pixels that do not differ are anti-aliased border pixels (only some sub-samples are
    touched and the change vanishes in the rounding) or pixels where the new layer happens to have
    the colour of what it covers.
"""

from __future__ import annotations

import numpy as np

from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world.edits import apply_edit
from portrait_edit.world.identity import Identity
from portrait_edit.world.portrait import geometry, portrait_layers
from portrait_edit.world.pose import Pose
from portrait_edit.world.raster import Layer, edit_region, rasterize

SUPERSAMPLE = 4


def check_size(size: int) -> int:
    """ValueError unless `size` is an integer multiple of 8 and >= 16."""
    if not isinstance(size, int | np.integer) or size < 16 or size % 8:
        raise ValueError(f"size must be an integer multiple of 8 and >= 16 (e.g. 64), got {size!r}")
    return int(size)


def check_direction(direction: str | None) -> str | None:
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected None (source) or one of {DIRECTIONS}")
    return direction


def layers_for(identity: Identity, pose: Pose, direction: str | None, size: int) -> list[Layer]:
    """The stacked layers (bottom first) of the portrait edited towards `direction`."""
    base = portrait_layers(identity, pose, size)
    edited = apply_edit(base, geometry(identity, pose, size), identity, direction)
    # Stable sort: equal z keep insertion order, identical in source and target.
    return sorted(edited.values(), key=lambda layer: layer.z)


def render(identity: Identity, pose: Pose, direction: str | None = None, size: int = 64) -> np.ndarray:
    """The portrait of `identity` in `pose`, neutral (direction None) or edited.

    Returns:
        uint8 (size, size, 3) RGB.
    """
    size, direction = check_size(size), check_direction(direction)
    image, _ = rasterize(layers_for(identity, pose, direction, size), size, size, SUPERSAMPLE)
    return image


def render_edit(
    identity: Identity, pose: Pose, direction: str, size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source, exact target and edit region in one pass.

    Returns:
        src, tgt: uint8 (size, size, 3); region: bool (size, size) (see the module docstring).
    """
    size, direction = check_size(size), check_direction(direction)
    if direction is None:
        raise ValueError("render_edit needs a direction; use render() for the source alone")
    src = layers_for(identity, pose, None, size)
    tgt = layers_for(identity, pose, direction, size)
    return edit_region(src, tgt, size, size, SUPERSAMPLE)


def edit_mask(identity: Identity, pose: Pose, direction: str, size: int = 64) -> np.ndarray:
    """bool (size, size): the pixels touched by the layers the edit changes (module docstring)."""
    return render_edit(identity, pose, direction, size)[2]
