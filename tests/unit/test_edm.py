"""The EDM sampler against closed forms: a 1-D Gaussian's analytic denoiser, a plain Heun reference, the
Karras schedule and the VP <-> timestep map."""

import math

import pytest
import torch
from torch.testing import assert_close

from portrait_edit.diffusion.edm import (
    churn_gamma,
    edm_sample,
    eps_denoiser,
    karras_sigmas,
    sigma_to_timestep,
    twin_halves,
    vp_sigmas,
)
from portrait_edit.diffusion.noise import alphas_cumprod_from_betas, scaled_linear_betas

MU, S = 1.5, 0.5  # data ~ N(MU, S^2)


def gaussian_denoiser(x, sigma):
    """E[y | y + sigma n = x] for y ~ N(MU, S^2): MU + S^2 / (S^2 + sigma^2) (x - MU)."""
    s2 = sigma.to(x.dtype).reshape(-1, 1) ** 2
    return MU + S**2 / (S**2 + s2) * (x - MU)


def test_karras_schedule_closed_form():
    sigmas = karras_sigmas(3, 0.1, 10.0, rho=1.0)  # rho = 1: linear in sigma
    assert_close(sigmas, torch.tensor([10.0, 5.05, 0.1, 0.0], dtype=torch.float64))
    sd = vp_sigmas(alphas_cumprod_from_betas(scaled_linear_betas()))
    assert abs(float(sd[0]) - 0.0292) < 1e-3 and abs(float(sd[-1]) - 14.6146) < 1e-3


def test_sigma_to_timestep_inverts_the_table_and_interpolates_log_sigma():
    table = vp_sigmas(alphas_cumprod_from_betas(scaled_linear_betas()))
    t = torch.tensor([0, 10, 500, 999])
    assert_close(sigma_to_timestep(table[t], table), t.double())
    mid = (table[10].log() * 0.25 + table[11].log() * 0.75).exp()
    assert_close(sigma_to_timestep(mid[None], table), torch.tensor([10.75], dtype=torch.float64))


def test_churn_gamma_is_capped_and_windowed():
    assert churn_gamma(1.0, 20, 80.0, 0.05, 50.0) == math.sqrt(2) - 1
    assert churn_gamma(1.0, 20, 4.0, 0.05, 50.0) == 0.2
    assert churn_gamma(0.01, 20, 80.0, 0.05, 50.0) == 0.0


def test_stochastic_sampler_reproduces_the_gaussian_target():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(200_000, 1, generator=generator, dtype=torch.float64)
    # 100 steps: at 20 the discretisation alone (churn 0 too) leaves the std 4% high; it converges as the
    # steps grow (0.5009 deterministic, 0.5053 with churn 40 at 100 steps, 0.4999 at 400).
    sigmas = karras_sigmas(100, 0.002, 80.0)
    x = edm_sample(
        gaussian_denoiser, noise, sigmas, generator, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0
    )
    assert abs(x.mean().item() - MU) < 0.02  # the N(0, 80^2) start alone shifts it by 1.5 * 0.5 / 80 = 0.009
    assert abs(x.std().item() - S) < 0.015


def heun_reference(denoise, x, sigmas):
    """Karras et al. 2022 Algorithm 1 (deterministic Heun), written plainly."""
    for i in range(len(sigmas) - 1):
        t, t_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, torch.full((x.shape[0],), t))) / t
        x_next = x + (t_next - t) * d
        if t_next != 0:
            d2 = (x_next - denoise(x_next, torch.full((x.shape[0],), t_next))) / t_next
            x_next = x + (t_next - t) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def test_churn_zero_equals_the_deterministic_heun_reference():
    noise = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = karras_sigmas(20, 0.002, 80.0)
    got = edm_sample(gaussian_denoiser, noise, sigmas, torch.Generator().manual_seed(2), s_churn=0.0)
    assert_close(got, heun_reference(gaussian_denoiser, noise * 80.0, sigmas))


def test_eps_denoiser_is_exact_for_the_true_noise():
    """An oracle epsilon model (knows the clean latent) makes D return the clean latent at any sigma."""
    table = vp_sigmas(alphas_cumprod_from_betas(scaled_linear_betas()))
    clean = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    noise = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    seen = []

    def oracle(model_input, timestep):
        seen.append(timestep)
        s = sigma.reshape(-1, 1, 1, 1)
        # The VP latent the model sees is (clean + s noise) / sqrt(1 + s^2); its epsilon is the noise.
        assert_close(model_input, (clean + s * noise) / (1 + s**2).sqrt())
        return noise

    denoise = eps_denoiser(oracle, table)
    assert_close(denoise(clean + sigma.reshape(-1, 1, 1, 1) * noise, sigma), clean)
    assert_close(seen[0], sigma_to_timestep(sigma, table))


def test_per_sample_generators_make_each_sample_independent_of_its_batch():
    sigmas = karras_sigmas(5, 0.002, 80.0)
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    settings = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    together = edm_sample(gaussian_denoiser, noise, sigmas, gens, **settings)
    alone = edm_sample(gaussian_denoiser, noise[1:2], sigmas, [torch.Generator().manual_seed(11)], **settings)
    assert_close(together[1:2], alone)


def test_twin_noise_gives_both_halves_the_same_start_and_churn():
    assert_close(twin_halves(torch.tensor([[1.0, 2.0, 3.0, 4.0]])), torch.tensor([[1.0, 2.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="even width"):
        twin_halves(torch.zeros(1, 3))
    sigmas = karras_sigmas(5, 0.002, 80.0)
    noise = twin_halves(torch.randn(3, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    settings = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    twin = edm_sample(
        gaussian_denoiser, noise, sigmas, torch.Generator().manual_seed(6), noise_map=twin_halves, **settings
    )
    apart = edm_sample(gaussian_denoiser, noise, sigmas, torch.Generator().manual_seed(6), **settings)
    assert_close(twin[:, :4], twin[:, 4:])  # an elementwise denoiser: equal inputs, equal halves
    assert (apart[:, :4] - apart[:, 4:]).abs().max() > 0.1  # independent churn noise parts them
