"""The shipped mini base (data/mini/): every part present and trained, and sampling is deterministic.

These load the committed weights (a few MB), so they run in the default suite: a missing or random part
fails here, not silently downstream.
"""

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from portrait_edit import paths
from portrait_edit.data.images import encode_png, to_uint8
from portrait_edit.data.jobs import sample_key
from portrait_edit.data.pair_jobs import PairJobsDataModule
from portrait_edit.data.shard_pipeline import iter_samples, resolve_shards
from portrait_edit.models import components as C
from portrait_edit.models.direction_classifier import DirectionClassifier
from portrait_edit.systems.pair_generation import PairGenerationSystem
from portrait_edit.systems.sampling import SamplingSystem

MINI = paths.REPO_ROOT / "data" / "mini"
PARTS = (
    "vae",
    "unet",
    "text_encoder",
    "tokenizer",
    "image_encoder",
    "controlnet",
    "scheduler",
    "classifier",
    "probe",
    "identity_encoder",
)


def test_every_part_is_shipped_with_its_manifest_entry():
    manifest = json.loads((MINI / "manifest.json").read_text())
    assert {p.name for p in MINI.iterdir() if p.is_dir()} >= set(PARTS)
    for stage in ("pairs", "vae", "clip", "classifier", "probe", "unet", "identity", "controlnet"):
        entry = manifest["stages"][stage]
        assert {"command", "config", "config_sha256", "revision", "wall_time_s"} <= set(entry)
    weights = sum(f.stat().st_size for f in MINI.rglob("*.safetensors"))
    assert weights < 40 * 2**20


def draw(seed: int, prompt: str) -> np.ndarray:
    system = SamplingSystem(base="mini", num_inference_steps=10, output_dir="/dev/null")
    out = system.pipeline(
        prompt=[prompt],
        height=64,
        width=64,
        num_inference_steps=10,
        guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(seed)],
        output_type="np",
    ).images
    return (np.clip(out[0], 0, 1) * 255).round().astype(np.uint8)


def test_shipped_model_draws_the_same_bytes_for_the_same_seed_and_the_prompted_edit(caplog):
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        first = draw(7, "a man, santa claus costume")
    assert not [r for r in caplog.records if "RANDOM" in r.message]  # the trained weights, not the preset
    second = draw(7, "a man, santa claus costume")
    assert encode_png(first) == encode_png(second)
    assert not np.array_equal(first, draw(8, "a man, santa claus costume"))
    classifier = DirectionClassifier.from_pretrained(MINI / "classifier")
    image = torch.from_numpy(first).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert classifier.config.labels[int(classifier.predict_directions(image))] == "santa"


@pytest.mark.parametrize("part", ["vae", "unet", "controlnet", "text_encoder", "image_encoder"])
def test_shipped_parts_load_without_falling_back_to_random(part, caplog):
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        C.load_model(part, "mini")
    assert not [r for r in caplog.records if "RANDOM" in r.message]


def test_shipped_pairs_are_what_the_generate_config_makes():
    """data/mini/pairs: 2000 pairs in shards, recorded by the `generate` stage, and a pair redrawn from its
    job index with configs/mini/generate.yaml comes out as shipped (up to the float rounding of a
    different batch size)."""
    config = yaml.safe_load((paths.REPO_ROOT / "configs" / "mini" / "generate.yaml").read_text())
    entry = json.loads((MINI / "manifest.json").read_text())["stages"]["generate"]
    assert entry["config"] == "configs/mini/generate.yaml"
    samples = {
        s["__key__"]: s
        for s in iter_samples(
            resolve_shards(str(MINI / "pairs")), decode=True, required=("src.png", "tgt.png", "json")
        )
    }
    data = config["data"]["init_args"]
    assert sorted(samples) == [sample_key(i) for i in range(data["num_samples"])]
    model = config["model"]["init_args"]
    system = PairGenerationSystem(**model)
    jobs = PairJobsDataModule(**data)
    for index in (0, 1234):
        job = jobs.make_job(index) | {"index": index, "key": sample_key(index), "shard": 0, "shard_len": 1}
        shipped = samples[job["key"]]
        assert shipped["json"]["direction"] == job["direction"]
        assert shipped["json"]["scales"]["guidance"] == model["guidance"]
        (pair,) = system.predict_step([job], 0)
        for field in ("src.png", "tgt.png"):
            diff = np.abs(pair[field].astype(int) - to_uint8(shipped[field]).astype(int))
            assert diff.max() <= 2, (index, field, diff.max())
