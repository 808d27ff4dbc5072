"""Image-to-caption retrieval: the share of images whose most similar caption is of their class."""

from __future__ import annotations

import torch


def retrieval_top1(
    similarity: torch.Tensor, image_classes: torch.Tensor, caption_classes: torch.Tensor
) -> torch.Tensor:
    """Image-to-caption retrieval: 1.0 where the most similar caption is of the image's class.

    Args:
        similarity: float (N, C), image x caption.
        image_classes: long (N,).
        caption_classes: long (C,).

    Returns:
        float (N,) in {0, 1}; its mean is the top-1 accuracy.
    """
    best = similarity.argmax(dim=1)
    return (caption_classes.to(best.device)[best] == image_classes).float()
