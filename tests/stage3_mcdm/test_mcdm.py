"""The MCDM (models/mcdm_conditioning.py, systems/mcdm.py) on the tiny preset: widened UNet at init, nulls, cached vs
online conditions, the reconstruction swap, export, and exact resume."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from safetensors.torch import load_file
from torch.testing import assert_close

from portrait_edit.loading.components import load_components
from portrait_edit.models.mcdm_conditioning import ImageEmbeddingAdapter, MCDMConditioning
from portrait_edit.systems.mcdm import MCDMSystem, swapped
from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair

SIZE = 32  # tiny preset: 32 x 32 images, VAE downscale 2, CLIP 32 x 32 with 2 x 2 patches
TINY_CLIP = dict(clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def to_tensor(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pair_batch():
    """Two world pairs as an MCDM pair batch (online: images, no cached conditions)."""
    pairs = [make_pair(seed, DIRECTIONS[seed], size=SIZE) for seed in (0, 5)]
    return {
        "image": to_tensor([p.tgt for p in pairs]),
        "source": to_tensor([p.src for p in pairs]),
        "caption": [p.prompts["p_b"] for p in pairs],
        "source_caption": [p.prompts["p_a"] for p in pairs],
    }


@pytest.fixture(scope="module")
def batch():
    return pair_batch()


def mcdm(**kw):
    return MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP, num_image_tokens=3), **kw)


def test_widened_unet_equals_the_base_unet_at_init_whatever_c_s():
    system = mcdm()
    base = load_components("tiny", parts=("unet",), seed=0).unet
    assert system.unet.config.in_channels == 2 * base.config.in_channels
    z = torch.randn(2, base.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77 + 3, base.config.cross_attention_dim)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = base(z, t, encoder_hidden_states=context).sample
        for c_s in (torch.zeros_like(z), 5 * torch.randn_like(z)):
            out = system.unet(torch.cat([z, c_s], dim=1), t, encoder_hidden_states=context).sample
            assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_dropped_conditions_are_the_black_image_and_empty_prompt_nulls(batch):
    system = mcdm()
    c = system.conditioning
    latent, clip, size = c.batch_sources(batch)
    text = c.cached_text(batch["caption"])
    drop = {name: torch.tensor([True, False]) for name in ("image", "spatial", "text")}
    c_s, context = c.conditions(latent, clip, text, size, drop)
    black = -torch.ones(1, 3, SIZE, SIZE)
    black_latent, black_clip = c.source_latent(black), c.source_clip(black)
    assert_close(c_s[0], black_latent[0])
    assert_close(c_s[1], latent[1])
    assert_close(context[0, :77], c.encode_text([""])[0])
    assert_close(context[1, :77], c.encode_text(batch["caption"][1:])[0])
    with torch.no_grad():
        assert_close(context[0, 77:], c.adapter(black_latent, black_clip)[0])
        assert_close(context[1, 77:], c.adapter(latent[1:], clip[1:])[0])
    assert context.shape == (2, 77 + 3, system.unet.config.cross_attention_dim)


def test_training_from_cached_conditions_gives_the_online_loss(batch):
    system = mcdm(p_swap=0.5)
    system.train()
    c = system.conditioning
    cached = {
        "latent": system.encode({"image": batch["image"]}),
        "source_latent": c.source_latent(batch["source"]),
        "source_clip": c.source_clip(batch["source"]),
        "caption": batch["caption"],
        "source_caption": batch["source_caption"],
    }
    calls = []
    system.vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    c.image_encoder.register_forward_hook(lambda *a: calls.append(2))
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached: logging is skipped
        online = system.training_step(batch, 0)
        # Target, source and black image through the VAE; source and black image through CLIP.
        assert sorted(calls) == [1, 1, 1, 2, 2]
        calls.clear()
        from_cache = system.training_step(cached, 0)
    assert calls == []  # neither encoder runs (the black image's conditions are cached too)
    assert_close(from_cache, online, rtol=1e-5, atol=1e-6)


def test_reconstruction_swap_targets_the_source_and_its_prompt(batch):
    swap = torch.tensor([True, False])
    out = swapped(batch, swap)
    assert torch.equal(out["image"][0], batch["source"][0]) and torch.equal(
        out["image"][1], batch["image"][1]
    )
    assert out["caption"] == [batch["source_caption"][0], batch["caption"][1]]
    assert swapped(batch, torch.tensor([False, False])) is batch
    with pytest.raises(ValueError, match="source_caption"):
        swapped({k: v for k, v in batch.items() if k != "source_caption"}, swap)


def test_ablations_change_the_architecture():
    no_spatial = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP, use_spatial=False))
    no_image = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP, use_image=False))
    assert no_spatial.unet.config.in_channels == 4 and no_spatial.conditioning.adapter is not None
    assert no_image.unet.config.in_channels == 8 and set(no_image.trained) == {"unet"}
    scratch = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY_CLIP), from_scratch=True, seed=3)
    pretrained = mcdm()
    assert not torch.equal(scratch.unet.conv_out.weight, pretrained.unet.conv_out.weight)


def test_export_is_a_self_contained_folder(tmp_path):
    system = mcdm(scales={"text": 7.0})
    system.export(tmp_path, dtype=torch.float32)
    for part in ("unet", "image_adapter", "vae", "text_encoder", "tokenizer", "image_encoder", "scheduler"):
        assert (tmp_path / part).is_dir(), part
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["in_channels"] == 8
    adapter = ImageEmbeddingAdapter.from_pretrained(tmp_path / "image_adapter")
    for key, value in system.ema["image_adapter"].module.state_dict().items():
        assert torch.equal(adapter.state_dict()[key], value), key
    settings = json.loads((tmp_path / "mcdm.json").read_text())
    assert settings["scales"] == {"image": 3.0, "spatial": 3.0, "text": 7.0}
    assert settings["clip_image_size"] == SIZE and settings["use_spatial"] and settings["use_image"]
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind
    card = (tmp_path / "README.md").read_text()  # the model card
    assert (
        "Learning Feature-Preserving Portrait Editing from Generated Pairs" in card and "Base: `tiny`" in card
    )
    assert "3.0 / 3.0 / 7.0" in card and "lambda 0.2 (costume) / 0.35 (expression)" in card
    assert "| vae/ | Apache-2.0 (random weights) |" in card and '"optimizer_steps": 0' in card


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader, IterableDataset
    sys.path.insert(0, sys.argv[4])
    from test_mcdm import mcdm, pair_batch

    torch.use_deterministic_algorithms(True)
    out, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    class Stream(IterableDataset):
        def __iter__(self):
            while True:
                yield pair_batch()

    class Kill(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                trainer.save_checkpoint(os.path.join(out, "last.ckpt"))
                os._exit(0)  # no clean shutdown: a killed process

    system = mcdm(lr=1e-3, ema_decay=0.9)
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=[Kill()] if kill_at else [],
    )
    resume = os.path.join(out, "last.ckpt")
    trainer.fit(system, DataLoader(Stream(), batch_size=None), ckpt_path=resume if os.path.exists(resume) else None)
    state = {f"{k}": v.contiguous() for k, v in system.state_dict().items() if v.is_floating_point()}
    save_file(state, os.path.join(out, "final.safetensors"))
    """
)


