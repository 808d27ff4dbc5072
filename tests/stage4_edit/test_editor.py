"""Mask-guided editing: the mask maths (diffusion/masks.py) against hand values and torchvision, the
5-branch batched step against the 8-call formulation, UNet calls per edit, and the two-condition case
against diffusers' InstructPix2Pix pipeline."""

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline
from torch.testing import assert_close
from torchvision.transforms.v2 import functional as TF

from portrait_edit.blur import blur_maps
from portrait_edit.diffusion.conditions import multi_guidance
from portrait_edit.diffusion.masks import (
    combine,
    cut_mask,
    edit_mask,
    normalise,
    prediction_difference,
    usable_range,
)
from portrait_edit.loading.components import vae_roundtrip
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.mcdm import SCHEDULER, MCDMSystem
from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair

SIZE = 32
TINY_CLIP = dict(clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3, num_image_tokens=3)


def test_prediction_difference_by_hand():
    # 2 seeds x 1 input, 2 channels, 1 x 2 positions.
    pred_a = torch.zeros(2, 2, 1, 2)
    pred_b = torch.tensor([[[[1.0, 0.0]], [[3.0, 2.0]]], [[[-1.0, 4.0]], [[1.0, 0.0]]]])
    # Seed 0: channel means of |b - a| = (2, 1); seed 1: (1, 2); mean over seeds (1.5, 1.5).
    assert_close(prediction_difference(pred_a, pred_b, seeds=2), torch.tensor([[[1.5, 1.5]]]))
    assert_close(
        normalise(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])), torch.tensor([[[0.0, 0.5], [0.25, 1.0]]])
    )
    assert torch.equal(normalise(torch.ones(1, 2, 2)), torch.zeros(1, 2, 2))


def test_blur_is_torchvisions_gaussian_blur_kernel_5():
    maps = torch.rand(3, 12, 9, generator=torch.Generator().manual_seed(0))
    expected = TF.gaussian_blur(maps[:, None], kernel_size=[5, 5])[:, 0]  # sigma 1.1, reflect padding
    assert_close(blur_maps(maps, 5), expected, rtol=1e-5, atol=1e-6)


def test_eq3_and_threshold_by_hand():
    eps_a, eps_b = torch.zeros(1, 2, 1, 2), torch.ones(1, 2, 1, 2)
    assert_close(
        combine(eps_a, eps_b, torch.tensor([[[1.0, 0.0]]])), torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])
    )
    pred_a = torch.zeros(1, 1, 6, 6)
    pred_b = torch.zeros(1, 1, 6, 6)
    pred_b[..., 0:3, 0:3] = 1.0  # the top-left quarter differs
    mask, soft = edit_mask(pred_a, pred_b, seeds=1, threshold=0.5)
    assert mask[0, 0, 0] == 1 and mask[0, 5, 5] == 0 and 0 <= soft.min() and soft.max() <= 1


