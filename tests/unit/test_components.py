"""SD component loaders: presets, local folders, single SD checkpoints, hub ids offline, and errors."""

import logging
import socket
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UniPCMultistepScheduler
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file
from tool_loader import load_tool
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from portrait_edit import paths
from portrait_edit.loading import components as C
from portrait_edit.loading import networks as P
from portrait_edit.loading.sources import preset_names

MODEL_PARTS = ("vae", "unet", "text_encoder", "image_encoder", "controlnet")


_tool = load_tool


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_shipped_mini(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "absent")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- presets -------------------------------------------------------------------------------------------------


def test_presets_shipped():
    assert preset_names() == ["mini", "sd15", "tiny"]


def test_shipped_presets_are_up_to_date(tmp_path):
    make_presets = _tool("make_presets")
    make_presets.write_presets(tmp_path)
    for fresh in (p for p in tmp_path.rglob("*") if p.is_file()):
        shipped = paths.PRESETS_DIR / fresh.relative_to(tmp_path)
        assert shipped.read_bytes() == fresh.read_bytes(), f"{shipped} is stale: run tools/make_presets.py"


def test_tiny_builds_every_part_with_classes(tiny_sd):
    expected = {
        "vae": AutoencoderKL,
        "unet": UNet2DConditionModel,
        "text_encoder": CLIPTextModel,
        "image_encoder": CLIPVisionModelWithProjection,
        "controlnet": ControlNetModel,
    }
    for name, cls in expected.items():
        assert type(getattr(tiny_sd, name)) is cls
    assert tiny_sd.tokenizer.model_max_length == 77 and len(tiny_sd.tokenizer) == 49408
    assert type(tiny_sd.scheduler).__name__ == "DDPMScheduler"


