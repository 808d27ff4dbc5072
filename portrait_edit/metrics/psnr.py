"""Peak signal-to-noise ratio, per image (the mean of per-image PSNRs is what reconstruction reports)."""

from __future__ import annotations

import torch


def psnr_per_image(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] (data range 1): 10 log10(1 / MSE), one value per image.

    Averaging per-image PSNRs (not the PSNR of the pooled MSE) is the usual reconstruction figure; the
    two differ when errors vary across images. `eps` caps a perfect reconstruction at 100 dB.

    Args:
        prediction: float (B, C, H, W) in [0, 1] (clamp first).
        target: float (B, C, H, W) in [0, 1].

    Returns:
        float (B,).
    """
    if prediction.shape != target.shape or prediction.ndim < 2:
        raise ValueError(
            f"prediction and target need the same (B, ...) shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse + eps)
