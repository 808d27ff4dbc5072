"""The demo's own tools: the held-out portraits it edits and the report it ends with."""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from demo_report import build, stage_times  # noqa: E402
from held_out_portraits import write_portraits  # noqa: E402

from portrait_edit.data.eval_pairs import WorldEvalDataset  # noqa: E402
from portrait_edit.images import encode_png, to_uint8  # noqa: E402
from portrait_edit.tasks import DIRECTIONS


def test_portraits_are_the_evaluation_streams_inputs(tmp_path):
    genders = json.loads(write_portraits(tmp_path, 3).read_text())
    assert sorted(genders) == ["heldout-000", "heldout-001", "heldout-002"]
    evaluation = WorldEvalDataset(3, list(DIRECTIONS))
    for k in range(3):
        item = evaluation[k * len(DIRECTIONS) + 5]  # any direction of input k has the same x_A
        written = np.asarray(Image.open(tmp_path / f"heldout-{k:03d}.png"))
        np.testing.assert_array_equal(written, to_uint8(item["source"]))
        assert genders[f"heldout-{k:03d}"] in item["p_a"].replace(",", " ").split()


def test_report_has_stage_times_metrics_curve_and_every_edit(tmp_path):
    demo = tmp_path / "demo"
    (demo / "inputs").mkdir(parents=True)
    (demo / "times.txt").write_text("pairs 100\nfine-tune 160\nend 205\n")
    assert stage_times(demo / "times.txt") == [("pairs", 60.0), ("fine-tune", 45.0)]
    curve = demo / "mcdm_run" / "curve" / "version_0"
    curve.mkdir(parents=True)
    (curve / "metrics.csv").write_text("epoch,step,train/loss\n0,4,0.5\n0,9,0.25\n0,14,0.125\n")
    (demo / "eval").mkdir()
    rows = [{"method": "Ours, shipped", "fidelity": 0.75, "ssim": float("nan")}]
    (demo / "eval" / "table.json").write_text(json.dumps({"title": "t", "rows": rows, "unavailable": {}}))
    tile = encode_png(np.zeros((4, 4, 3), np.uint8))
    for model in ("shipped", "finetuned"):
        folder = demo / "edits" / model / "heldout-000"
        folder.mkdir(parents=True)
        for d in ("santa", "angry"):
            (folder / f"{d}.png").write_bytes(tile)
            (folder / f"{d}_mask.png").write_bytes(tile)
        (folder / "edit.json").write_text(
            json.dumps({"gender": "man", "directions": {"santa": {}, "angry": {}}})
        )
    (demo / "inputs" / "heldout-000.png").write_bytes(tile)
    page = build(demo, ["shipped", "finetuned"])
    assert "<td>pairs</td><td>60 s</td>" in page and "<th>105 s</th>" in page
    assert "<th>Ours, shipped</th><td>n/a</td><td>0.7500</td>" in page  # SSIM NaN, then fidelity
    assert page.count("<polyline") == 2 and "step 14" in page
    assert page.count("<img") == 1 + 2 * 2 * 2  # the input, then 2 models x 2 directions x (edit, mask)
