"""Mask-guided editing (paper §3.4, supplementary 1.3; DESIGN.md §2): the model-made mask and Eq. 3.

The mask: E(x_A) is noised to the 10th of 20 UniPC timesteps and denoised one step twice, under p_a and
under p_b (same noise, same guidance); |difference| averaged over channels, then over 10 seeds; normalised
to [0, 1] per image; Gaussian blur with kernel 5; M = value > lambda (0.2 costume, 0.35 cartoon
expression). Then every sampling step combines
    eps_hat = eps(p_b) * M + eps(p_a) * (1 - M)                                     (Eq. 3)
All functions are pure tensor maths.
"""

from __future__ import annotations

import torch

from portrait_edit.blur import blur_maps

# Where the mask is read: E(x_A) noised to this share of the sampling timesteps (0.5 of 20: the 10th).
MASK_AT = 0.5


def prediction_difference(pred_a: torch.Tensor, pred_b: torch.Tensor, seeds: int) -> torch.Tensor:
    """Mean over seeds of the channel-mean |pred_b - pred_a|.

    Args:
        pred_a, pred_b: one-step predictions (seeds * B, C, h, w), seed-major (rows s * B .. s * B + B - 1
            are seed s).
        seeds: the number of seeds.

    Returns:
        float (B, h, w).
    """
    if pred_a.shape != pred_b.shape or pred_a.shape[0] % seeds:
        raise ValueError(
            f"need equal shapes with a multiple of {seeds} rows; got {pred_a.shape}, {pred_b.shape}"
        )
    diff = (pred_b.float() - pred_a.float()).abs().mean(dim=1)  # (S * B, h, w)
    return diff.reshape(seeds, -1, *diff.shape[1:]).mean(dim=0)


def normalise(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each map (B, h, w) rescaled to [0, 1] by its own min and max (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    return (maps - low[:, None, None]) / (high - low).clamp(min=eps)[:, None, None]


def cut_mask(
    difference: torch.Tensor, threshold: float | torch.Tensor, kernel_size: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """M = blur_maps(normalise(difference)) > threshold and the soft map, both float (B, h, w) (M in {0, 1});
    threshold: one lambda, or one per row (B,)."""
    soft = blur_maps(normalise(difference.float()), kernel_size)
    lam = torch.as_tensor(threshold, dtype=soft.dtype, device=soft.device)
    return (soft > (lam[:, None, None] if lam.ndim else lam)).float(), soft


def usable_range(soft: torch.Tensor) -> tuple[float, float]:
    """The lambdas that cut a mask which is neither empty nor the whole image on every one of the soft
    maps (B, h, w): (the highest of their minima, the lowest of their peaks)."""
    flat = soft.float().flatten(1)
    return float(flat.min(dim=1).values.max()), float(flat.max(dim=1).values.min())


def check_threshold(threshold: float, usable: tuple[float, float] | None, where: str) -> None:
    """Raise ValueError, naming the usable range, for a lambda that selects everything or nothing.

    The soft map is normalised to [0, 1] and blurred, so a lambda below 0 selects every pixel and one at or
    above 1 none, on any image; `usable` (an export's measured range, `usable_range`) narrows that to the
    lambdas that select part of every calibration image."""
    if usable is None:  # a blurred map's minimum can exceed 0: lambda 0 may select every pixel too
        low, high, inside = 0.0, 1.0, 0.0 < threshold < 1.0
        measured = f"on any image; {where} has no measured range: tools/calibrate_mask.py"
    else:
        (low, high), measured = usable, f"measured for {where} on calibration portraits"
        inside = low <= threshold < high
    if not inside:
        what = "every pixel" if threshold <= low else "no pixel"
        what += " of every portrait" if not 0 <= threshold < 1 else " of some portraits"
        raise ValueError(
            f"lambda {threshold:g} selects {what}: the usable range is "
            f"{'[' if usable else '('}{low:.3f}, {high:.3f}) ({measured}); pass a threshold inside it"
        )


def edit_mask(
    pred_a: torch.Tensor, pred_b: torch.Tensor, seeds: int, threshold: float, kernel_size: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The binary mask M and the soft map it was cut from, both float (B, h, w) (M in {0, 1})."""
    return cut_mask(prediction_difference(pred_a, pred_b, seeds), threshold, kernel_size)


def combine(eps_a: torch.Tensor, eps_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: eps_b * M + eps_a * (1 - M), with M (B, h, w) broadcast over channels."""
    m = mask.to(eps_b)[:, None]
    return eps_b * m + eps_a * (1 - m)
