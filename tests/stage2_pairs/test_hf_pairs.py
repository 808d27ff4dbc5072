"""Pair shards <-> `datasets` (data/hf_pairs.py): the exported mini pairs read back with datasets' own reader
under diffusers' InstructPix2Pix columns, image for image; an IP2P-style dataset imports into shards that
train 3 MCDM steps."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from lightning.pytorch import Trainer
from PIL import Image

from portrait_edit.data.shard_pipeline import read_shard_samples
from portrait_edit.data.shard_reader import PairShardsDataModule
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.mcdm import MCDMSystem

ROOT = Path(__file__).resolve().parents[2]


def tool(*args):
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/export_pairs.py"), *map(str, args)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def shard(mini_pairs):
    """The shard of mini pairs the generate stage wrote."""
    (path,) = Path(mini_pairs).glob("*.tar")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shard):
    out = tmp_path_factory.mktemp("hf") / "pairs_hf"
    tool(shard, "--out", out)
    return out


def test_datasets_reads_the_exported_pairs_with_the_ip2p_columns(exported, shard):
    dataset = datasets.load_from_disk(str(exported))
    samples = read_shard_samples(str(shard))
    assert len(dataset) == len(samples) and {"input_image", "edit_prompt", "edited_image"} <= set(
        dataset.column_names
    )
    for row in dataset.select(range(5)):
        fields = samples[row["key"]]
        meta = json.loads(fields["json"])
        assert np.array_equal(
            np.asarray(row["input_image"]), np.asarray(Image.open(io.BytesIO(fields["src.png"])))
        )
        assert np.array_equal(
            np.asarray(row["edited_image"]), np.asarray(Image.open(io.BytesIO(fields["tgt.png"])))
        )
        assert (row["edit_prompt"], row["source_prompt"], row["direction"], row["seed"]) == (
            meta["p_b"],
            meta["p_a"],
            meta["direction"],
            meta["seed"],
        )
        assert math.isclose(row["identity_similarity"], meta["identity_similarity"], rel_tol=1e-6)


def test_an_ip2p_dataset_imports_into_shards_that_train_the_mcdm(exported, tmp_path):
    ip2p = (
        datasets.load_from_disk(str(exported))
        .select(range(6))
        .select_columns(["input_image", "edit_prompt", "edited_image"])
    )
    ip2p.save_to_disk(str(tmp_path / "ip2p"))  # an InstructPix2Pix dataset: the three columns alone
    tool("--from-dataset", tmp_path / "ip2p", "--out", tmp_path / "shards", "--size", 32, "--shard-size", 4)
    samples = read_shard_samples(str(tmp_path / "shards" / "pairs-000-000000.tar"))
    first = next(iter(samples.values()))
    assert json.loads(first["json"])["p_a"] == "" and Image.open(io.BytesIO(first["src.png"])).size == (
        32,
        32,
    )
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(clip_image_size=32, image_mean=[0.5] * 3,
                        image_std=[0.5] * 3, num_image_tokens=3), val_edits=0)  # fmt: skip
    data = PairShardsDataModule(str(tmp_path / "shards"), batch_size=2, num_workers=0, shuffle_buffer=2)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(system, datamodule=data)
    assert trainer.global_step == 3 and math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_a_dataset_without_the_columns_is_refused(tmp_path):
    datasets.Dataset.from_dict({"image": [1], "text": ["x"]}).save_to_disk(str(tmp_path / "other"))
    done = subprocess.run([sys.executable, str(ROOT / "tools/export_pairs.py"), "--from-dataset", str(tmp_path / "other"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
    assert (
        done.returncode != 0
        and "has no column(s) ['input_image', 'edit_prompt', 'edited_image']" in done.stderr
    )
