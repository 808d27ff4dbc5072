"""The learning-rate schedule the small base-model systems share."""

from __future__ import annotations

import torch


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, warmup_fraction: float, total_steps: float
) -> dict:
    """Lightning's optimizer config for `optimizer` under a per-step one-cycle schedule: a half-cosine
    warmup from lr / 10 to lr over `warmup_fraction` of the steps, then cosine decay to lr / 100.

    Args:
        optimizer: the optimizer (its lr is overwritten by the schedule).
        lr: peak learning rate.
        warmup_fraction: share of the steps spent warming up, in [0, 1).
        total_steps: optimizer steps of the run (`trainer.estimated_stepping_batches`).
    """
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        total_steps=max(2, int(total_steps)),
        pct_start=warmup_fraction,
        div_factor=10.0,
        final_div_factor=10.0,
        cycle_momentum=False,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
