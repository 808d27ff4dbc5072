"""The paper's released checkpoints in our editor (models/official_adapter.py, models/official.py): stand-in
.pth files with the release's key names and shapes (a DDP-saved state dict: `module.` prefixes; diffusers'
UNet2DConditionModel names with an 8-channel conv_in; the adapter's vae2clip / linear1) convert into an
export that edits with and without the mask; the adapter against a hand computation; the 4-branch
guidance against the release's order with the release's nulls."""

import json
import subprocess
import sys
from pathlib import Path

import hub_standins as hub
import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.testing import assert_close
from transformers import CLIPVisionModelWithProjection

from portrait_edit.loading.components import load_components
from portrait_edit.models.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_pixels
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.official import DEMO_SCALES, PAPER_SCALES
from portrait_edit.models.official_adapter import OfficialAdapterConfig, OfficialImageAdapter
from portrait_edit.models.widen import widen_conv_in
from portrait_edit.world import make_pair

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64  # tiny base: VAE x2 -> 32 x 32 latents, as SD's 64 x 64 at 512 px


def test_adapter_is_the_release_computation_by_hand():
    torch.manual_seed(0)
    config = OfficialAdapterConfig(latent_channels=4, latent_size=8, clip_width=6, clip_tokens=5)
    adapter = OfficialImageAdapter(config)
    latents, clip = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 6)
    # 1. max-pool by 2, each channel flattened: (2, 4, 16); 2. Linear(16 -> 6) per channel: 4 tokens.
    pooled = latents.reshape(2, 4, 4, 2, 4, 2).amax(dim=(3, 5)).reshape(2, 4, 16)
    channel_tokens = pooled @ adapter.vae2clip.weight.T + adapter.vae2clip.bias
    # 3. after the 5 CLIP tokens: 9; 4. Linear(9 -> 5) across the token axis.
    tokens = torch.cat([clip, channel_tokens], dim=1)  # (2, 9, 6)
    expected = (
        torch.einsum("nk,bkd->bnd", adapter.linear1.weight, tokens) + adapter.linear1.bias[None, :, None]
    )
    assert_close(adapter(latents, clip), expected)
    assert OfficialAdapterConfig.from_state_dict(adapter.state_dict()) == config
    real = OfficialImageAdapter()  # the released sizes: Linear(1024 -> 768), Linear(54 -> 50)
    assert real.vae2clip.weight.shape == (768, 1024) and real.linear1.weight.shape == (50, 54)
    with pytest.raises(ValueError, match="reads latents of 4 x 8 x 8"):
        adapter(torch.randn(2, 4, 16, 16), clip)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A base folder, a CLIP ViT-B/32 stand-in (224 px, 32 px patches: 50 tokens) and a released
    checkpoint folder of stand-in weights as the release stores them."""
    root = tmp_path_factory.mktemp("release")
    base = load_components("tiny", parts=["vae", "unet", "text_encoder", "tokenizer", "scheduler"], seed=3)
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        getattr(base, name).save_pretrained(root / "base" / name)
    hub.clip_model(7).save_pretrained(root / "clip")
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(base.unet.config)
    widen_conv_in(unet, 8)
    for p in unet.parameters():  # trained weights: nothing left at its init (conv_in's new slices included)
        p.data.normal_(0, 0.05)
    adapter = OfficialImageAdapter(OfficialAdapterConfig(4, SIZE // 2, 32, 50))
    checkpoint = root / "released" / "portrait_editing_models" / "outfit" / "checkpoint-200000"
    checkpoint.mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, checkpoint / "unet.pth")
    torch.save({f"module.{k}": v for k, v in adapter.state_dict().items()}, checkpoint / "adapter.pth")
    out = root / "converted"
    command = [sys.executable, str(ROOT / "tools/convert_official.py"), str(checkpoint), "--out", str(out),
               "--base", str(root / "base"), "--image-encoder", str(root / "clip"), "--dtype", "float32"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "unet": unet, "adapter": adapter, "out": out}


def test_release_converts_into_an_export_that_edits_with_and_without_the_mask(release):
    settings = json.loads((release["out"] / "mcdm.json").read_text())
    assert settings["adapter"] == "official" and settings["spatial_null"] == "zeros"
    assert settings["scales"] == PAPER_SCALES and settings["demo_scales"] == DEMO_SCALES
    assert settings["num_image_tokens"] == 50 and settings["mask_at"] == 0.5
    editor = MCDMEditor.from_pretrained(release["out"])
    for key, value in release["unet"].state_dict().items():
        assert torch.equal(editor.unet.state_dict()[key], value), key
    for key, value in release["adapter"].state_dict().items():
        assert torch.equal(editor.conditioning.adapter.state_dict()[key], value), key
    pair = make_pair(4, "santa", size=SIZE)
    source = torch.from_numpy(pair.src).permute(2, 0, 1)[None].float() / 127.5 - 1
    p_a, p_b = [pair.prompts["p_a"]], [pair.prompts["p_b"]]
    masked = editor.edit(source, p_a, p_b, threshold=0.2, steps=3, mask_seeds=2, seed=5)
    plain = editor.edit(source, p_a, p_b, use_mask=False, steps=3, seed=5)
    assert masked.images.shape == plain.images.shape == (1, 3, SIZE, SIZE) and masked.masks.shape == (
        1,
        SIZE,
        SIZE,
    )
    assert torch.isfinite(masked.images).all() and not torch.equal(masked.images, plain.images)


def test_guidance_is_the_releases_four_branches_with_its_nulls(release):
    """uncond + s1 (img - uncond) + s2 (img+spatial - img) + s3 (all - img+spatial), the branches built as
    the release builds them: text null "", image null the adapter over CLIP and VAE of a black image,
    spatial null an all-zero latent."""
    editor = MCDMEditor.from_pretrained(release["out"])
    c = editor.conditioning
    pair = make_pair(6, "royal", size=SIZE)
    x = torch.from_numpy(pair.src).permute(2, 0, 1)[None].float() / 127.5 - 1
    black = -torch.ones_like(x)
    z, t = (
        torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(2)),
        torch.tensor(500),
    )
    _, eps = editor.guided_eps(
        z, t, editor.branch_conditions(x, [pair.prompts["p_a"]], [pair.prompts["p_b"]], False)
    )

    with torch.no_grad():

        def text(prompt):
            ids = c.tokenizer(
                [prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            )
            return c.text_encoder(ids.input_ids).last_hidden_state

        def latent(images):
            return c._vae[0].encode(images).latent_dist.mean * c._vae[0].config.scaling_factor

        encoder = CLIPVisionModelWithProjection.from_pretrained(release["root"] / "clip")

        def image_tokens(images):
            clip = encoder(
                pixel_values=clip_pixels(images, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
            ).last_hidden_state
            return release["adapter"](latent(images), clip)

        img, img_null = image_tokens(x), image_tokens(black)
        spatial, zeros = latent(x), torch.zeros_like(latent(x))
        prompt, null = text(pair.prompts["p_b"]), text("")

        def unet(c_s, txt, im):
            states = torch.cat([txt, im], dim=1)
            return release["unet"](torch.cat([z, c_s], dim=1), t, encoder_hidden_states=states).sample

        uncond, img_p = unet(zeros, null, img_null), unet(zeros, null, img)
        img_p_concat, everything = unet(spatial, null, img), unet(spatial, prompt, img)
    s1, s2, s3 = PAPER_SCALES["image"], PAPER_SCALES["spatial"], PAPER_SCALES["text"]
    expected = uncond + s1 * (img_p - uncond) + s2 * (img_p_concat - img_p) + s3 * (everything - img_p_concat)
    assert_close(eps, expected, rtol=1e-4, atol=1e-5)


def test_a_release_file_that_does_not_fit_the_base_is_one_readable_error(release, tmp_path):
    from portrait_edit.models.official import convert_official

    bad = tmp_path / "checkpoint"
    bad.mkdir()
    torch.save({"module.conv_in.weight": torch.zeros(1)}, bad / "unet.pth")
    torch.save({f"module.{k}": v for k, v in release["adapter"].state_dict().items()}, bad / "adapter.pth")
    with pytest.raises(ValueError, match=r"unet.pth does not fit the base's UNet2DConditionModel"):
        convert_official(
            bad, tmp_path / "out", str(release["root"] / "base"), image_encoder=str(release["root"] / "clip")
        )
    with pytest.raises(ValueError, match=r"nowhere/unet.pth does not exist: download"):
        convert_official(tmp_path / "nowhere", tmp_path / "out")
