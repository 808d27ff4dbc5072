import math

import pytest
import torch

from portrait_edit.systems.schedules import one_cycle


def test_one_cycle_warms_up_then_decays_by_cosine_to_a_hundredth():
    lr, steps, warmup = 1e-3, 100, 0.1
    config = one_cycle(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), lr, warmup, steps)
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = round(warmup * steps) - 1  # torch counts the warmup phase as pct_start * total - 1 steps
    assert seen[0] == pytest.approx(lr / 10)
    assert seen[peak] == pytest.approx(lr)
    k = peak // 2  # half-cosine ramp from lr / 10 up to lr
    assert seen[k] == pytest.approx(lr / 10 + (lr - lr / 10) * (1 - math.cos(math.pi * k / peak)) / 2)
    assert seen[-1] == pytest.approx(lr / 100, rel=1e-2)
    assert all(a >= b for a, b in zip(seen[peak:], seen[peak + 1 :]))
