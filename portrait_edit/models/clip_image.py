"""The CLIP image encoder's input and tokens, shared by the identity encoder, the zero-shot gender
reader and the MCDM's image condition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

# OpenAI CLIP's pixel statistics (ViT-L/14 and every openai/clip-* checkpoint).
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_pixels(images: torch.Tensor, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """Images float (B, 3, H, W) in [-1, 1] -> CLIP input (B, 3, size, size): resized (bicubic,
    antialiased) and normalised per channel, (x01 - mean) / std with x01 the faces in [0, 1]."""
    images = (images.float() + 1.0) / 2.0
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return (images - images.new_tensor(mean)[None, :, None, None]) / images.new_tensor(std)[
        None, :, None, None
    ]


def clip_hidden_state(
    image_encoder: CLIPVisionModel | CLIPVisionModelWithProjection,
    images: torch.Tensor,
    layer: int,
    size: int,
    mean: list[float],
    std: list[float],
) -> torch.Tensor:
    """CLIP's tokens of images (B, 3, H, W) in [-1, 1] (shown to it by `clip_pixels`): hidden state `layer`,
    float (B, N, width) (N = 1 + patches: the class token and the patch tokens).

    Index i counts like transformers' `hidden_states`: 0 the embeddings after the pre-LayerNorm, i the
    output of layer i, -1 the last layer's. Read with a forward hook of our own rather than
    `output_hidden_states=True`: transformers captures those with hooks it installs lazily, which do
    not survive pickling into spawned (DDP) processes, where hidden_states comes back None.
    """
    pixels = clip_pixels(images, size, mean, std)
    pixels = pixels.to(image_encoder.device, image_encoder.dtype)
    vision = image_encoder.vision_model
    count = len(vision.encoder.layers)
    if not -(count + 1) <= layer <= count:
        raise ValueError(f"CLIP layer {layer} is out of range for a {count}-layer CLIP image encoder")
    index = layer % (count + 1)
    if index == count:
        return image_encoder(pixel_values=pixels).last_hidden_state
    module = vision.pre_layrnorm if index == 0 else vision.encoder.layers[index - 1]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        image_encoder(pixel_values=pixels)
    finally:
        handle.remove()
    return captured[0]
