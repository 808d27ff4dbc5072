"""OpenPose COCO-18 keypoints as loss weights: a Gaussian over the face.

A head shot's face covers under a tenth of the image, yet its few-pixel eyes, mouth and tears are what an
expression edit changes; the VAE and the mini UNet weight their losses towards it (`face_weight`).
"""

from __future__ import annotations

import torch

FACE_KEYPOINTS = (0, 14, 15, 16, 17)  # OpenPose COCO-18 nose, right / left eye, right / left ear


def face_gaussian(keypoints: torch.Tensor, height: int, width: int, sigma_scale: float = 1.5) -> torch.Tensor:
    """A Gaussian bump over each image's face, from its OpenPose keypoints.

    Centre: the mean of the visible face keypoints (nose, eyes, ears); standard deviation: `sigma_scale` x
    their root-mean-square distance from that centre (a frontal head shot: about the face half-height).

    Args:
        keypoints: float (B, 18, 3): x, y in pixels and visibility.
        height, width: image size.
        sigma_scale: width of the bump relative to the spread of the face keypoints.

    Returns:
        float (B, 1, H, W) in [0, 1], peak 1 at the centre; all zero for an image with fewer than two
        visible face keypoints.
    """
    face = keypoints[:, FACE_KEYPOINTS].float()
    visible = face[..., 2:3] > 0
    count = visible.sum(dim=1)  # (B, 1)
    centre = (face[..., :2] * visible).sum(dim=1) / count.clamp(min=1)
    spread = ((face[..., :2] - centre[:, None]).pow(2).sum(-1, keepdim=True) * visible).sum(
        dim=1
    ) / count.clamp(min=1)
    sigma = sigma_scale * spread.sqrt().clamp(min=0.5)  # (B, 1)
    ys = torch.arange(height, device=keypoints.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=keypoints.device, dtype=torch.float32) + 0.5
    d2 = (xs[None, None, :] - centre[:, 0, None, None]).pow(2) + (
        ys[None, :, None] - centre[:, 1, None, None]
    ).pow(2)
    bump = torch.exp(-d2 / (2 * sigma[:, :, None].pow(2)))
    return (bump * (count >= 2)[:, :, None]).unsqueeze(1)


def face_weights(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    face_weight: float,
    sigma_scale: float = 1.5,
) -> torch.Tensor:
    """Per-position loss weights 1 + face_weight x `face_gaussian`, on an `out_size` grid (e.g. latents)
    covering the `image_size` image the keypoints were measured on.

    Args:
        keypoints: float (B, 18, 3) in pixels of the (H, W) = image_size image.
        image_size, out_size: (H, W) of the image and of the weight grid.

    Returns:
        float (B, 1, h, w), all >= 1.
    """
    (height, width), (h, w) = image_size, out_size
    scaled = keypoints.float().clone()
    scaled[..., 0] *= w / width
    scaled[..., 1] *= h / height
    return 1.0 + face_weight * face_gaussian(scaled, h, w, sigma_scale)
