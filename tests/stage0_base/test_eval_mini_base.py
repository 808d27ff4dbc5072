"""tools/eval_mini_base.py end to end on a model folder assembled from tiny components (32 x 32)."""

import json

import pytest
import torch
from tool_loader import load_tool

from portrait_edit.evaluation.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.evaluation.world_probe import WorldProbe, WorldProbeConfig
from portrait_edit.loading.components import load_components, load_tokenizer
from portrait_edit.models.clip_pair import build_clip, export_clip
from portrait_edit.world import make_pair


def _tool():
    return load_tool("eval_mini_base")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Every part eval_mini_base reads, in the data/mini layout, at the tiny sizes (32 x 32 images)."""
    out = tmp_path_factory.mktemp("mini")
    parts = load_components("tiny", parts=["vae", "unet", "controlnet", "scheduler"])
    for name in ("vae", "unet", "controlnet"):
        getattr(parts, name).save_pretrained(out / name)
    parts.scheduler.save_pretrained(out / "scheduler")
    export_clip(build_clip("tiny", "tiny"), load_tokenizer("tiny"), out)
    DirectionClassifier(DirectionClassifierConfig(channels=[8, 16], image_size=32, groups=4)).save_pretrained(
        out / "classifier"
    )
    probe = WorldProbe(WorldProbeConfig(channels=[8, 16], image_size=32, groups=4, hidden=16))
    torch.nn.init.zeros_(probe.head.weight)
    torch.nn.init.constant_(probe.head.bias, 0.5)  # always "sees" the head at the image centre
    probe.save_pretrained(out / "probe")
    return out


def test_eval_runs_and_reports_every_figure(tiny_folder, tmp_path, capsys):
    tool = _tool()
    args = ["--mini", str(tiny_folder), "--pairs", "4", "--per-class", "2", "--steps", "2", "--size", "32"]
    assert tool.main([*args, "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 8 and metrics["vae"]["latent_shape"] == [4, 16, 16]
    assert metrics["clip"]["captions"] == 20 and metrics["clip"]["classes"] == 18
    confusion = torch.tensor(metrics["text_to_image"]["confusion"])
    assert confusion.shape == (9, 9) and confusion.sum(1).tolist() == [2] * 9
    # The probe always answers the centre (16, 16): its error is the distance of each pose's nose to it.
    tool_jobs = [job for job in tool.class_prompts(2) if job["label"] == 0]
    noses = torch.tensor([make_pair(job["seed"], "angry", size=32).keypoints[0, :2] for job in tool_jobs])
    expected = (noses - 16.0).norm(dim=-1).median().item()
    assert metrics["controlnet"]["with"]["median_px"] == pytest.approx(expected, abs=1e-4)
    assert metrics["controlnet"]["without"]["median_px"] == pytest.approx(expected, abs=1e-4)
    assert (tmp_path / "text_to_image.png").is_file() and (tmp_path / "controlnet.png").is_file()
    assert "ControlNet   median head distance" in capsys.readouterr().out


def test_held_out_pairs_alternate_source_and_exact_target():
    tool = _tool()
    data = tool.held_out(9, size=32)
    assert data["image"].shape == (18, 3, 32, 32)
    assert data["label"][0::2].tolist() == [0] * 9
    assert data["label"][1::2].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 1]
    assert data["image"].min() >= -1 and data["image"].max() <= 1
