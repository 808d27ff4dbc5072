"""widen_conv_in: the widened UNet equals the original whatever the extra channels hold (house rule 8)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from portrait_edit.loading.components import load_unet
from portrait_edit.models.widen import widen_conv_in


@pytest.fixture
def unet():
    model = load_unet("tiny", seed=0)
    with torch.no_grad():
        # Random init leaves a small bias; make it large so that an implementation dropping it fails loudly.
        model.conv_in.bias.uniform_(0.5, 1.5)
    return model


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    extra = 10 * torch.randn(2, 4, 16, 16, generator=g)  # large, so a non-zero new slice would show
    text = torch.randn(2, 77, 32, generator=g)
    return latents, extra, torch.tensor([10, 900]), text


def test_widened_unet_equals_original_for_any_extra_input(unet):
    latents, extra, t, text = _inputs()
    with torch.no_grad():
        expected = unet(latents, t, encoder_hidden_states=text).sample
        old_weight, old_bias = unet.conv_in.weight.clone(), unet.conv_in.bias.clone()
        widen_conv_in(unet, 8)
        got = unet(torch.cat([latents, extra], dim=1), t, encoder_hidden_states=text).sample
        got_other = unet(torch.cat([latents, -extra], dim=1), t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_other, expected)
    torch.testing.assert_close(unet.conv_in.weight[:, :4], old_weight, rtol=0, atol=0)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    torch.testing.assert_close(unet.conv_in.bias, old_bias, rtol=0, atol=0)
    assert unet.conv_in.in_channels == 8 and unet.conv_in.padding == (1, 1)


def test_new_slices_learn(unet):
    # Zero-initialised is not frozen: gradients reach the new input slices.
    widen_conv_in(unet, 8)
    latents, extra, t, text = _inputs(1)
    unet(torch.cat([latents, extra], dim=1), t, encoder_hidden_states=text).sample.square().mean().backward()
    assert unet.conv_in.weight.grad[:, 4:].abs().sum() > 0


def test_config_and_save_load_round_trip(unet, tmp_path):
    widen_conv_in(unet, 8)
    assert unet.config.in_channels == 8
    unet.save_pretrained(tmp_path / "unet")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.config.in_channels == 8 and loaded.conv_in.in_channels == 8
    torch.testing.assert_close(loaded.conv_in.weight, unet.conv_in.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.conv_in.bias, unet.conv_in.bias, rtol=0, atol=0)


def test_frozen_stays_frozen_and_dtype_kept(unet):
    unet.requires_grad_(False)
    unet.to(torch.float64)
    widen_conv_in(unet, 8)
    assert not unet.conv_in.weight.requires_grad
    assert unet.conv_in.weight.dtype == torch.float64


@pytest.mark.parametrize("channels", [3, 4])
def test_refuses_not_wider(unet, channels):
    with pytest.raises(ValueError, match="must be greater"):
        widen_conv_in(unet, channels)
