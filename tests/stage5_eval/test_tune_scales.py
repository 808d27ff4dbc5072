"""evaluation/tuning.py: the pick rule by hand, and a sweep by `validate` on a tiny real MCDM export that
resumes from its cached items and writes the pick where the editor reads it."""

import pytest
import torch

from portrait_edit.evaluation import tuning
from portrait_edit.evaluation.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.evaluation.methods import MCDMMethod
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.tasks import LABELS


def test_pick_is_the_highest_ssim_that_still_edits():
    rows = {"3/3/5": {"ssim": 0.70, "fidelity": 0.90}, "3/3/3.5": {"ssim": 0.75, "fidelity": 0.81},
            "3/3/2.5": {"ssim": 0.78, "fidelity": 0.79}}  # the best SSIM, but too few edits happen  # fmt: skip
    assert tuning.pick(rows, 0.8) == "3/3/3.5"
    assert tuning.pick(rows, 0.85) == "3/3/5"
    assert tuning.pick(rows, 0.95) is None
    assert tuning.key((1.5, 3.0, 2.5)) == "1.5/3/2.5"
    # 16 of 25 edits in half the directions, 24 of 25 in the others: fidelity 0.8 exactly, though the
    # float32 fractions (0.64 is 0.63999999) average to just under it; it reaches the bound.
    at_bound = float(torch.tensor([16 / 25, 24 / 25]).mean())
    assert at_bound < 0.8
    assert (
        tuning.pick(
            {"3/2/2": {"ssim": 0.9, "fidelity": at_bound}, "3/2/2.5": {"ssim": 0.8, "fidelity": 0.83}}, 0.8
        )
        == "3/2/2"
    )
    assert tuning.pick({"3/2/2": {"ssim": 0.9, "fidelity": at_bound}}, 0.81) is None


def test_sweep_on_a_tiny_export_resumes_and_writes_the_pick(tmp_path, monkeypatch):
    """A tiny MCDM export (its CLIP reads 32 x 32 views of the 64 x 64 world portraits) and a tiny direction
    classifier that reads everything as "flower": only flower edits count, so every setting has fidelity
    1/8. A rerun edits nothing (its items are cached); the pick goes into mcdm.json, which the editor
    then uses."""
    clip = dict(clip_image_size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3, num_image_tokens=3)
    system = MCDMSystem(base="tiny", conditioning=MCDMConditioning(**clip), val_edits=0, use_ema=False)
    export = tmp_path / "mcdm"
    system.export(export, dtype=torch.float32)
    classifier = DirectionClassifier(DirectionClassifierConfig(channels=[8, 16], image_size=64, groups=4))
    head = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(LABELS.index("flower")), len(LABELS)))
    classifier.save_pretrained(tmp_path / "classifier")
    grid = [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)]

    def run(**options):
        return tuning.tune_scales(export, tmp_path / "classifier", grid, 1, out=tmp_path / "tune", **options)

    chosen, page = run(min_fidelity=0.1)
    table = tuning.sweep(export, tmp_path / "classifier", grid, 1, tmp_path / "tune")
    rows = {r["method"]: r for r in table["rows"]}
    assert sorted(rows) == ["1/1/1", "1/1/2"] and all(
        r["fidelity"] == pytest.approx(1 / 8) for r in rows.values()
    )
    assert chosen == max(rows, key=lambda k: rows[k]["ssim"]) and f"{chosen} **(pick)**" in page
    assert (tmp_path / "tune" / "tune_scales.md").read_text() == page
    monkeypatch.setattr(MCDMMethod, "__call__", lambda *a: pytest.fail("a rerun edited"))
    assert run(min_fidelity=0.1, write=True)[0] == chosen  # from the cache alone
    assert MCDMEditor.from_pretrained(export).scales == tuning.scales_of(tuple(map(float, chosen.split("/"))))
    monkeypatch.undo()  # the rewritten mcdm.json is another export to the cache: the next sweep edits again
    assert run(min_fidelity=0.5)[0] is None  # 1/8 of the edits happen: no pick
