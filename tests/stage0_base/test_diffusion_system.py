"""DiffusionSystem and the conditionings on the tiny preset: real components, real Trainer, CPU."""

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
from lightning.pytorch import Callback, Trainer
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from torch.utils.data import DataLoader, IterableDataset

from portrait_edit.diffusion.noise import rank_generator
from portrait_edit.models.conditioning import PoseControlConditioning, TextConditioning
from portrait_edit.models.ema import ema_decay_at
from portrait_edit.systems.diffusion import DiffusionSystem
from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair

SIZE = 32  # tiny preset: VAE downscale 2 -> 16 x 16 latents


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def batch():
    """Two world pairs' targets, captions and pose drawings: the WorldImagesDataModule batch layout."""
    pairs = [make_pair(seed, DIRECTIONS[seed], size=SIZE) for seed in (0, 2)]
    return {
        "image": to_tensor([p.tgt for p in pairs]),
        "caption": [p.prompts["p_b"] for p in pairs],
        "label": torch.tensor([1, 3]),
        "gender": [p.gender for p in pairs],
        "pose": to_tensor([p.pose_image for p in pairs]),
        "keypoints": torch.from_numpy(np.stack([p.keypoints for p in pairs])),
    }


@pytest.fixture
def parts(tiny_sd):
    """The tiny components with a private text encoder (bind() freezes it in place)."""
    return dataclasses.replace(tiny_sd, text_encoder=copy.deepcopy(tiny_sd.text_encoder))


class Repeat(IterableDataset):
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


class RecordTrained(Callback):
    """Copies of the trained parameters at the start and after every optimizer step."""

    def __init__(self):
        self.trajectory = []

    def on_train_start(self, trainer, module):
        self.trajectory.append([p.detach().clone() for p in module.unet.parameters()])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.trajectory.append([p.detach().clone() for p in module.unet.parameters()])


def fit(system, batch, steps=1, callbacks=(), ckpt_path=None, **trainer_kwargs):
    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    settings["enable_model_summary"] = False
    trainer = Trainer(max_steps=steps, callbacks=list(callbacks), **(settings | trainer_kwargs))
    trainer.fit(system, DataLoader(Repeat(batch), batch_size=None), ckpt_path=ckpt_path)
    return trainer


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_text_to_image_step_trains_the_unet_only(batch):
    system = DiffusionSystem(base="tiny", conditioning=TextConditioning(), train_unet=True)
    unet, vae, text = snapshot(system.unet), snapshot(system.vae), snapshot(system.conditioning.text_encoder)
    trainer = fit(system, batch)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert len(changed(unet, system.unet)) > 0.9 * len(unet)
    assert changed(vae, system.vae) == [] and changed(text, system.conditioning.text_encoder) == []


