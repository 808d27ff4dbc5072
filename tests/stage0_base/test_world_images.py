"""WorldImagesDataModule on real mini-world pair shards written by WorldPairsSystem + ShardWriter."""

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from portrait_edit.data.jobs import sample_seed
from portrait_edit.data.shard_writer import ShardWriter
from portrait_edit.data.world_images import WorldImagesDataModule, caption_classes
from portrait_edit.data.world_pairs import WorldPairsDataModule
from portrait_edit.systems.world_pairs import WorldPairsSystem
from portrait_edit.tasks import DIRECTIONS, LABELS, prompts_for
from portrait_edit.world import Pose, make_pair, pose_keypoints

N_PAIRS, VAL = 10, 3
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_images") / "pairs"
    trainer = Trainer(callbacks=[ShardWriter(str(out))], default_root_dir=str(out.parent), **QUIET)
    jobs = WorldPairsDataModule(num_samples=N_PAIRS, shard_size=4, batch_size=4, seed=5)
    trainer.predict(WorldPairsSystem(size=64), datamodule=jobs, return_predictions=False)
    return out


@pytest.fixture(scope="module")
def datamodule(shards):
    dm = WorldImagesDataModule(str(shards), batch_size=4, num_workers=0, val_samples=VAL, seed=1)
    dm.setup("fit")
    return dm


def test_batches_follow_the_contract(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"image", "caption", "label", "gender", "pose", "keypoints", "skin", "hair", "index"}
    dataset = datamodule.train_set
    for k, index in enumerate(batch["index"].tolist()):  # each item's own dataset index
        assert torch.equal(dataset[index]["image"], batch["image"][k])
    assert (
        batch["skin"].shape == batch["hair"].shape == (4, 3)
        and 0 <= batch["skin"].min() <= batch["skin"].max() <= 1
    )
    assert batch["image"].shape == batch["pose"].shape == (4, 3, 64, 64)
    assert batch["image"].dtype == batch["pose"].dtype == torch.float32
    for name in ("image", "pose"):
        assert (
            batch[name].min() >= -1 and batch[name].max() <= 1 and batch[name].min() < 0 < batch[name].max()
        )
    assert batch["label"].dtype == torch.long and batch["label"].shape == (4,)
    assert batch["keypoints"].shape == (4, 18, 3) and batch["keypoints"].dtype == torch.float32
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4
    assert set(batch["gender"]) <= {"man", "woman"}


def test_each_pair_gives_its_source_and_its_exact_target(datamodule):
    pairs = datamodule.train_set.pairs
    assert len(datamodule.train_set) == 2 * (N_PAIRS - VAL)
    for k, key in enumerate(pairs.keys[:3]):
        src, tgt = datamodule.train_set[2 * k], datamodule.train_set[2 * k + 1]
        index = int(key)
        direction = DIRECTIONS[index % len(DIRECTIONS)]
        pair = make_pair(sample_seed(5, index), direction)
        prompts = prompts_for(direction, pair.gender)
        assert src["label"] == 0 and src["caption"] == prompts["p_a"]
        assert tgt["label"] == 1 + DIRECTIONS.index(direction) and tgt["caption"] == prompts["p_b"]
        assert LABELS[tgt["label"]] == direction
        assert src["gender"] == tgt["gender"] == pair.gender
        assert torch.equal(src["image"], torch.from_numpy(pair.src).permute(2, 0, 1).float() / 127.5 - 1)
        assert torch.equal(tgt["image"], torch.from_numpy(pair.gt).permute(2, 0, 1).float() / 127.5 - 1)
        assert torch.equal(src["pose"], tgt["pose"])
        skin, hair = (torch.tensor(pair.meta["identity"][k]) / 255.0 for k in ("skin", "hair_colour"))
        assert torch.equal(src["skin"], skin) and torch.equal(tgt["hair"], hair)
        expected = pose_keypoints(Pose.from_dict(pair.meta["pose"]), 64)
        np.testing.assert_allclose(src["keypoints"].numpy(), expected)
        np.testing.assert_allclose(tgt["keypoints"].numpy(), pair.keypoints)


def test_validation_holds_out_the_last_pairs_by_key(datamodule):
    train_keys, val_keys = datamodule.train_set.pairs.keys, datamodule.val_set.pairs.keys
    assert len(val_keys) == VAL and not set(train_keys) & set(val_keys)
    assert sorted(train_keys + val_keys) == [f"{i:09d}" for i in range(N_PAIRS)]
    assert max(train_keys) < min(val_keys)
    seen = [b for batch in datamodule.val_dataloader() for b in batch["caption"]]
    assert len(seen) == 2 * VAL  # every held-out image once, in order


def test_training_shuffle_is_seeded_and_sees_every_image_once(shards):
    def epoch(seed):
        dm = WorldImagesDataModule(str(shards), batch_size=2, num_workers=0, val_samples=VAL, seed=seed)
        dm.setup("fit")
        items = [dm.train_set[i] for i in range(len(dm.train_set))]
        expected = sorted(
            (it["caption"], it["label"], int(((it["image"] + 1) * 127.5).round().sum())) for it in items
        )
        order = [
            (c, int(lab), int(((img + 1) * 127.5).round().sum()))
            for batch in dm.train_dataloader()
            for c, lab, img in zip(batch["caption"], batch["label"], batch["image"])
        ]
        assert sorted(order) == expected  # 14 images, batches of 2: nothing dropped, nothing repeated
        return order

    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)


def test_missing_shards_name_the_path_and_the_command(tmp_path):
    dm = WorldImagesDataModule(str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(ValueError, match="nowhere") as info:
        dm.setup("fit")
    assert "configs/mini/base_pairs.yaml" in str(info.value)


def test_too_many_validation_pairs_is_refused(shards):
    with pytest.raises(ValueError, match="val_samples"):
        WorldImagesDataModule(str(shards), num_workers=0, val_samples=N_PAIRS).setup("fit")


def test_caption_classes_cover_sources_and_directions():
    captions, classes = caption_classes()
    assert len(captions) == len(set(captions)) == 20 and len(set(classes)) == 18
    assert (
        classes[captions.index("a man, normal costume")]
        == classes[captions.index("a man, neutral expression")]
    )
    assert classes[captions.index("a woman, santa claus costume")] == 9 + 1 + DIRECTIONS.index("santa")


def test_reconstruction_samples_are_the_portrait_as_its_own_target():
    job = {"seed": 11, "direction": "santa", "key": "k", "index": 0, "shard": 0, "shard_len": 1}
    pair = make_pair(11, "santa", size=64)
    edit, same = (
        WorldPairsSystem(size=64)._sample(job),
        WorldPairsSystem(size=64, reconstruction=True)._sample(job),
    )
    assert np.array_equal(edit["tgt.png"], pair.tgt) and not np.array_equal(pair.tgt, pair.src)
    assert np.array_equal(same["src.png"], pair.src) and np.array_equal(same["tgt.png"], pair.src)
    assert np.array_equal(same["gt.png"], pair.src) and not same["edit_mask.png"].any()
    assert same["json"]["p_b"] == same["json"]["p_a"] == pair.prompts["p_a"] != edit["json"]["p_b"]
    assert same["json"]["config_hash"] != edit["json"]["config_hash"]