@pytest.fixture(scope="module")
def editor_and_batch():
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP), val_edits=0)
    with torch.no_grad():  # move the zero-initialised c_s slices, so that the spatial branch matters
        system.unet.conv_in.weight[:, 4:].normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    pairs = [make_pair(seed, DIRECTIONS[seed], size=SIZE) for seed in (1, 6)]
    sources = torch.from_numpy(np.stack([p.src for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    p_a, p_b = [p.prompts["p_a"] for p in pairs], [p.prompts["p_b"] for p in pairs]
    editor = MCDMEditor(
        system.unet, system.conditioning, {"image": 3.0, "spatial": 3.0, "text": 5.0}, SCHEDULER
    )
    return editor, sources, p_a, p_b


def test_usable_range_is_where_every_map_is_cut_into_two_parts():
    soft = torch.tensor([[[0.1, 0.3], [0.5, 0.7]], [[0.2, 0.25], [0.4, 0.6]]])
    low, high = usable_range(soft)
    assert (low, high) == pytest.approx((0.2, 0.6))  # the highest minimum, the lowest peak
    for lam in (low, 0.3, high - 1e-6):  # inside: every map gets some pixels in and some out
        share = (soft > lam).float().mean(dim=(1, 2))
        assert ((share > 0) & (share < 1)).all()
    assert (soft > low - 1e-6).float().mean(dim=(1, 2))[1] == 1  # below: the second map is all mask
    assert (soft > high).float().mean(dim=(1, 2))[1] == 0  # at the lowest peak: its map gets none
    _, blurred = cut_mask(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), 0.5)
    assert 0 <= usable_range(blurred)[0] and usable_range(blurred)[1] <= 1


def test_batched_five_branches_equal_the_eight_call_formulation(editor_and_batch):
    editor, sources, p_a, p_b = editor_and_batch
    c = editor.conditioning
    conditions = editor.branch_conditions(sources, p_a, p_b)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(600)
    editor.unet_calls = 0
    with torch.no_grad():
        eps_a, eps_b = editor.guided_eps(z, t, conditions)
        assert editor.unet_calls == 1
        latent, clip, size = c.batch_sources({"source": sources})
        branches = {"none": (True, True, True), "image": (False, True, True), "spatial": (False, False, True)}
        for prompts, got in ((p_a, eps_a), (p_b, eps_b)):
            text = c.encode_text(prompts)
            e = {}
            for name, flags in {**branches, "all": (False, False, False)}.items():
                drop = {k: torch.tensor([f, f]) for k, f in zip(("image", "spatial", "text"), flags)}
                c_s_k, context_k = c.conditions(latent, clip, text, size, drop)
                e[name] = editor.unet(torch.cat([z, c_s_k], 1), t, encoder_hidden_states=context_k).sample
            expected = multi_guidance(e["none"], e["image"], e["spatial"], e["all"], 3.0, 3.0, 5.0)
            assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps_a, eps_b)


@pytest.mark.parametrize("max_rows", [None, 16])
def test_unet_calls_per_edit(editor_and_batch, max_rows):
    editor, sources, p_a, p_b = editor_and_batch
    editor.max_rows, editor.unet_calls = max_rows, 0
    result = editor.edit(sources, p_a, p_b, threshold=0.2, steps=20, mask_seeds=10)
    rows_step, rows_mask = 5 * 2, 10 * 5 * 2
    chunks = (lambda rows: 1) if max_rows is None else (lambda rows: math.ceil(rows / max_rows))
    assert editor.unet_calls == 20 * chunks(rows_step) + chunks(rows_mask)
    assert result.images.shape == (2, 3, SIZE, SIZE) and result.masks.shape == (2, SIZE, SIZE)
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
    editor.max_rows, editor.unet_calls = None, 0
    rows = []
    hook = editor.unet.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    plain = editor.edit(sources, p_a, p_b, use_mask=False, steps=3)
    hook.remove()
    assert editor.unet_calls == 3 and plain.masks is None
    assert rows == [4 * 2] * 3  # without the mask eps(p_a) is never needed: 4 branch rows per input


def test_an_edit_depends_on_its_input_and_seed_not_its_batch(editor_and_batch):
    editor, sources, p_a, p_b = editor_and_batch
    pair = editor.edit(sources, p_a, p_b, threshold=0.2, steps=3, mask_seeds=2, seed=[7, 8])
    alone = editor.edit(sources[1:], p_a[1:], p_b[1:], threshold=0.2, steps=3, mask_seeds=2, seed=[8])
    assert_close(alone.images[0], pair.images[1], rtol=1e-4, atol=1e-5)
    # The soft map is normalised by its maximum, which magnifies float differences of batched matmuls.
    assert_close(alone.soft_masks[0], pair.soft_masks[1], rtol=1e-3, atol=1e-3)
    same = editor.edit(sources[1:], p_a[1:], p_b[1:], use_mask=False, steps=3, seed=8)
    assert_close(
        same.images, editor.edit(sources[1:], p_a[1:], p_b[1:], use_mask=False, steps=3, seed=[8]).images
    )
    with pytest.raises(ValueError, match="one seed per input"):
        editor.edit(sources, p_a, p_b, steps=3, seed=[1])


def test_keep_source_holds_x_a_outside_the_mask(editor_and_batch):
    """keep_source: after each step the latents outside M are E(x_A) noised in closed form to the next
    timestep, sqrt(abar) E(x_A) + sqrt(1 - abar) n with n drawn from seed + 2, and E(x_A) after the last; so
    M = 0 decodes to x_A's VAE round trip and M = 1 is the plain Eq. 3 edit."""
    editor, sources, p_a, p_b = editor_and_batch
    half = torch.zeros(2, 16, 16)
    half[:, :, :8] = 1
    seen = []  # the latents z_t entering each step: the first 2 rows, first 4 channels of the UNet input
    hook = editor.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0][:2, :4].clone()))
    editor.edit(sources, p_a, p_b, steps=4, seed=[3, 5], keep_source=True, mask=half)
    hook.remove()
    vae = editor.vae
    with torch.no_grad():
        source = vae.encode(sources).latent_dist.mode() * vae.config.scaling_factor
    noise = torch.stack(
        [torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(s + 2)) for s in (3, 5)]
    )
    betas = torch.linspace(SCHEDULER["beta_start"] ** 0.5, SCHEDULER["beta_end"] ** 0.5, 1000) ** 2
    abar = torch.cumprod(1 - betas.double(), 0)
    timesteps = editor.scheduler(4).timesteps
    assert len(seen) == 4  # the given mask is not made again: no mask call
    for z, t in zip(seen[1:], timesteps[1:]):
        expected = (abar[t].sqrt() * source + (1 - abar[t]).sqrt() * noise).float()
        assert_close(z[..., 8:], expected[..., 8:], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(z[..., :8], expected[..., :8], atol=1e-2)  # inside M: the edit's own

    kept = editor.edit(sources, p_a, p_b, steps=3, keep_source=True, mask=half * 0).images
    with torch.no_grad():
        assert_close(kept, vae_roundtrip(vae, sources), rtol=1e-4, atol=1e-5)
    everywhere = torch.ones(2, 16, 16)
    assert_close(
        editor.edit(sources, p_a, p_b, steps=3, keep_source=True, mask=everywhere).images,
        editor.edit(sources, p_a, p_b, steps=3, mask=everywhere).images,
    )
    with pytest.raises(ValueError, match="use_mask"):
        editor.edit(sources, p_a, p_b, use_mask=False, keep_source=True)


def test_a_given_mask_is_the_one_the_edit_would_make(editor_and_batch):
    editor, sources, p_a, p_b = editor_and_batch
    settings = dict(threshold=0.2, steps=3, mask_seeds=2, seed=[1, 2])
    made = editor.edit(sources, p_a, p_b, **settings)
    editor.unet_calls = 0
    again = editor.edit(sources, p_a, p_b, mask=made.masks[:, ::2, ::2], **settings)  # 32 px, 16 x 16 latents
    assert editor.unet_calls == 3 and again.soft_masks is None
    assert_close(again.images, made.images)
    assert_close(again.masks, made.masks)
    with pytest.raises(ValueError, match="latent resolution"):
        editor.edit(sources, p_a, p_b, mask=made.masks, **settings)
    with pytest.raises(ValueError, match="use_mask"):
        editor.edit(sources, p_a, p_b, use_mask=False, mask=made.masks[:, ::2, ::2])


def test_a_bf16_editor_edits_like_the_float32_one(editor_and_batch):
    """A bf16 model (the GPU setting) takes the float32 latents and CLIP tokens of x_A in its own dtype."""
    editor, sources, p_a, p_b = editor_and_batch
    half = MCDMEditor(
        copy.deepcopy(editor.unet).to(torch.bfloat16), copy.deepcopy(editor.conditioning).to(torch.bfloat16),
        editor.scales, SCHEDULER,
    )  # fmt: skip
    full = editor.edit(sources, p_a, p_b, use_mask=False, steps=3, seed=4).images
    got = half.edit(sources.to(torch.bfloat16), p_a, p_b, use_mask=False, steps=3, seed=4).images
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - full).norm() / full.norm() < 0.05


