"""The SD forward process and training objective (diffusion/noise.py) against diffusers and closed forms."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from torch.testing import assert_close

from portrait_edit.diffusion.noise import (
    add_noise,
    alphas_cumprod_from_betas,
    epsilon_loss,
    fixed_timesteps,
    keyed_generator,
    min_snr_weights,
    rank_generator,
    sample_noise,
    sample_timesteps,
    scaled_linear_betas,
)


@pytest.fixture(scope="module")
def diffusers_ddpm():
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000
    )


@pytest.fixture(scope="module")
def alphas_cumprod():
    return alphas_cumprod_from_betas(scaled_linear_betas())


def test_schedule_equals_diffusers(diffusers_ddpm, alphas_cumprod):
    assert_close(scaled_linear_betas(), diffusers_ddpm.betas)
    assert_close(alphas_cumprod, diffusers_ddpm.alphas_cumprod)


def test_schedule_closed_form_end_points(alphas_cumprod):
    betas = scaled_linear_betas()
    assert_close(betas[0], torch.tensor(0.00085), rtol=1e-6, atol=0.0)
    assert_close(betas[-1], torch.tensor(0.012), rtol=1e-6, atol=0.0)
    # alpha_bar_T = prod_t (1 - beta_t) with beta_t = (a + (b - a) t / (T - 1)) ** 2, in float64.
    a, b = math.sqrt(0.00085), math.sqrt(0.012)
    expected = math.prod(1.0 - (a + (b - a) * t / 999) ** 2 for t in range(1000))
    assert_close(
        alphas_cumprod[-1].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=0.0
    )


def test_add_noise_equals_diffusers(diffusers_ddpm, alphas_cumprod):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    assert_close(add_noise(x0, noise, t, alphas_cumprod), diffusers_ddpm.add_noise(x0, noise, t))


def test_add_noise_closed_form_at_first_and_last_step(alphas_cumprod):
    x0, noise = torch.full((2, 4, 2, 2), 2.0), torch.full((2, 4, 2, 2), -1.0)
    t = torch.tensor([0, 999])
    out = add_noise(x0, noise, t, alphas_cumprod)
    beta0 = 0.00085  # alpha_bar_0 = 1 - beta_0
    assert_close(out[0], torch.full((4, 2, 2), 2.0 * math.sqrt(1 - beta0) - math.sqrt(beta0)))
    last = alphas_cumprod[-1].item()  # about 0.0047: x_T is almost pure noise
    assert last < 0.005
    assert_close(out[1], torch.full((4, 2, 2), 2.0 * math.sqrt(last) - math.sqrt(1 - last)))


def test_add_noise_rejects_mismatched_shapes(alphas_cumprod):
    with pytest.raises(ValueError, match="noise shape"):
        add_noise(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 3), torch.tensor([0, 1]), alphas_cumprod)
    with pytest.raises(ValueError, match="timesteps"):
        add_noise(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.tensor([0]), alphas_cumprod)


def test_timesteps_are_uniform_integers_from_the_generator():
    t = sample_timesteps(20000, torch.Generator().manual_seed(1))
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999
    assert abs(t.float().mean().item() - 499.5) < 3 * 288.7 / math.sqrt(20000)  # uniform: sd 288.7
    assert torch.equal(t, sample_timesteps(20000, torch.Generator().manual_seed(1)))
    assert torch.equal(fixed_timesteps(5), torch.tensor([0, 250, 500, 749, 999]))


def test_rank_generators_differ_across_ranks_and_repeat_per_rank():
    def draw(rank: int, step: int = 0) -> torch.Tensor:
        g = rank_generator(seed=3, rank=rank, step=step)
        return torch.cat([sample_noise((2, 4, 3, 3), g).flatten(), sample_timesteps(4, g).float()])

    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1, step=1), draw(1))
    plain = keyed_generator(3, 1, 0, 0)  # rank 1 of seed 3 at step 0: the stream of key (3, 1, 0, 0)
    expected = torch.cat(
        [
            torch.randn(2, 4, 3, 3, generator=plain).flatten(),
            torch.randint(0, 1000, (4,), generator=plain).float(),
        ]
    )
    assert torch.equal(draw(1), expected)
    # A resumed run (step > 0) does not replay step 0's stream.
    assert not torch.equal(draw(0, step=100), draw(0))
    assert torch.equal(draw(0, step=100), draw(0, step=100))
    assert not torch.equal(
        torch.randn(4, generator=keyed_generator(1, 2)), torch.randn(4, generator=keyed_generator(2, 1))
    )


def test_epsilon_loss_is_the_mean_squared_error_in_float32():
    pred, noise = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16), torch.tensor([[0.0, 0.0]])
    loss = epsilon_loss(pred, noise)
    assert loss.dtype == torch.float32
    assert_close(loss, torch.tensor(2.5))


def test_epsilon_loss_position_weights_give_a_weighted_mean_per_sample():
    noise = torch.zeros(2, 1, 1, 2)
    pred = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 0.0]]]])  # squared errors (1, 4) and (9, 0)
    positions = torch.tensor([[[[3.0, 1.0]]], [[[1.0, 1.0]]]])
    expected = ((3 * 1 + 4) / 4 + (9 + 0) / 2) / 2
    assert_close(epsilon_loss(pred, noise, position_weights=positions), torch.tensor(expected))
    with_snr = epsilon_loss(pred, noise, torch.tensor([2.0, 0.0]), positions)
    assert_close(with_snr, torch.tensor(2 * (3 * 1 + 4) / 4 / 2))
    assert_close(
        epsilon_loss(pred, noise, position_weights=torch.full_like(positions, 5.0)), epsilon_loss(pred, noise)
    )


def test_weighted_loss_and_min_snr_weights(alphas_cumprod):
    pred, noise = torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.zeros(2, 2)
    assert_close(epsilon_loss(pred, noise, torch.tensor([1.0, 0.5])), torch.tensor((1.0 + 0.5 * 4.0) / 2))
    t = torch.tensor([0, 300, 999])
    weights = min_snr_weights(t, alphas_cumprod, gamma=5.0)
    for w, step in zip(weights, t):
        a = alphas_cumprod[step].item()
        snr = a / (1 - a)
        assert_close(w, torch.tensor(min(snr, 5.0) / snr))
    assert weights[0] < 0.01 and weights[-1] == 1.0  # t = 0 has SNR ~ 1175; t = 999 has SNR < 5