@pytest.mark.parametrize("name", MODEL_PARTS)
def test_preset_weights_follow_the_seed(name):
    rng_before = torch.get_rng_state()
    a, b, c = (C.load_model(name, "tiny", seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), rng_before), "building must not consume the global RNG"
    assert_same_weights(a, b)
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_tiny_forward_shapes(tiny_sd):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    pose = torch.rand(2, 3, 32, 32, generator=g)
    ids = tiny_sd.tokenizer(
        ["a photo of a cat", "a man, laughing"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    t = torch.tensor([1, 999])
    with torch.no_grad():
        latents = tiny_sd.vae.encode(image).latent_dist.sample(generator=g)
        assert latents.shape == (2, 4, 16, 16)  # two VAE blocks: x2 down
        assert tiny_sd.vae.decode(latents).sample.shape == (2, 3, 32, 32)
        text = tiny_sd.text_encoder(ids).last_hidden_state
        assert text.shape == (2, 77, tiny_sd.unet.config.cross_attention_dim)
        down, mid = tiny_sd.controlnet(
            latents, t, encoder_hidden_states=text, controlnet_cond=pose, return_dict=False
        )
        # ControlNet's zero convolutions: a fresh ControlNet adds nothing, whatever its input.
        assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
        plain = tiny_sd.unet(latents, t, encoder_hidden_states=text).sample
        controlled = tiny_sd.unet(
            latents,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=[r + 1 for r in down],
            mid_block_additional_residual=mid + 1,
        ).sample
        image_out = tiny_sd.image_encoder(pixel_values=image)
    assert plain.shape == controlled.shape == latents.shape
    assert not torch.allclose(plain, controlled)  # the residuals do reach the UNet
    assert image_out.image_embeds.shape == (2, 32)
    assert image_out.last_hidden_state.shape == (2, (32 // 2) ** 2 + 1, 32)


def test_vae_roundtrip_is_diffusers_deterministic_forward(tiny_sd):
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    trip = C.vae_roundtrip(tiny_sd.vae, image)
    with torch.no_grad():  # AutoencoderKL.forward without sampling: decode(posterior mode)
        reference = tiny_sd.vae(image.float(), sample_posterior=False).sample.clamp(-1, 1)
    assert trip.dtype == torch.float64 and trip.shape == image.shape
    torch.testing.assert_close(trip, reference.double())
    assert trip.abs().max() <= 1


def test_mini_random_when_not_shipped(no_shipped_mini, caplog):
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        sd = C.load_components("mini", parts=("vae", "unet", "text_encoder", "image_encoder", "controlnet"))
    assert sum("RANDOM weights" in r.message for r in caplog.records) == 5
    counts = {name: n_params(getattr(sd, name)) for name in MODEL_PARTS}
    fp16_mb = 2 * sum(counts.values()) / 2**20
    print(f"mini parameters: {counts}, fp16 total {fp16_mb:.1f} MiB")
    assert fp16_mb < 40
    assert sd.text_encoder.config.vocab_size == 49408 and sd.text_encoder.config.max_position_embeddings == 77
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = sd.vae.encode(torch.rand(1, 3, 64, 64, generator=g)).latent_dist.mode()
        assert latents.shape == (1, 8, 16, 16)
        text = sd.text_encoder(torch.tensor([[49406, 320, 1125, 49407]])).last_hidden_state
        down, mid = sd.controlnet(
            latents,
            5,
            encoder_hidden_states=text,
            controlnet_cond=torch.rand(1, 3, 64, 64, generator=g),
            return_dict=False,
        )
        out = sd.unet(
            latents,
            5,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        image = sd.image_encoder(pixel_values=torch.rand(1, 3, 64, 64, generator=g))
    assert out.shape == latents.shape
    assert image.image_embeds.shape == (1, 64) and image.last_hidden_state.shape == (1, 65, 64)


def test_mini_loads_shipped_weights(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    vae, text = C.load_vae("mini", seed=11), C.load_text_encoder("mini", seed=12)
    vae.save_pretrained(tmp_path / "mini" / "vae")
    text.save_pretrained(tmp_path / "mini" / "text_encoder")
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        caplog.clear()
        assert_same_weights(C.load_vae("mini", seed=0), vae)
        assert_same_weights(C.load_text_encoder("mini", seed=0), text)
    assert not [r for r in caplog.records if "RANDOM" in r.message]


def test_mini_weights_shipped_in_fp16_load_in_float32_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    vae, text = C.load_vae("mini", seed=11), C.load_text_encoder("mini", seed=12)
    torch.nn.Module.to(vae, torch.float16).save_pretrained(tmp_path / "mini" / "vae")
    torch.nn.Module.to(text, torch.float16).save_pretrained(tmp_path / "mini" / "text_encoder")
    for loaded in (C.load_vae("mini"), C.load_text_encoder("mini")):
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert C.load_text_encoder("mini", torch_dtype=torch.float16).dtype == torch.float16


# --- local diffusers folders ---------------------------------------------------------------------------------


def test_pipeline_folder_and_component_folders(tiny_sd, tmp_path, no_network):
    pipe = tmp_path / "pipe"
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny_sd, name).save_pretrained(pipe / name)
    # Standalone repos, laid out like lllyasviel/control_v11p_sd15_openpose and openai/clip-vit-large-patch14.
    tiny_sd.controlnet.save_pretrained(tmp_path / "controlnet")
    tiny_sd.image_encoder.save_pretrained(tmp_path / "clip")
    tiny_sd.tokenizer.save_pretrained(tmp_path / "clip")

    sd = C.load_components(
        str(pipe),
        image_encoder=str(tmp_path / "clip"),
        controlnet=str(tmp_path / "controlnet"),
        scheduler_kind="UniPCMultistepScheduler",
    )
    for name in MODEL_PARTS:
        assert_same_weights(getattr(sd, name), getattr(tiny_sd, name))
    assert isinstance(sd.scheduler, UniPCMultistepScheduler) and sd.scheduler.config.beta_end == 0.012
    assert sd.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # The component folders alone load too.
    assert_same_weights(C.load_vae(str(pipe / "vae")), tiny_sd.vae)
    assert_same_weights(C.load_text_encoder(str(pipe / "text_encoder")), tiny_sd.text_encoder)
    assert C.load_tokenizer(str(tmp_path / "clip")).model_max_length == 77
    assert C.load_vae(str(pipe), torch_dtype=torch.float16).dtype == torch.float16


def test_folder_errors(tiny_sd, tmp_path):
    tiny_sd.unet.save_pretrained(tmp_path / "unet_only")
    with pytest.raises(ValueError, match="holds a UNet2DConditionModel, not a AutoencoderKL"):
        C.load_vae(str(tmp_path / "unet_only"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no vae: expected vae/config.json"):
        C.load_vae(str(tmp_path / "empty"))


# --- single SD checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_single_file(tmp_path_factory, tiny_sd):
    out = tmp_path_factory.mktemp("single") / "tiny-sd.safetensors"
    return _tool("export_single_file").export_single_file(
        out, tiny_sd.unet, tiny_sd.vae, tiny_sd.text_encoder
    )


def test_export_writes_the_original_sd_layout(tiny_single_file):
    keys = set(load_file(tiny_single_file))
    # Names fixed by the original LDM code (the tiny UNet: 2 levels x 2 layers, cross-attention in level 1).
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.out.2.bias",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.1.block.1.conv2.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in keys, key
    assert load_file(tiny_single_file)["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (8, 8, 1, 1)


def test_single_file_loads_offline_with_local_config(tiny_sd, tiny_single_file, no_network):
    assert hub_constants.HF_HUB_OFFLINE
    source = str(tiny_single_file)
    assert_same_weights(C.load_unet(source, single_file_config="tiny"), tiny_sd.unet)
    assert_same_weights(C.load_vae(source, single_file_config="tiny"), tiny_sd.vae)
    assert_same_weights(C.load_text_encoder(source, single_file_config="tiny"), tiny_sd.text_encoder)
    sd = C.load_components(source, parts=("tokenizer", "scheduler"), single_file_config="tiny")
    assert sd.tokenizer.model_max_length == 77 and sd.scheduler.config.num_train_timesteps == 1000


def test_single_file_ckpt_and_diffusers_folder_as_config(tiny_sd, tiny_single_file, tmp_path, no_network):
    state = load_file(tiny_single_file)
    torch.save({"state_dict": state}, tmp_path / "tiny.ckpt")  # the Lightning/LDM wrapper
    tiny_sd.unet.save_pretrained(tmp_path / "config" / "unet")
    assert_same_weights(
        C.load_unet(str(tmp_path / "tiny.ckpt"), single_file_config=str(tmp_path / "config")), tiny_sd.unet
    )


def test_single_file_errors(tiny_single_file, tmp_path):
    with pytest.raises(ValueError, match="does not match the unet config"):
        C.load_unet(str(tiny_single_file), single_file_config="mini")
    with pytest.raises(ValueError, match="SD checkpoint holds no image_encoder"):
        C.load_image_encoder(str(tiny_single_file))
    with pytest.raises(ValueError, match="holds no controlnet weights"):
        C.load_controlnet(str(tiny_single_file), single_file_config="tiny")
    with pytest.raises(ValueError, match="never a hub id"):
        C.load_unet(str(tiny_single_file), single_file_config="someone/some-model")
    # A file missing UNet tensors must not load with random weights in their place.
    state = {k: v for k, v in load_file(tiny_single_file).items() if "output_blocks.5" not in k}
    torch.save(state, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match="unet tensors but the config"):
        C.load_unet(str(tmp_path / "partial.ckpt"), single_file_config="tiny")


# --- hub ids, source resolution and boundary errors ----------------------------------------------------------


def test_unknown_hub_id_offline_names_the_id(no_network):
    for load in (C.load_unet, C.load_text_encoder, C.load_tokenizer):
        with pytest.raises(
            ValueError, match=r"'nobody/no-such-model'.*huggingface-cli download nobody/no-such"
        ):
            load("nobody/no-such-model", local_files_only=True)
    with pytest.raises(ValueError, match="nobody/no-such-model"):
        C.load_scheduler("nobody/no-such-model", local_files_only=True)


def test_cached_hub_ids_load_offline(tiny_sd, tmp_path, monkeypatch, no_network):
    # A hub cache as `huggingface-cli download` leaves it: pipeline parts in subfolders, the ControlNet and
    # CLIP repos at their root.
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))

    def cached_repo(repo_id: str) -> Path:
        root = tmp_path / ("models--" + repo_id.replace("/", "--"))
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("0" * 40)
        return root / "snapshots" / ("0" * 40)

    pipe = cached_repo("acme/tiny-sd")
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny_sd, name).save_pretrained(pipe / name)
    tiny_sd.controlnet.save_pretrained(cached_repo("acme/tiny-controlnet"))
    clip = cached_repo("acme/tiny-clip")
    tiny_sd.image_encoder.save_pretrained(clip)
    tiny_sd.tokenizer.save_pretrained(clip)
    sd = C.load_components(
        "acme/tiny-sd",
        image_encoder="acme/tiny-clip",
        controlnet="acme/tiny-controlnet",
        local_files_only=True,
    )
    for name in MODEL_PARTS:
        assert_same_weights(getattr(sd, name), getattr(tiny_sd, name))
    assert sd.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_local_files_only_defaults_to_hf_hub_offline(no_network):
    with pytest.raises(ValueError, match="offline"):
        C.load_controlnet("nobody/no-such-controlnet")


def test_source_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        C.load_unet(str(tmp_path / "missing.safetensors"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an SD checkpoint"):
        C.load_unet(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="set image_encoder= explicitly.*openai/clip-vit-large-patch14"):
        C.load_components("someone/sd-model", parts=("image_encoder",))
    with pytest.raises(ValueError, match="set controlnet= explicitly.*lllyasviel/control_v11p_sd15_openpose"):
        C.load_components(str(tmp_path), parts=("unet", "controlnet"))
    with pytest.raises(ValueError, match="unknown parts"):
        C.load_components("tiny", parts=("unet", "refiner"))
    with pytest.raises(ValueError, match="not a diffusers scheduler class"):
        C.load_scheduler("tiny", "AutoencoderKL")


def test_scheduler_is_sd15_scaled_linear():
    scheduler = C.load_scheduler("sd15", "DDIMScheduler")
    # scaled_linear: betas are squares of a linear ramp of square roots (LDM's "linear" schedule).
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    torch.testing.assert_close(scheduler.betas, expected)
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.steps_offset == 1
    assert C.load_scheduler("tiny").config.beta_schedule == "scaled_linear"


# --- full size ------------------------------------------------------------------------------------------------


def test_sd15_ldm_key_layout_on_meta_device():
    # Key counts and names of the published SD 1.5 single-file checkpoints (v1-5-pruned: 686 UNet, 248 VAE,
    # 197 text-encoder tensors); only the names matter here, so nothing is allocated.
    export = _tool("export_single_file")
    with torch.device("meta"):
        unet = P._from_config(P.MODEL_PARTS["unet"], paths.PRESETS_DIR / "sd15" / "unet", 0)
        vae = P._from_config(P.MODEL_PARTS["vae"], paths.PRESETS_DIR / "sd15" / "vae", 0)
        text = P._from_config(P.MODEL_PARTS["text_encoder"], paths.PRESETS_DIR / "sd15" / "text_encoder", 0)
    unet_keys, vae_keys = export.unet_to_ldm(unet), export.vae_to_ldm(vae)
    assert (len(unet_keys), len(vae_keys), len(export.text_encoder_to_ldm(text))) == (686, 248, 197)
    assert unet_keys["model.diffusion_model.output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert unet_keys["model.diffusion_model.output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)
    assert unet_keys[
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    ].shape == (320, 768)
    assert vae_keys["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert vae_keys["first_stage_model.decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)


@pytest.mark.slow
def test_sd15_full_size_parameter_counts():
    # Published sizes: SD 1.5 UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text tower 123.06M and vision tower with
    # its projection 303.97M, lllyasviel/control_v11p_sd15_openpose about 361.3M.
    expected = {
        "unet": 859_520_964,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "image_encoder": 303_966_208,
        "controlnet": 361_300_000,
    }
    for name, count in expected.items():
        model = C.load_model(name, "sd15", seed=0)
        got = n_params(model)
        print(f"sd15 {name}: {got:,}")
        assert abs(got - count) / count < 0.01, (name, got)
        if name == "unet":
            with torch.no_grad():
                out = model(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 77, 768)).sample
            assert out.shape == (1, 4, 8, 8)
        del model


def test_image_encoder_from_a_whole_clip_model_repo_loads_quietly(tmp_path, capfd):
    """openai/clip-vit-large-patch14 is a CLIPModel with both towers: the text tower's keys are expected
    extras, not a 25-line report; a report of missing weights still shows."""
    from transformers import CLIPConfig, CLIPModel

    towers = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    config = CLIPConfig(
        text_config={**towers, "vocab_size": 49408}, vision_config={**towers, "image_size": 32, "patch_size": 4,
        "projection_dim": 16}, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    whole = CLIPModel(config)
    whole.save_pretrained(tmp_path / "clip")
    capfd.readouterr()
    encoder = C.load_image_encoder(str(tmp_path / "clip"))
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert torch.equal(encoder.visual_projection.weight, whole.visual_projection.weight)
    vision = {k: v for k, v in whole.vision_model.state_dict().items()}
    assert all(torch.equal(encoder.vision_model.state_dict()[k], v) for k, v in vision.items())
    report = lambda text: logging.LogRecord("t", logging.WARNING, "", 0, text, None, None)  # noqa: E731
    keep = P._OnlyUnexpectedKeys().filter
    assert not keep(report("LOAD REPORT\ntext_model.x | UNEXPECTED"))
    assert keep(report("LOAD REPORT\nvision_model.x | MISSING")) and keep(report("another warning"))


def test_a_separate_vae_source_replaces_the_bases(tiny_sd, tmp_path):
    other = AutoencoderKL.from_config(tiny_sd.vae.config)
    torch.nn.init.normal_(other.decoder.conv_out.weight)
    other.save_pretrained(tmp_path / "vae")
    sd = C.load_components("tiny", vae=str(tmp_path / "vae"), parts=["vae", "unet"])
    assert_same_weights(sd.vae, other)
    assert_same_weights(sd.unet, tiny_sd.unet)
