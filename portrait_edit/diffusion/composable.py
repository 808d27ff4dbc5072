"""Composable diffusion on an H x 2W canvas (paper §3.2, Eq. 2): one step of pair generation.

The canvas latent (B, C, h, 2w) holds x_A on the left and x_B on the right. Three prompts condition it:
p ("the same [X] on the left and right") over the whole canvas, p_a ("a [X], [Y]") on the left half and
p_b ("a [X], [Z]") on the right. With e~(c) = e(null) + g (e(c) - e(null)) (classifier-free guidance,
scale g = 7.5):

    eps_bar = s_d e~(p) + s_a M_a * e~(p_a) + s_b M_b * e~(p_b)                      (Eq. 2)

M_a / M_b are 1 on the left / right half, s_d = 0.1, s_a = s_b = 0.9. All three guided predictions share
ONE unconditional branch, so a step needs 4 evaluations (null, p, p_a, p_b), not 6, and they go through
the UNet (+ ControlNet) as one batch: `stack_branches` builds it, `split_branches` undoes it.

With the source drawn alone (`source_alone_eps`, an option past the paper), the left half is the base
model's own text-to-image sample of p_a on a W-wide canvas (e~(p_a) of a call that sees the left half only)
and the right half keeps Eq. 2 over the whole canvas, so x_B still sees x_A at every step while x_A never
sees x_B: the edit's colours cannot leak into the source (a santa costume's red into x_A's clothes).
"""

from __future__ import annotations

import torch

BRANCHES = ("null", "p", "p_a", "p_b")  # order of the branches in the batched call


def half_masks(width: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """M_a, M_b: float (1, 1, 1, width), 1 on the left / right half of a canvas `width` latents wide."""
    if width % 2:
        raise ValueError(f"the canvas width must be even (two halves), got {width}")
    left = (torch.arange(width, device=device) < width // 2).float().reshape(1, 1, 1, width)
    return left, 1.0 - left


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def composable_eps(
    e_null: torch.Tensor,
    e_p: torch.Tensor,
    e_pa: torch.Tensor,
    e_pb: torch.Tensor,
    guidance: float = 7.5,
    s_d: float = 0.1,
    s_a: float = 0.9,
    s_b: float = 0.9,
) -> torch.Tensor:
    """Eq. 2 from the four branch predictions, each float (B, C, h, 2w); returns eps_bar of that shape.

    Left half: s_d e~(p) + s_a e~(p_a); right half: s_d e~(p) + s_b e~(p_b).
    """
    m_a, m_b = half_masks(e_null.shape[-1], e_null.device)
    m_a, m_b = m_a.to(e_null.dtype), m_b.to(e_null.dtype)
    return (
        s_d * guided(e_null, e_p, guidance)
        + s_a * m_a * guided(e_null, e_pa, guidance)
        + s_b * m_b * guided(e_null, e_pb, guidance)
    )


def source_alone_eps(
    e_null: torch.Tensor,
    e_p: torch.Tensor,
    e_pb: torch.Tensor,
    e_null_left: torch.Tensor,
    e_pa_left: torch.Tensor,
    guidance: float = 7.5,
    s_d: float = 0.1,
    s_b: float = 0.9,
) -> torch.Tensor:
    """eps_bar (B, C, h, 2w) with the source drawn alone: left half e~(p_a) from the branches of a call on
    the left half only (B, C, h, w); right half s_d e~(p) + s_b e~(p_b) from the canvas branches."""
    right = composable_eps(e_null, e_p, e_null, e_pb, guidance, s_d, 0.0, s_b)  # Eq. 2 with no p_a term
    width = e_null.shape[-1] // 2
    if e_null_left.shape[-1] != width:
        raise ValueError(f"the left-half branches are {e_null_left.shape[-1]} wide, the canvas {2 * width}")
    return torch.cat([guided(e_null_left, e_pa_left, guidance), right[..., width:]], dim=-1)


def stack_branches(
    latents: torch.Tensor, states: dict[str, torch.Tensor], branches: tuple[str, ...] = BRANCHES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched call's inputs: latents repeated per branch (nB, C, h, 2w) and the branches' text
    states stacked in `branches` order (nB, L, D); `states[name]` is (B, L, D) (or (1, L, D), broadcast)."""
    batch = latents.shape[0]
    stacked = [states[name].expand(batch, -1, -1) for name in branches]
    return latents.repeat(len(branches), 1, 1, 1), torch.cat(stacked)


def split_branches(prediction: torch.Tensor, branches: tuple[str, ...] = BRANCHES) -> dict[str, torch.Tensor]:
    """(nB, ...) from one batched call -> {branch: (B, ...)} in `branches` order."""
    return dict(zip(branches, prediction.chunk(len(branches))))
