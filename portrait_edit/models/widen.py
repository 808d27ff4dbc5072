"""Widen a UNet's input convolution so that extra condition channels can be concatenated to z_t.

The MCDM concatenates the spatial condition E(x_A) (4 channels) to the noisy latent (4 channels), so its
conv_in goes 4 -> 8 (paper section 3.3). The new input slices start at zero, which makes the widened UNet
compute exactly what the pretrained one did, whatever the extra input is, until training moves them.
The diffusers InstructPix2Pix example and the official release both drop conv_in's bias when they do this.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Replace `unet.conv_in` by a conv with `in_channels` inputs that equals the old one at init.

    Steps: 1. build a conv with the same geometry, dtype and device; 2. zero its weight, copy the old weight
    into the first C_old input slices and copy the bias; 3. record the new width in the config, so that
    save_pretrained / from_pretrained rebuild the wide conv.

    Args:
        unet: the model to widen in place (any diffusers model with `conv_in` and `config.in_channels`,
            e.g. UNet2DConditionModel or ControlNetModel); it is also returned.
        in_channels: the new number of input channels, greater than the current one
            (8 for latent + spatial condition).

    Returns:
        The same `unet`, whose conv_in maps (B, in_channels, h, w) and ignores channels C_old: at init.
    """
    old = unet.conv_in
    if not isinstance(old, nn.Conv2d):
        raise ValueError(
            f"widen_conv_in needs a model whose conv_in is an nn.Conv2d, got {type(old).__name__}"
        )
    if in_channels <= old.in_channels:
        raise ValueError(
            f"in_channels={in_channels} must be greater than the current {old.in_channels}; "
            "widen_conv_in only adds input channels"
        )
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)  # a frozen UNet stays frozen
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet
