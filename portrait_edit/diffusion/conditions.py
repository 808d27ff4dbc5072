"""The MCDM's three conditions: dropout in training, the reconstruction swap, and multi-condition guidance.

Conditions, in guidance order (DESIGN.md §2): `image` (c_im), `spatial` (c_s), `text` (c_p). Inference
guidance (Eq. 1 generalised, s1 = 3 image, s2 = 3 spatial, s3 = 5 text):

    eps = e(0,0,0) + s1 [e(im,0,0) - e(0,0,0)] + s2 [e(im,s,0) - e(im,0,0)] + s3 [e(im,s,p) - e(im,s,0)]

so training must produce each of those branches: with probability p_drop a sample drops one of the 7
non-empty subsets of the conditions (uniform unless weighted), replaced by the ONE null of each condition
(black-image image and spatial conditions, the "" text) that inference uses too (`apply_null`). With
probability p_swap the sample is a reconstruction: its target becomes (x_A, p_a), which makes e(..., p_a)
reproduce x_A, as the editing mask and Eq. 3 need.
"""

from __future__ import annotations

import itertools
import math

import torch

CONDITIONS = ("image", "spatial", "text")
# The 7 non-empty subsets, as drop flags per condition (image, spatial, text), in a fixed order.
SUBSETS: tuple[tuple[bool, bool, bool], ...] = tuple(
    s for s in itertools.product((False, True), repeat=3) if any(s)
)


def drop_masks(
    batch_size: int, generator: torch.Generator, p_drop: float = 0.2, weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample drop flags {condition: bool (B,)}.

    Each sample drops nothing with probability 1 - p_drop, else one of the 7 SUBSETS, drawn with
    `weights` (7 non-negative numbers in SUBSETS order; None: uniform).
    """
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"p_drop must be in [0, 1], got {p_drop}")
    probs = torch.ones(len(SUBSETS)) if weights is None else torch.tensor(weights, dtype=torch.float)
    if probs.shape != (len(SUBSETS),) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"weights need {len(SUBSETS)} non-negative numbers (SUBSETS order), got {weights}")
    dropped = torch.rand(batch_size, generator=_cpu(generator)) < p_drop
    which = torch.multinomial(probs / probs.sum(), batch_size, replacement=True, generator=_cpu(generator))
    table = torch.tensor(SUBSETS)  # (7, 3)
    flags = table[which] & dropped[:, None]  # (B, 3)
    return {name: flags[:, i] for i, name in enumerate(CONDITIONS)}


def swap_mask(batch_size: int, generator: torch.Generator, p_swap: float = 0.05) -> torch.Tensor:
    """bool (B,): True where the sample becomes a reconstruction (target x_A under p_a)."""
    if not 0.0 <= p_swap <= 1.0:
        raise ValueError(f"p_swap must be in [0, 1], got {p_swap}")
    return torch.rand(batch_size, generator=_cpu(generator)) < p_swap


def apply_null(condition: torch.Tensor, null: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """`condition` (B, ...) with the rows where `drop` (B,) is True replaced by `null` (1 or B, ...)."""
    mask = drop.to(condition.device).reshape(-1, *([1] * (condition.ndim - 1)))
    return torch.where(mask, null.to(condition), condition)


def check_scales(scales: dict[str, float], complete: bool = False) -> dict[str, float]:
    """The guidance scales {image, spatial, text} (any of them, all when `complete`) as floats; ValueError,
    naming the bad entry, for an unknown name or a value that is not a finite number >= 0 (0 drops the
    term; a negative scale guides away from its condition)."""
    unknown = sorted(set(scales) - set(CONDITIONS))
    missing = [c for c in CONDITIONS if c not in scales] if complete else []
    if unknown or missing:
        raise ValueError(
            f"guidance scales are named {list(CONDITIONS)}; got {sorted(scales)}"
            + (f" (unknown: {unknown})" if unknown else f" (missing: {missing})")
        )
    for name, value in scales.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"guidance scale {name}={value!r} must be a finite number >= 0 (the paper: 3 / 3 / 5)"
            )
    return {name: float(value) for name, value in scales.items()}


def multi_guidance(
    e_none: torch.Tensor,
    e_image: torch.Tensor,
    e_image_spatial: torch.Tensor,
    e_all: torch.Tensor,
    s_image: float = 3.0,
    s_spatial: float = 3.0,
    s_text: float = 5.0,
) -> torch.Tensor:
    """Eq. 1 generalised: e(0,0,0) + s1 [e(im,0,0) - e(0,0,0)] + s2 [e(im,s,0) - e(im,0,0)]
    + s3 [e(im,s,p) - e(im,s,0)], all float of one shape."""
    return (
        e_none
        + s_image * (e_image - e_none)
        + s_spatial * (e_image_spatial - e_image)
        + s_text * (e_all - e_image_spatial)
    )


def _cpu(generator: torch.Generator) -> torch.Generator:
    if generator.device.type != "cpu":
        raise ValueError("condition dropout draws on a CPU generator (the same draws on every device)")
    return generator