def test_controlnet_step_trains_the_controlnet_only(batch, tmp_path):
    system = DiffusionSystem(base="tiny", conditioning=PoseControlConditioning(), train_unet=False)
    controlnet = system.conditioning.controlnet
    # Initialised from the UNet's encoder, as ControlNetModel.from_unet does.
    assert_close(controlnet.conv_in.weight, system.unet.conv_in.weight, rtol=0, atol=0)
    before = {
        name: snapshot(m) for name, m in [("unet", system.unet), ("vae", system.vae), ("cn", controlnet)]
    }
    text = snapshot(system.conditioning.text_encoder)
    trainer = fit(system, batch)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert changed(before["unet"], system.unet) == []
    assert changed(before["vae"], system.vae) == [] and changed(text, system.conditioning.text_encoder) == []
    assert len(changed(before["cn"], controlnet)) > 0
    # Without EMA the export holds the raw trained weights.
    (folder,) = system.export(tmp_path, dtype=torch.float32)
    assert folder.name == "controlnet" and (folder / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ControlNetModel.from_pretrained(folder)
    for key, value in controlnet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_latent_batches_skip_the_vae_and_give_the_same_loss(batch):
    system = DiffusionSystem(base="tiny", conditioning=TextConditioning(caption_dropout=0.5))
    system.train()
    calls = []
    system.vae.encoder.register_forward_hook(lambda *args: calls.append(1))
    latent = system.encode(batch)
    assert len(calls) == 1 and latent.shape == (2, 4, SIZE // 2, SIZE // 2)
    cached = {k: v for k, v in batch.items() if k != "image"} | {"latent": latent}

    def loss(b):
        system.generator = rank_generator(5, 0)  # same noise, timesteps and caption dropout for both
        return system.training_step(b, 0)

    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached: logging is skipped
        from_image, from_latent = loss(batch), loss(cached)
    assert len(calls) == 2  # the image batch encoded once more, the latent batch never
    assert torch.equal(from_image, from_latent)


def test_latent_cache_encodes_each_image_once_and_gives_the_same_latents(batch):
    system = DiffusionSystem(base="tiny", conditioning=TextConditioning(), latent_cache=True)
    system.train()
    calls = []
    system.vae.encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    with pytest.raises(ValueError, match="index"):
        system.encode(batch)
    calls.clear()
    first = system.encode(batch | {"index": torch.tensor([4, 9])})
    assert calls == [2]
    # Item 9 again (now first) with a new item 1: only the new one is encoded; item 9 comes back unchanged.
    swapped = {"image": batch["image"].flip(0), "index": torch.tensor([9, 1])}
    second = system.encode(swapped)
    assert calls == [2, 1]
    assert torch.equal(second[0], first[1])
    system.eval()  # validation never reads (or fills) the cache
    assert_close(system.encode(swapped), second, rtol=1e-5, atol=1e-5)
    assert calls == [2, 1, 2]


def test_face_weighted_loss_is_the_weighted_mean_of_the_same_errors(batch):
    system = DiffusionSystem(base="tiny", conditioning=TextConditioning(), face_weight=4.0, face_sigma=1.0)
    system.train()
    latents = system.encode(batch)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        errors = []
        system.unet.register_forward_hook(lambda m, a, out: errors.append((out.sample - noise).pow(2)))
        weighted = system.denoising_loss(batch, latents, noise, timesteps, None, None, face_weight=4.0)
        plain = system.denoising_loss(batch, latents, noise, timesteps, None, None)
    assert_close(plain, errors[1].mean())
    # By hand: the keypoints' face Gaussian on the 16 x 16 latent grid (a 2x coarser copy of the image's).
    from portrait_edit.diffusion.face_weights import face_gaussian

    keypoints = batch["keypoints"].clone()
    keypoints[..., :2] /= 2
    w = (1 + 4.0 * face_gaussian(keypoints, SIZE // 2, SIZE // 2, 1.0)).expand_as(errors[0])
    expected = ((errors[0] * w).flatten(1).sum(1) / w.flatten(1).sum(1)).mean()
    assert_close(weighted, expected)
    assert not torch.allclose(weighted, plain)
    with pytest.raises(ValueError, match="keypoints"):
        system.denoising_loss({"caption": batch["caption"]}, latents, noise, timesteps, None, None, 4.0)


def test_validation_loss_is_deterministic(batch):
    system = DiffusionSystem(base="tiny", conditioning=TextConditioning())
    system.eval()
    with pytest.warns(UserWarning, match="self.log"):
        first, second = system.validation_step(batch, 3), system.validation_step(batch, 3)
        other = system.validation_step(batch, 4)
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_ema_follows_the_hand_computed_average_and_exports(batch, tmp_path):
    decay, steps = 0.5, 3
    system = DiffusionSystem(base="tiny", conditioning=TextConditioning(), use_ema=True, ema_decay=decay)
    record = RecordTrained()
    fit(system, batch, steps=steps, callbacks=[record])
    assert len(record.trajectory) == steps + 1
    expected = record.trajectory[0]  # e_0 = the starting weights
    for n, params in enumerate(record.trajectory[1:], start=1):
        d = ema_decay_at(n, decay)  # 0.1, 0.18, 0.25: the warmup, then at most `decay`
        expected = [d * e + (1 - d) * p for e, p in zip(expected, params)]
    ema = list(system.ema["unet"].module.parameters())
    for got, want in zip(ema, expected):
        assert_close(got, want)
    assert not all(torch.equal(a, b) for a, b in zip(ema, system.unet.parameters()))
    # The export holds the EMA weights, in the requested dtype; a second export replaces the first.
    system.export(tmp_path, dtype=torch.float16)
    (folder,) = system.export(tmp_path, dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]
    stored = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    loaded = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float16)
    for (name, got), want in zip(loaded.named_parameters(), system.ema["unet"].module.parameters()):
        assert torch.equal(got, want.half()), name
    # The EMA is part of the checkpoint (resume), under ema.unet.
    assert any(k.startswith("ema.unet.module.") for k in system.state_dict())


def test_caption_dropout_rate_and_null_text(parts):
    p, n = 0.25, 4000
    conditioning = TextConditioning(caption_dropout=p)
    conditioning.bind(parts)
    conditioning.train()
    g = torch.Generator().manual_seed(0)
    rate = conditioning.drop_mask(n, g).float().mean().item()
    assert abs(rate - p) < 3 * math.sqrt(p * (1 - p) / n)
    captions = ["a man, normal costume", "a woman, santa claus costume"] * 8
    g = torch.Generator().manual_seed(1)
    drop = conditioning.drop_mask(len(captions), torch.Generator().manual_seed(1))
    assert 0 < drop.sum() < len(captions)
    states = conditioning.text_states({"caption": captions}, g)
    null = conditioning.null_text_states()[0]
    for row, dropped in zip(states, drop):
        assert torch.equal(row, null) == bool(dropped)
    # One null definition: diffusers' pipelines encode negative_prompt="" to the same states.
    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _, negative = pipe.encode_prompt("a man", "cpu", 1, True, negative_prompt="")
    assert_close(negative[0], null)
    # No dropout outside training.
    conditioning.eval()
    assert not conditioning.drop_mask(n, torch.Generator().manual_seed(0)).any()


def test_configuration_errors_name_the_fix(parts):
    with pytest.raises(ValueError, match="nothing to train"):
        DiffusionSystem(base="tiny", conditioning=TextConditioning(), train_unet=False)
    with pytest.raises(ValueError, match="embedding_channels"):
        PoseControlConditioning(embedding_channels=[16, 32, 96]).bind(parts)
    with pytest.raises(ValueError, match="caption_dropout"):
        TextConditioning(caption_dropout=1.0)
    with pytest.raises(ValueError, match="export_dtype"):
        DiffusionSystem(base="tiny", export_dtype="fp8")


class RecordNoise(Callback):
    """Saves 8 normals from a fresh copy of each rank's step generator (its seed) to <out>/rank<r>."""

    def __init__(self, out):
        self.out = out

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        probe = torch.Generator().manual_seed(module.generator.initial_seed())
        save_file({"noise": torch.randn(8, generator=probe)}, f"{self.out}/rank{trainer.global_rank}")


@pytest.mark.slow
def test_ddp_ranks_draw_different_noise(batch, tmp_path):
    """Two CPU processes (gloo): each rank's stream is its own key; training with EMA and frozen parts
    finishes (no rank waits for gradients of parameters that never get any)."""
    system = DiffusionSystem(
        base="tiny", conditioning=PoseControlConditioning(), train_unet=False, use_ema=True
    )
    fit(system, batch, callbacks=[RecordNoise(tmp_path)], devices=2, strategy="ddp_spawn")
    noise = [load_file(tmp_path / f"rank{r}")["noise"] for r in (0, 1)]
    assert not torch.equal(noise[0], noise[1])
    for rank in (0, 1):
        assert torch.equal(noise[rank], torch.randn(8, generator=rank_generator(0, rank)))


@pytest.mark.slow
def test_resume_restores_ema_and_moves_the_noise_stream_on(batch, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(steps, ckpt_path=None):
        system = DiffusionSystem(base="tiny", conditioning=TextConditioning(), use_ema=True, ema_decay=0.9)
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
        fit(system, batch, steps, [checkpoint], ckpt_path, enable_checkpointing=True)
        return system

    first = run(2)
    resumed = run(3, ckpt_path="last")
    assert int(first.ema["unet"].n_averaged) == 3 and int(resumed.ema["unet"].n_averaged) == 4
    fresh = rank_generator(0, 0, step=2)
    assert resumed.generator.initial_seed() == fresh.initial_seed() != rank_generator(0, 0).initial_seed()


def test_pretrained_controlnet_source_is_trainable(parts):
    conditioning = PoseControlConditioning(controlnet="tiny")
    conditioning.bind(parts)
    params = conditioning.trainable_parameters()
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in conditioning.text_encoder.parameters())


@pytest.mark.parametrize("stage", ["base_unet", "base_controlnet"])
def test_fit_configs_run_end_to_end_on_the_tiny_preset(stage, tmp_path):
    """`fit --config configs/mini/<stage>.yaml` on 6 world pairs, tiny models, 2 steps, then the export."""
    from portrait_edit.cli import PortraitCLI

    root = Path(__file__).resolve().parents[2]
    part = "unet" if stage == "base_unet" else "controlnet"
    shards = tmp_path / "pairs"
    PortraitCLI(
        args=[
            "predict",
            "--config",
            str(root / "configs/mini/world_pairs.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.callbacks.init_args.output_dir={shards}",
            "--data.init_args.num_samples=6",
            "--data.init_args.shard_size=6",
        ]
    )
    small = tmp_path / "small.yaml"
    small.write_text(
        "trainer:\n  logger: false\n  callbacks: []\n  enable_checkpointing: false\n  max_steps: 2\n"
        "  val_check_interval: 1\n  limit_val_batches: 1\n  num_sanity_val_steps: 0\n"
        f"  default_root_dir: {tmp_path}\n"
    )
    cli = PortraitCLI(
        args=[
            "fit",
            "--config",
            str(root / f"configs/mini/{stage}.yaml"),
            "--config",
            str(small),
            "--ckpt_path=null",
            "--model.init_args.base=tiny",
            f"--model.init_args.export_dir={tmp_path / 'export'}",
            f"--data.init_args.shards={shards}",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4",
            "--data.init_args.val_samples=1",
            "--data.init_args.num_workers=0",
            # The tiny VAE downscales 2x, so the pose embedding has 2 convs (mini: 3).
            *(
                ["--model.init_args.conditioning.init_args.embedding_channels=[16,32]"]
                if part == "controlnet"
                else []
            ),
        ]
    )
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"].item())
    assert "val/loss" in cli.trainer.callback_metrics
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [part]
