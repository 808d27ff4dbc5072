"""tools/cache_conditions.py on real world-pair shards and the tiny preset: the cached fields are the
conditioning's own encodings, a rerun skips, and training on them gives the online loss."""

import sys
import tarfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.testing import assert_close

from portrait_edit.data.shard_reader import (
    PairShardsDataModule,
    PairShardsMapDataset,
    collate_samples,
    resolve_shards,
)
from portrait_edit.data.shard_writer import ShardWriter
from portrait_edit.data.world_pairs import WorldPairsDataModule
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.systems.world_pairs import WorldPairsSystem

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cache_conditions  # noqa: E402

from portrait_edit.cli import resolve_config  # noqa: E402
from portrait_edit.data.cached_conditions import check_cached_conditions, conditioning_from_model  # noqa: E402
from portrait_edit.models.mcdm_conditioning import MCDMConditioning  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
TINY = {"clip_image_size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "num_image_tokens": 3}
# configs/mini/mcdm.yaml on the tiny preset: overrides passed through to `fit`, as a user would.
FIT = ["--config", str(ROOT / "configs/mini/mcdm.yaml"), "--model.init_args.base=tiny",
       "--model.init_args.conditioning.init_args.clip_image_size=32",
       "--model.init_args.conditioning.init_args.num_image_tokens=3"]  # fmt: skip


@pytest.fixture
def shards(tmp_path):
    out = tmp_path / "pairs"
    trainer = Trainer(callbacks=[ShardWriter(str(out))], default_root_dir=str(tmp_path), **QUIET)
    jobs = WorldPairsDataModule(num_samples=6, shard_size=4, batch_size=3, seed=2)
    trainer.predict(WorldPairsSystem(size=32), datamodule=jobs, return_predictions=False)
    return out, FIT


def batch_of(out):
    dataset = PairShardsMapDataset(resolve_shards(str(out)))
    return collate_samples([dataset[i] for i in range(len(dataset))])


def test_cached_fields_are_the_encodings_and_a_rerun_skips(shards):
    out, config = shards
    assert cache_conditions.main([str(out), *config, "--dtype", "float32"]) == 0
    batch = batch_of(out)
    assert len(batch["__key__"]) == 6
    conditioning, _ = conditioning_from_model(resolve_config(["fit", *config])["model"])
    assert_close(batch["src.latent.npy"], conditioning.source_latent(batch["src.png"]))
    assert_close(batch["tgt.latent.npy"], conditioning.source_latent(batch["tgt.png"]))
    assert_close(batch["src.clip.npy"], conditioning.source_clip(batch["src.png"]))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert cache_conditions.main([str(out), *config, "--dtype", "float32"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}  # already cached: untouched
    with pytest.raises(SystemExit, match="cached with"):
        cache_conditions.main([str(out), *config, "--dtype", "float16"])
    with tarfile.open(next(out.glob("*.tar"))) as tar:  # the original members are all still there
        names = tar.getnames()
    assert {n.split(".", 1)[1] for n in names} >= {"src.png", "tgt.png", "json", "src.latent.npy"}


def test_training_on_cached_conditions_gives_the_online_loss(shards):
    out, config = shards
    online = batch_of(out)
    cache_conditions.main([str(out), *config, "--dtype", "float32"])
    cached = {k: v for k, v in batch_of(out).items() if not k.endswith(".png")}
    assert "src.png" not in cached and "tgt.latent.npy" in cached
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY))
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
    args = [str(out), *config, "--dtype", "float32", "--out", str(copy)]
    assert cache_conditions.main(args) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the source is untouched
    assert {p.name for p in copy.iterdir()} == set(before) | {"conditions.json"}
    cached, plain = batch_of(copy), batch_of(out)
    assert cached["__key__"] == plain["__key__"] and "src.latent.npy" not in plain
    conditioning, _ = conditioning_from_model(resolve_config(["fit", *config])["model"])
    assert_close(cached["src.latent.npy"], conditioning.source_latent(plain["src.png"]))
    stamps = {p: p.stat().st_mtime_ns for p in copy.glob("*.tar")}
    assert cache_conditions.main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in copy.glob("*.tar")}  # a rerun skips


def test_caching_keeps_the_sidecar_and_manifest_checksums_true(shards):
    import json

    from portrait_edit.atomic import file_sha256

    out, config = shards
    assert cache_conditions.main([str(out), *config]) == 0
    manifest = json.loads(next(out.glob("manifest-r*.json")).read_text())
    for tar in out.glob("*.tar"):
        sidecar = json.loads(tar.with_suffix(".json").read_text())
        assert sidecar["tar_sha256"] == manifest["shards"][tar.name]["tar_sha256"] == file_sha256(tar)
        assert all("src.latent.npy" in fields for fields in sidecar["samples"].values())


def test_a_fit_refuses_conditions_cached_for_another_clip_layer(shards):
    out, config = shards
    assert cache_conditions.main([str(out), *config]) == 0
    conditioning, settings = conditioning_from_model(resolve_config(["fit", *config])["model"])
    check_cached_conditions(str(out), settings)  # the same settings pass
    other = resolve_config(["fit", *config, "--model.init_args.conditioning.init_args.clip_layer=-2"])
    _, settings = conditioning_from_model(other["model"])
    with pytest.raises(ValueError, match=r"conditions.json: these shards' cached conditions were made for another "
                       r"model: clip_layer -1 \(cached\) vs -2 \(this config\)"):  # fmt: skip
        check_cached_conditions(str(out), settings)
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**TINY, clip_layer=-2))
    with pytest.raises(ValueError, match="made for another model: clip_layer"):
        Trainer(max_steps=1, enable_checkpointing=False, default_root_dir=str(out.parent), **QUIET).fit(
            system, datamodule=PairShardsDataModule(str(out), num_workers=0)
        )
