"""Gaussian blur, separable with reflect padding: of masks at a fixed kernel (torchvision's
`gaussian_blur`, the model-made mask's) and of images each at its own width (the direction classifier's
training degradations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(
    kernel_size: int, sigma: float | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised 1-D Gaussian taps; sigma None: torchvision's default for the size,
    0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8 (1.1 for kernel 5)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8 if sigma is None else sigma
    x = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def separable_blur(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) blurred along the width, then the height, by odd-length taps: one (K,) row for
    every image, or one per image (B, K); reflect padding."""
    batch, channels, height, width = images.shape
    rows = (taps[None] if taps.ndim == 1 else taps).to(images).expand(batch, -1)
    kernel = rows.repeat_interleave(channels, dim=0)  # one row per (image, channel)
    pad = kernel.shape[1] // 2
    x = F.pad(images.reshape(1, batch * channels, height, width), (pad,) * 4, mode="reflect")
    x = F.conv2d(x, kernel[:, None, None, :], groups=batch * channels)
    x = F.conv2d(x, kernel[:, None, :, None], groups=batch * channels)
    return x.reshape(batch, channels, height, width)


def blur_maps(maps: torch.Tensor, kernel_size: int = 5, sigma: float | None = None) -> torch.Tensor:
    """Maps (B, h, w) blurred as torchvision's gaussian_blur(kernel_size, sigma) blurs them."""
    return separable_blur(maps[:, None], gaussian_kernel1d(kernel_size, sigma))[:, 0]


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image (B, C, H, W) blurred by a Gaussian of its own width sigma (B,) in pixels (kernel radius
    ceil(3 max sigma); sigma 0 leaves an image unchanged)."""
    radius = max(1, int(torch.ceil(3 * sigma.max()).item()))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    safe = sigma.to(images).clamp(min=1e-6)[:, None]
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * safe**2))
    return separable_blur(images, kernel / kernel.sum(dim=1, keepdim=True))  # sigma -> 0: the identity
