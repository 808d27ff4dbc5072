"""The forward (noising) process of Stable Diffusion and its training objective, as pure functions.

Stable Diffusion 1.x trains with the "scaled_linear" schedule: sqrt(beta) is linear in t from
sqrt(0.00085) to sqrt(0.012) over T = 1000 steps, and the UNet predicts the added noise (epsilon).
`tests/unit/test_noise.py` checks these against diffusers' DDPMScheduler.

Randomness is always drawn from an explicit CPU `torch.Generator` and then moved to the target device, so a
run draws the same numbers on CPU and GPU, and each rank can own its own stream (`rank_generator`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scaled_linear_betas(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """SD's beta schedule: linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2.

    Returns:
        float32 (T,) betas, computed as diffusers does (a float32 linspace) so both schedules match.
    """
    if num_train_timesteps < 1 or not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(
            f"need num_train_timesteps >= 1 and 0 < beta_start < beta_end < 1, got "
            f"{num_train_timesteps}, {beta_start}, {beta_end}"
        )
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s); (T,) -> (T,)."""
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) in closed form: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

    Args:
        x0: clean latents (B, C, H, W) (any trailing shape).
        noise: standard normal noise, same shape as x0.
        timesteps: integer (B,) in [0, T).
        alphas_cumprod: (T,) cumulative products of the schedule.

    Returns:
        x_t, shape and dtype of x0.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    if timesteps.shape != (x0.shape[0],):
        raise ValueError(f"timesteps must have shape ({x0.shape[0]},), got {tuple(timesteps.shape)}")
    alpha_bar = alphas_cumprod.to(device=x0.device)[timesteps.to(x0.device)].to(x0.dtype)
    alpha_bar = alpha_bar.reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1): broadcast over C, H, W
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


def sample_timesteps(
    batch_size: int, generator: torch.Generator, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """Uniform training timesteps t ~ U{0, ..., T-1}: int64 (batch_size,) on the generator's device."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=generator.device)


def sample_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of `shape` (float32) drawn from `generator` on its device."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)


def fixed_timesteps(batch_size: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Evenly spread timesteps round(linspace(0, T-1, B)) (int64 (B,)): a deterministic validation set
    that weighs the whole schedule like uniform sampling does on average."""
    return torch.linspace(0, num_train_timesteps - 1, batch_size).round().long()


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(SNR_t, gamma) / SNR_t with
    SNR_t = alpha_bar_t / (1 - alpha_bar_t). Low-noise steps (huge SNR) stop dominating the gradient, which
    speeds up convergence severalfold; gamma = 5 is the paper's and diffusers' recommendation.

    Args:
        timesteps: integer (B,).
        alphas_cumprod: (T,).
        gamma: the SNR cap (> 0).

    Returns:
        float32 (B,) weights in (0, 1].
    """
    if gamma <= 0:
        raise ValueError(f"the min-SNR gamma must be > 0, got {gamma}")
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1.0 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def epsilon_loss(
    noise_pred: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor | None = None,
    position_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The epsilon-prediction objective: mean squared error, in float32 whatever the autocast dtype.

    Args:
        noise_pred: the UNet output (B, C, H, W).
        noise: the noise that was added (B, C, H, W).
        weights: optional per-sample weights (B,) (e.g. `min_snr_weights`); None: plain MSE.
        position_weights: optional per-position weights (B, 1, H, W); each sample's MSE becomes the
            weighted mean over positions (uniform weights give the plain MSE).

    Returns:
        scalar loss: mean over samples of weight * per-sample MSE.
    """
    squared = F.mse_loss(noise_pred.float(), noise.float(), reduction="none")
    if position_weights is None:
        per_sample = squared.flatten(1).mean(1)  # (B,)
    else:
        position_weights = position_weights.float().expand_as(squared)
        per_sample = (squared * position_weights).flatten(1).sum(1) / position_weights.flatten(1).sum(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()


def rank_generator(seed: int, rank: int, step: int = 0, micro: int = 0) -> torch.Generator:
    """The CPU generator of one rank's noise, timesteps and dropout at one training step.

    Hashed from (seed, rank, step, micro) by `keyed_generator`: each rank its own stream, and a step's
    numbers depend on nothing but its key, so a run resumed at any step draws exactly what an
    uninterrupted run draws there (whatever the world size of the first run). `micro` tells the
    micro-batches of one optimizer step apart under gradient accumulation.
    """
    if min(seed, rank, step, micro) < 0:
        raise ValueError(
            f"seed, rank, step and micro must be non-negative, got {seed}, {rank}, {step}, {micro}"
        )
    return keyed_generator(seed, rank, step, micro)


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by hashing a tuple of non-negative ints (numpy's SeedSequence: stable across
    machines and processes, and unrelated streams for nearby keys)."""
    if not key or any(k < 0 for k in key):
        raise ValueError(f"key must be non-empty non-negative integers, got {key}")
    lo, hi = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(((int(hi) << 32) | int(lo)) & ((1 << 63) - 1))
