"""tools/tune_scales.py: the pick rule by hand, and a sweep on a tiny real MCDM export that resumes from its
kept scores and writes the pick where the editor reads it."""

import json

import pytest
import torch
from tool_loader import load_tool

from portrait_edit.evaluation.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.tasks import DIRECTIONS, LABELS


def _tool():
    return load_tool("tune_scales")


def _scores(ssim: float, fidelity: float) -> dict:
    return {d: {"ssim": ssim, "fidelity": fidelity} for d in DIRECTIONS}


def test_pick_is_the_highest_ssim_that_still_edits():
    tool = _tool()
    results = {
        "3/3/5": _scores(0.70, 0.90),
        "3/3/3.5": _scores(0.75, 0.81),
        "3/3/2.5": _scores(0.78, 0.79),  # the best SSIM, but too few edits happen
    }
    assert tool.pick(results, 0.8) == "3/3/3.5"
    assert tool.pick(results, 0.85) == "3/3/5"
    assert tool.pick(results, 0.95) is None
    # The bound is on the mean over the directions: one direction below it does not rule a setting out.
    uneven = _scores(0.9, 1.0)
    uneven["flower"] = {"ssim": 0.1, "fidelity": 0.3}
    assert tool.summary(uneven)["fidelity"] == pytest.approx((7 + 0.3) / 8)
    assert tool.pick({"a": uneven, "b": _scores(0.5, 0.9)}, 0.8) == "a"
    assert tool.key((1.5, 3.0, 2.5)) == "1.5/3/2.5"
    # 16 of 25 edits in half the directions, 24 of 25 in the others: fidelity 0.8 exactly, though the
    # float32 fractions (0.64 is 0.63999999) average to just under it; it reaches the bound.
    at_bound = {d: {"ssim": 0.9, "fidelity": float(torch.tensor(16 / 25 if i % 2 else 24 / 25))}
                for i, d in enumerate(DIRECTIONS)}  # fmt: skip
    assert tool.summary(at_bound)["fidelity"] < 0.8
    assert tool.pick({"3/2/2": at_bound, "3/2/2.5": _scores(0.8, 0.83)}, 0.8) == "3/2/2"
    assert tool.pick({"3/2/2": at_bound}, 0.81) is None


def test_sweep_on_a_tiny_export_resumes_and_writes_the_pick(tmp_path):
    """A tiny MCDM export (its CLIP reads 32 x 32 views of the 64 x 64 world portraits) and a tiny direction classifier that reads
    everything as "flower": only flower edits count, so every setting has fidelity 1/8. The kept scores
    make a rerun compute nothing; --write puts the pick into mcdm.json, which the editor then uses."""
    tool = _tool()
    clip = dict(clip_image_size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3, num_image_tokens=3)
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**clip), val_edits=0, use_ema=False)
    export = tmp_path / "mcdm"
    system.export(export, dtype=torch.float32)
    mini = tmp_path / "mini"
    classifier = DirectionClassifier(DirectionClassifierConfig(channels=[8, 16], image_size=64, groups=4))
    head = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(LABELS.index("flower")), len(LABELS)))
    classifier.save_pretrained(mini / "classifier")

    def run(out: str = "tune", text: tuple[str, ...] = ("1", "2"), inputs: str = "1", *extra: str) -> int:
        return tool.main(["--mcdm", str(export), "--mini", str(mini), "--inputs", inputs, "--image", "1",
                          "--spatial", "1", "--text", *text, "--out", str(tmp_path / out), *extra])  # fmt: skip

    assert run("tune", ("1", "2"), "1", "--min-fidelity", "0.1") == 0
    kept = json.loads((tmp_path / "tune" / "tune_scales.json").read_text())
    assert sorted(kept["results"]) == ["1/1/1", "1/1/2"]
    for scores in kept["results"].values():
        assert tool.summary(scores)["fidelity"] == pytest.approx(1 / 8)
        assert all(0 < s["ssim"] <= 1 for s in scores.values())
    (tmp_path / "tune" / "tune_scales.json").write_text(
        json.dumps({**kept, "results": {"1/1/1": _scores(0.9, 0.5), "1/1/2": _scores(0.4, 0.5)}})
    )
    # Only the kept (doctored) scores reach fidelity 0.4: a rerun that recomputed them would pick nothing.
    assert run("tune", ("1", "2"), "1", "--min-fidelity", "0.4", "--write") == 0
    assert MCDMEditor.from_pretrained(export).scales == {"image": 1.0, "spatial": 1.0, "text": 1.0}
    assert run("tune2", ("2",), "1", "--min-fidelity", "0.5") == 1  # 1/8 of the edits happen: no pick
    with pytest.raises(ValueError, match="another run"):
        run("tune", ("1", "2"), "2")