@pytest.mark.slow
def test_killed_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    here = str(Path(__file__).parent)
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    run = lambda out, steps, kill: subprocess.run(  # noqa: E731
        [sys.executable, str(script), str(out), str(steps), str(kill), here], check=True, env=env
    )
    run(straight, 20, 0)
    run(resumed, 20, 10)
    assert (resumed / "last.ckpt").is_file() and not (resumed / "final.safetensors").exists()
    run(resumed, 20, 0)
    a, b = load_file(straight / "final.safetensors"), load_file(resumed / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_validation_edits_land_in_the_offline_wandb_run_folder(batch, tmp_path, monkeypatch):
    """The edits are written into the run folder itself (what `wandb sync <folder>` uploads), one PNG per
    input with x_A | x_B | edit side by side, captioned with p_b."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger
    from PIL import Image
    from torch.utils.data import DataLoader

    monkeypatch.setenv("WANDB_MODE", "offline")
    system = mcdm(val_edits=1)
    edit = torch.full((1, 3, SIZE, SIZE), 0.5)
    monkeypatch.setattr(system, "sample_edits", lambda b: edit.expand(len(b["caption"]), -1, -1, -1))
    logger = WandbLogger(project="portrait_edit", save_dir=str(tmp_path), offline=True)
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(system, DataLoader([batch], batch_size=None), DataLoader([batch], batch_size=None))
    run_dir = Path(logger.experiment.dir)
    import wandb

    wandb.finish()
    pngs = sorted((run_dir / "media" / "images").glob("val/edits_*.png"))
    assert run_dir.is_relative_to(tmp_path) and len(pngs) == 1
    strip = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert strip.shape == (SIZE, 3 * SIZE, 3)
    source = ((batch["source"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(strip[:, :SIZE], source) and (strip[:, 2 * SIZE :] == 191).all()


def test_sample_edits_are_seeded_images(batch):
    system = mcdm()
    one = system.sample_edits(batch, steps=2, seed=1)
    assert one.shape == (2, 3, SIZE, SIZE) and one.min() >= -1 and one.max() <= 1
    assert torch.equal(one, system.sample_edits(batch, steps=2, seed=1))
    assert not torch.equal(one, system.sample_edits(batch, steps=2, seed=2))


class RecordBatches(Callback):
    """Writes each rank's training batch sizes to <out>/rank<r>.json at the end of fit."""

    def __init__(self, out):
        self.out, self.sizes = out, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.sizes.append(len(batch["json"]))

    def on_train_end(self, trainer, module):
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.sizes))


@pytest.mark.slow
def test_two_process_ddp_fit_on_pair_shards(tmp_path):
    from lightning.pytorch import Trainer

    from portrait_edit.data.shard_reader import PairShardsDataModule
    from portrait_edit.data.shard_writer import ShardWriter
    from portrait_edit.data.world_pairs import WorldPairsDataModule
    from portrait_edit.systems.world_pairs import WorldPairsSystem

    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    shards = tmp_path / "pairs"
    writer = Trainer(callbacks=[ShardWriter(str(shards))], default_root_dir=str(tmp_path), **quiet)
    jobs = WorldPairsDataModule(num_samples=12, shard_size=3, batch_size=6, seed=4)
    writer.predict(WorldPairsSystem(size=SIZE), datamodule=jobs, return_predictions=False)
    data = PairShardsDataModule(
        str(shards), batch_size=2, num_workers=0, shuffle_buffer=4, samples_per_epoch=40
    )
    trainer = Trainer(
        max_steps=10, devices=2, strategy="ddp_spawn", enable_checkpointing=False,
        callbacks=[RecordBatches(tmp_path)], **quiet,
    )  # fmt: skip
    trainer.fit(mcdm(), datamodule=data)
    sizes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sizes[0] == sizes[1] == [2] * 10  # equal, full batches on both ranks