def test_two_condition_case_is_instruct_pix2pix_guidance(tiny_sd):
    """Without the image embedding, e(im,0,0) = e(0,0,0) and the 3-way guidance is InstructPix2Pix's
    combination with image_guidance_scale = s2 and guidance_scale = s3: checked against the pipeline, whose
    UNet outputs are set per branch and whose combined prediction is read at the scheduler."""
    unet = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP, use_image=False)).unet
    gen = torch.Generator().manual_seed(3)
    e_all, e_image, e_none = (torch.randn(1, 4, 16, 16, generator=gen) for _ in range(3))
    # diffusers orders the rows (text + image, image, unconditional).
    unet.register_forward_hook(lambda module, args, out: (torch.cat([e_all, e_image, e_none]),))
    scheduler = DDIMScheduler(**SCHEDULER)
    seen = []
    step = scheduler.step
    scheduler.step = lambda model_output, *a, **kw: (seen.append(model_output), step(model_output, *a, **kw))[
        1
    ]
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=tiny_sd.vae, text_encoder=tiny_sd.text_encoder, tokenizer=tiny_sd.tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    image = torch.zeros(1, 3, SIZE, SIZE)
    pipe(
        "a photo",
        image=image,
        num_inference_steps=1,
        guidance_scale=5.0,
        image_guidance_scale=3.0,
        output_type="latent",
    )
    ours = multi_guidance(e_none, e_none, e_image, e_all, s_image=7.0, s_spatial=3.0, s_text=5.0)
    assert_close(seen[0], ours)


