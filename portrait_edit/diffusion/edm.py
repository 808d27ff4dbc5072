"""The stochastic Karras (EDM) sampler (Karras et al. 2022, Algorithm 2) for an SD epsilon model.

Pair generation samples with "the Stochastic Karras VE scheduler, 20 steps" (supplementary 1.1);
diffusers' KarrasVeScheduler is deprecated and written for VE score models, so this is our own code:

1. Noise levels: the Karras schedule sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,
   i < N, then sigma_N = 0, between the SD schedule's own extremes (`vp_sigmas`: 0.0292 .. 14.6146).
2. The denoiser D(x; sigma) of an epsilon model trained on the VP schedule (`eps_denoiser`): the model sees
   x / sqrt(1 + sigma^2) at the fractional timestep whose sigma this is, and D = x - sigma * eps.
3. Each step (`edm_sample`): churn raises the noise level sigma_i -> sigma_hat = sigma_i (1 + gamma_i) by
   adding fresh noise (gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0), an
   Euler step goes to sigma_(i+1), and, unless sigma_(i+1) = 0, Heun's correction averages the slopes
   (a second evaluation). With S_churn = 0 this is the deterministic Heun sampler (Algorithm 1).

Latents are in the VE scaling throughout (x = x_vp * sqrt(1 + sigma^2)): start from N(0, sigma_0^2) and
the last step returns the clean latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma (B,)) -> x0 estimate


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise level of each training timestep, sigma_t = sqrt((1 - abar_t) / abar_t): float64 (T,)."""
    a = alphas_cumprod.double()
    return ((1.0 - a) / a).sqrt()


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The Karras schedule of `steps` noise levels from sigma_max down to sigma_min, then 0: float64 (steps + 1,)."""
    if steps < 1 or not 0 < sigma_min < sigma_max or rho <= 0:
        raise ValueError(
            f"need steps >= 1, 0 < sigma_min < sigma_max, rho > 0; got {steps}, {sigma_min}, {sigma_max}, {rho}"
        )
    ramp = (
        torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    )
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def sigma_to_timestep(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of each sigma by linear interpolation of log sigma over the training table
    (`vp_sigmas`, increasing with t); clamped to [0, T - 1]. float (same shape as sigma)."""
    log_table = table.double().log().to(sigma.device)
    log_sigma = sigma.double().clamp(min=float(table[0]), max=float(table[-1])).log()
    high = torch.searchsorted(log_table, log_sigma).clamp(1, len(table) - 1)
    low = high - 1
    w = (log_sigma - log_table[low]) / (log_table[high] - log_table[low])
    return (low + w).to(sigma.dtype)


def eps_denoiser(eps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], table: torch.Tensor) -> Denoiser:
    """D(x; sigma) of an epsilon model `eps(model_input, timestep)` trained on the VP schedule `table`.

    The model input is x / sqrt(1 + sigma^2) (the VP-scaled latent) at the timestep of sigma; then
    D = x - sigma * eps (sigma broadcast over (B, C, H, W))."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x - s * eps(x / (1 + s**2).sqrt(), sigma_to_timestep(sigma, table))

    return denoise


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Algorithm 2's gamma_i: min(S_churn / N, sqrt(2) - 1) for sigma in [S_tmin, S_tmax], else 0."""
    return min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0


def fresh_noise(x: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like x, from one generator or one per sample (a list of len(x))."""
    if not isinstance(generator, list):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if len(generator) != len(x):
        raise ValueError(f"{len(generator)} generators for a batch of {len(x)}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype) for g in generator]
    )


def twin_halves(x: torch.Tensor) -> torch.Tensor:
    """x (..., 2w) with its right half replaced by a copy of its left half."""
    if x.shape[-1] % 2:
        raise ValueError(f"twin_halves needs an even width, got {x.shape[-1]}")
    left = x[..., : x.shape[-1] // 2]
    return torch.cat([left, left], dim=-1)


@torch.no_grad()
def edm_sample(
    denoise: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    heun: bool = True,
    noise_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Algorithm 2 of Karras et al. 2022: x_0 from standard-normal `noise` scaled to sigmas[0].

    Args:
        denoise: D(x, sigma (B,)) -> clean estimate, same shape as x.
        noise: float (B, ...) standard normal; the start is noise * sigmas[0].
        sigmas: float64 (N + 1,) decreasing, last 0 (`karras_sigmas`).
        generator: for the churn noise (its device must be noise's); a list gives each sample its own
            generator, so a sample does not depend on what else is in its batch.
        s_churn, s_tmin, s_tmax, s_noise: the stochasticity settings (S_churn = 0: deterministic Heun).
        heun: apply the second-order correction (2 evaluations a step except the last; False: Euler).
        noise_map: applied to every churn noise as it is drawn (e.g. `twin_halves`); None: as drawn.
        on_step: called as x = on_step(i, x) before step i's evaluations, with x at sigmas[i]; what it
            returns goes on (the pair generator's edit mask blends the canvas's halves there).

    Returns:
        the sample at sigma = 0, shape of noise.
    """
    steps = len(sigmas) - 1
    x = noise * float(sigmas[0])
    batch = noise.shape[0]
    for i in range(steps):
        if on_step is not None:
            x = on_step(i, x)
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax)
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            fresh = fresh_noise(x, generator)
            fresh = fresh if noise_map is None else noise_map(fresh)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * fresh
        level = torch.full((batch,), sigma_hat, device=x.device, dtype=torch.float64)
        slope = (x - denoise(x, level)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * slope
        if heun and sigma_next > 0:
            level = torch.full((batch,), sigma_next, device=x.device, dtype=torch.float64)
            slope_next = (x_next - denoise(x_next, level)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
        x = x_next
    return x
