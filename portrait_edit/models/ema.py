"""Exponential moving average of a module's weights, with diffusers' EMAModel warmup."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(n: int, decay: float) -> float:
    """Decay of the n-th EMA update (n = 1, 2, ...): min(decay, n / (n + 9)), diffusers' EMAModel warmup,
    so the random or pretrained starting weights fade within the first tens of steps even in short runs."""
    return min(decay, n / (n + 9))


@torch.no_grad()
def _ema_update(
    ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor, decay: float
) -> None:
    """AveragedModel's multi_avg_fn (module level: DDP spawn pickles the system)."""
    torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay_at(int(n_averaged), decay))


def ema_copy(module: nn.Module, decay: float) -> AveragedModel:
    """An EMA of `module` starting at its current weights, never receiving gradients (DDP would wait for
    them otherwise): e_n = d_n * e_(n-1) + (1 - d_n) * p_n with d_n = ema_decay_at(n, decay), one update per
    `update_parameters(module)`."""
    ema = AveragedModel(module, multi_avg_fn=partial(_ema_update, decay=decay), use_buffers=False)
    # n_averaged counts updates + 1 from here: AveragedModel would copy the weights on update 0 instead.
    ema.n_averaged.fill_(1)
    return ema.requires_grad_(False)
