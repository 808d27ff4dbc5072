"""tools/cache_conditions.py on real world-pair shards and the tiny preset: the cached fields are the
conditioning's own encodings, a rerun skips, and training on them gives the online loss."""

import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from torch.testing import assert_close

from portrait_edit.data.shard_reader import PairShardsMapDataset, collate_samples, resolve_shards
from portrait_edit.data.shard_writer import ShardWriter
from portrait_edit.data.world_pairs import WorldPairsDataModule
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.systems.world_pairs import WorldPairsSystem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import cache_conditions  # noqa: E402

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
CONDITIONING = {
    "class_path": "portrait_edit.models.mcdm.MCDMConditioning",
    "init_args": {"image_size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "num_image_tokens": 3},
}


@pytest.fixture
def shards(tmp_path):
    out = tmp_path / "pairs"
    trainer = Trainer(callbacks=[ShardWriter(str(out))], default_root_dir=str(tmp_path), **QUIET)
    jobs = WorldPairsDataModule(num_samples=6, shard_size=4, batch_size=3, seed=2)
    trainer.predict(WorldPairsSystem(size=32), datamodule=jobs, return_predictions=False)
    config = tmp_path / "mcdm.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"init_args": {"base": "tiny", "conditioning": CONDITIONING}}})
    )
    return out, config


def batch_of(out):
    dataset = PairShardsMapDataset(resolve_shards(str(out)))
    return collate_samples([dataset[i] for i in range(len(dataset))])


def test_cached_fields_are_the_encodings_and_a_rerun_skips(shards):
    out, config = shards
    assert cache_conditions.main([str(out), "--config", str(config), "--dtype", "float32"]) == 0
    batch = batch_of(out)
    assert len(batch["__key__"]) == 6
    conditioning, _ = cache_conditions.conditioning_from_config(str(config))
    assert_close(batch["src.latent.npy"], conditioning.source_latent(batch["src.png"]))
    assert_close(batch["tgt.latent.npy"], conditioning.source_latent(batch["tgt.png"]))
    assert_close(batch["src.clip.npy"], conditioning.source_clip(batch["src.png"]))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert cache_conditions.main([str(out), "--config", str(config), "--dtype", "float32"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}  # already cached: untouched
    with pytest.raises(SystemExit, match="cached with"):
        cache_conditions.main([str(out), "--config", str(config), "--dtype", "float16"])
    with tarfile.open(next(out.glob("*.tar"))) as tar:  # the original members are all still there
        names = tar.getnames()
    assert {n.split(".", 1)[1] for n in names} >= {"src.png", "tgt.png", "json", "src.latent.npy"}


def test_training_on_cached_conditions_gives_the_online_loss(shards):
    out, config = shards
    online = batch_of(out)
    cache_conditions.main([str(out), "--config", str(config), "--dtype", "float32"])
    cached = {k: v for k, v in batch_of(out).items() if not k.endswith(".png")}
    assert "src.png" not in cached and "tgt.latent.npy" in cached
    system = MCDMSystem(
        base="tiny", conditioning=cache_conditions.MCDMConditioning(**CONDITIONING["init_args"])
    )
    system.train()
    calls = []
    system.vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    with pytest.warns(UserWarning, match="self.log"):
        loss_online = system.training_step(online, 0)
        calls.clear()
        loss_cached = system.training_step(cached, 0)
    assert calls == []
    assert_close(loss_cached, loss_online, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(loss_online)


def test_out_caches_a_copy_and_leaves_the_source_shards_alone(shards, tmp_path):
    out, config = shards
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    copy = tmp_path / "cached"
    args = [str(out), "--config", str(config), "--dtype", "float32", "--out", str(copy)]
    assert cache_conditions.main(args) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the source is untouched
    assert {p.name for p in copy.iterdir()} == set(before) | {"conditions.json"}
    cached, plain = batch_of(copy), batch_of(out)
    assert cached["__key__"] == plain["__key__"] and "src.latent.npy" not in plain
    conditioning, _ = cache_conditions.conditioning_from_config(str(config))
    assert_close(cached["src.latent.npy"], conditioning.source_latent(plain["src.png"]))
    stamps = {p: p.stat().st_mtime_ns for p in copy.glob("*.tar")}
    assert cache_conditions.main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in copy.glob("*.tar")}  # a rerun skips
