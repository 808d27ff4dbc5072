"""SDEdit and DiffEdit baselines (diffusers' pipelines over our parts) on the tiny preset: the number of
UNet calls each schedule implies, mask shape and values, seeds."""

import copy

import pytest
import torch

from portrait_edit.evaluation.baselines import DiffEdit, SDEdit

SIZE = 32


@pytest.fixture(scope="module")
def parts(tiny_sd):
    return copy.deepcopy(tiny_sd)


def count_calls(unet):
    calls = []
    unet.register_forward_hook(lambda module, args, kwargs_or_out, *rest: calls.append(1), with_kwargs=False)
    return calls


def sources(n=2):
    torch.manual_seed(0)
    return torch.rand(n, 3, SIZE, SIZE) * 2 - 1


def test_sdedit_runs_the_strength_share_of_the_steps_once_each(parts):
    calls = count_calls(parts.unet)
    x = sources()
    for strength, expected in ((0.5, 5), (0.8, 8)):
        calls.clear()
        out = SDEdit(parts, strength=strength, steps=10)(x, ["a man"] * 2, ["a man, angry"] * 2, [1, 2])
        assert len(calls) == 2 * expected  # per input: int(steps * strength) guided calls
        assert out.images.shape == x.shape and out.mask is None
        assert out.images.min() >= -1 and out.images.max() <= 1
    again = SDEdit(parts, strength=0.8, steps=10)(x[1:], ["a man"], ["a man, angry"], [2])
    assert torch.allclose(again.images[0], out.images[1], atol=1e-5)  # an input's edit is its seed's alone
    with pytest.raises(ValueError, match="strength"):
        SDEdit(parts, strength=0.0)


def test_diffedit_mask_inversion_and_edit(parts):
    calls = count_calls(parts.unet)
    x = sources()
    out = DiffEdit(parts, steps=10, inpaint_strength=0.8, mask_maps=3)(
        x, ["a man, normal costume"] * 2, ["a man, santa claus costume"] * 2, [1, 2]
    )
    # Per input: one batched mask call, 8 inversion steps, 8 editing steps.
    assert len(calls) == 2 * (1 + 8 + 8)
    latent = SIZE // 2 ** (len(parts.vae.config.block_out_channels) - 1)
    assert out.mask.shape == (2, latent, latent)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    assert out.images.shape == x.shape and out.images.min() >= -1 and out.images.max() <= 1
    with pytest.raises(ValueError, match="prompts"):
        DiffEdit(parts, steps=10)(x, ["a man"], ["a man"], [1])