def test_editor_loads_an_export_and_predicts_what_the_system_did(editor_and_batch, tmp_path):
    editor, sources, p_a, p_b = editor_and_batch
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP), val_edits=0, use_ema=False)
    with torch.no_grad():
        system.unet.conv_in.weight[:, 4:].normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    system.export(tmp_path, dtype=torch.float32)
    loaded = MCDMEditor.from_pretrained(tmp_path)
    live = MCDMEditor(system.unet, system.conditioning, system.scales, SCHEDULER)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor(300)
    with torch.no_grad():
        expected = live.guided_eps(z, t, live.branch_conditions(sources, p_a, p_b))
        got = loaded.guided_eps(z, t, loaded.branch_conditions(sources, p_a, p_b))
    for a, b in zip(got, expected):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mcdm.json"):
        MCDMEditor.from_pretrained(tmp_path / "unet")


def test_an_export_carries_where_its_edits_read_the_mask(editor_and_batch, tmp_path):
    _, sources, p_a, p_b = editor_and_batch
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP), val_edits=0, mask_at=0.15)
    with torch.no_grad():
        system.unet.conv_in.weight[:, 4:].normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    system.export(tmp_path, dtype=torch.float32)
    loaded = MCDMEditor.from_pretrained(tmp_path)
    assert loaded.mask_at == 0.15
    settings = dict(threshold=0.2, steps=8, mask_seeds=2)
    default = loaded.edit(sources, p_a, p_b, **settings).soft_masks
    assert_close(default, loaded.edit(sources, p_a, p_b, mask_at=0.15, **settings).soft_masks)
    assert not torch.allclose(default, loaded.edit(sources, p_a, p_b, mask_at=0.5, **settings).soft_masks)
    with pytest.raises(ValueError, match="mask_at"):
        MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP), mask_at=0.0)


def test_one_lambda_per_input_is_each_input_edited_at_its_own(editor_and_batch):
    editor, sources, p_a, p_b = editor_and_batch
    both = editor.edit(sources, p_a, p_b, threshold=[0.2, 0.6], steps=2, mask_seeds=2, seed=[4, 5])
    for k, lam in enumerate((0.2, 0.6)):
        alone = editor.edit(sources[k : k + 1], p_a[k : k + 1], p_b[k : k + 1], threshold=lam, steps=2,
                            mask_seeds=2, seed=[4 + k])  # fmt: skip
        assert torch.equal(both.masks[k], alone.masks[0])
        assert_close(both.images[k], alone.images[0], rtol=0, atol=1e-5)
    assert not torch.equal(both.masks[0], (both.soft_masks[0] > 0.6).float())  # the lambdas differ
    with pytest.raises(ValueError, match="one per input"):
        editor.edit(sources, p_a, p_b, threshold=[0.2, 0.3, 0.4], steps=2, mask_seeds=2)
