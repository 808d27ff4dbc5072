"""SamplingSystem on the tiny preset through the real `predict` subcommand (configs/mini/sample.yaml)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_edit.cli import PortraitCLI
from portrait_edit.data.prompt_jobs import PromptJobsDataModule, world_captions
from portrait_edit.systems.sampling import LABEL_WIDTH, contact_sheet

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a man, normal costume", "a woman, santa claus costume"]
SIZE = 32


def sample(out: Path, seed: int = 0, controlnet: str | None = None) -> PortraitCLI:
    args = [
        "predict",
        "--config",
        str(ROOT / "configs/mini/sample.yaml"),
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.base=tiny",
        f"--model.init_args.controlnet={controlnet or 'null'}",
        f"--model.init_args.image_size={SIZE}",
        "--model.init_args.num_inference_steps=3",
        f"--model.init_args.output_dir={out}",
        f"--data.init_args.prompts={json.dumps(PROMPTS)}",
        "--data.init_args.samples_per_prompt=2",
        f"--data.init_args.seed={seed}",
        "--data.init_args.batch_size=3",  # batches cut across prompts: an image depends on its seed only
    ]
    return PortraitCLI(args=args)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    sample(out)
    return out


def images(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


def test_same_seed_same_bytes_and_a_labelled_sheet(first_run, tmp_path):
    first = images(first_run)
    assert sorted(first) == [f"{i:09d}.png" for i in range(4)]
    again = tmp_path / "again"
    sample(again)
    assert images(again) == first
    other = tmp_path / "other"
    sample(other, seed=1)
    assert all(images(other)[name] != data for name, data in first.items())
    sheet = Image.open(first_run / "sheet.png")
    assert sheet.size == (LABEL_WIDTH + 2 * SIZE, 2 * SIZE)  # a row per prompt, a column per sample
    assert not list(first_run.glob("*.tmp*")) and not list((first_run / "images").glob("*.tmp*"))


def test_samples_json_records_prompts_seeds_and_poses(first_run):
    meta = json.loads((first_run / "samples.json").read_text())
    assert meta["settings"]["guidance_scale"] == 4.0  # configs/mini/sample.yaml's
    records = meta["samples"]
    assert [r["prompt"] for r in records] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert len({r["seed"] for r in records}) == 4
    assert np.asarray(records[0]["keypoints"]).shape == (18, 3)


def test_controlnet_sampling_follows_the_pose(first_run, tmp_path):
    cli = sample(tmp_path / "fresh", controlnet="tiny")
    assert type(cli.model.pipeline).__name__ == "StableDiffusionControlNetPipeline"
    # A fresh ControlNet's output convolutions are zero: it must not change the text-to-image samples.
    assert images(tmp_path / "fresh") == images(first_run)
    with torch.no_grad():
        for conv in [*cli.model.controlnet.controlnet_down_blocks, cli.model.controlnet.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    cli.model.hparams.output_dir = str(tmp_path / "posed")
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    posed = images(tmp_path / "posed")
    assert sorted(posed) == sorted(images(first_run))
    assert all(posed[name] != data for name, data in images(first_run).items())


def test_contact_sheet_rows_follow_prompts():
    tile = np.full((8, 8, 3), 200, np.uint8)
    records = [{"prompt": p, "image": tile} for p in ["a", "b", "a", "c", "a"]]
    sheet = contact_sheet(records)
    assert sheet.shape == (3 * 8, LABEL_WIDTH + 3 * 8, 3)
    assert (sheet[8:16, LABEL_WIDTH + 8 :] == 255).all()  # row "b" has one image, then white
    with pytest.raises(ValueError, match="no images"):
        contact_sheet([])


def test_prompt_jobs_default_to_the_world_captions():
    captions = world_captions()
    assert len(captions) == len(set(captions)) == 20
    assert "a woman, santa claus costume" in captions and "a man, normal costume" in captions
    jobs = PromptJobsDataModule(samples_per_prompt=3).jobs()
    assert len(jobs) == 60 and [j["index"] for j in jobs] == list(range(60))
    assert jobs[3]["prompt"] == captions[1] and len({j["seed"] for j in jobs}) == 60
    with pytest.raises(ValueError, match="samples_per_prompt"):
        PromptJobsDataModule(samples_per_prompt=0)
