"""PortraitEditPipeline (models/pipeline.py), a diffusers DiffusionPipeline over the editor: it edits a held-out
portrait exactly as `portrait-edit predict --config configs/mini/edit.yaml` does with the same seed and
settings, and a save_pretrained / from_pretrained round trip edits identically."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from portrait_edit.cli import PortraitCLI
from portrait_edit.models.pipeline import PortraitEditPipeline

ROOT = Path(__file__).resolve().parents[2]
DIRECTIONS = ["santa", "angry"]
STEPS = 4


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held_out")
    subprocess.run([sys.executable, str(ROOT / "tools/held_out_portraits.py"), "--out", str(folder), "--count", "1"],
                   check=True, capture_output=True)  # fmt: skip
    (path,) = sorted(folder.glob("*.png"))
    return path, json.loads((folder / "genders.json").read_text())[path.stem]


@pytest.fixture(scope="module")
def pipe():
    return PortraitEditPipeline.from_pretrained(ROOT / "data/mini/mcdm")


def test_the_pipeline_edits_as_predict_does(portrait, pipe, tmp_path):
    path, gender = portrait
    out = tmp_path / "edits"
    PortraitCLI(args=[
        "predict", "--config", str(ROOT / "configs/mini/edit.yaml"), f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.callbacks.init_args.output_dir={out}",
        f"--data.init_args.root={path.parent}", f"--data.init_args.genders={path.parent / 'genders.json'}",
        f"--model.init_args.directions={json.dumps(DIRECTIONS)}", f"--model.init_args.steps={STEPS}",
        "--data.init_args.num_workers=0",
    ])  # fmt: skip
    assert isinstance(pipe, DiffusionPipeline)
    for direction in DIRECTIONS:
        result = pipe(Image.open(path), direction=direction, gender=gender, num_inference_steps=STEPS, seed=0)
        expected = np.asarray(Image.open(out / path.stem / f"{direction}.png")).astype(int)
        mask = np.asarray(Image.open(out / path.stem / f"{direction}_mask.png"))[..., 0]
        # predict edits an input's directions in one batch: up to the float rounding of another batch size
        assert np.abs(np.asarray(result.images[0]).astype(int) - expected).max() <= 1, direction
        assert np.array_equal(np.asarray(result.masks[0]), mask), direction


def test_save_and_load_round_trip_edits_identically(portrait, pipe, tmp_path):
    path, gender = portrait
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").is_file() and (
        tmp_path / "saved" / "model_index.json"
    ).is_file()
    again = PortraitEditPipeline.from_pretrained(tmp_path / "saved")
    options = dict(prompt="a woman, santa claus costume", source_prompt="a woman, normal costume", threshold=0.2,
                   num_inference_steps=STEPS, seed=3, keep_source=True, scales={"text": 4.0})  # fmt: skip
    a, b = pipe(str(path), **options), again(str(path), **options)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    plain = pipe(str(path), **{**options, "keep_source": False, "use_mask": False})
    assert plain.masks is None and not np.array_equal(np.asarray(plain.images[0]), np.asarray(a.images[0]))
    assert pipe.editor.scales == json.loads((ROOT / "data/mini/mcdm/mcdm.json").read_text())["scales"]


def test_bfloat16_and_bad_calls(portrait, pipe):
    path, _ = portrait
    half = PortraitEditPipeline.from_pretrained(ROOT / "data/mini/mcdm").to("cpu", torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16
    edit = half(str(path), direction="royal", gender="man", num_inference_steps=2, mask_seeds=2)
    assert edit.images[0].size == (64, 64)
    with pytest.raises(ValueError, match="give gender"):
        pipe(str(path), direction="santa")
    with pytest.raises(ValueError, match="give a direction"):
        pipe(str(path), prompt="a man")
