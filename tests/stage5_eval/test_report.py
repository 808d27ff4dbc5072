"""evaluation/report.py: a method's row from per-item scores, by hand; the markdown table."""

import numpy as np
import pytest

from portrait_edit.evaluation.report import markdown_table, summarise
from portrait_edit.metrics.image import fid_from_features


def test_row_means_skip_items_a_score_does_not_apply_to():
    values = {
        "ssim": np.array([0.5, 0.7, 0.9]),
        "mask_iou": np.array([np.nan, 0.2, np.nan]),
        "psnr": np.full(3, np.nan),
    }
    rng = np.random.default_rng(0)
    edits, targets = rng.normal(size=(6, 3)), rng.normal(1.0, 1.0, size=(6, 3))
    row = summarise(values, {"fid_clip": (edits, targets), "fid": (edits[:1], targets[:1])})
    assert row["ssim"] == pytest.approx(0.7) and row["mask_iou"] == pytest.approx(0.2)
    assert row["psnr"] is None  # applies to no item
    assert row["fid_clip"] == pytest.approx(fid_from_features(edits, targets))
    assert row["fid"] is None  # one item: no covariance


def test_markdown_table_orders_rows_and_names_what_is_unavailable():
    rows = {"SDEdit 0.5": {"ssim": 0.41, "mask_iou": None}, "Ours": {"ssim": 0.8123456, "mask_iou": 0.5}}
    table = markdown_table(rows, {"lpips": "no AlexNet weights"})
    lines = table.splitlines()
    assert (
        lines[0]
        == "| method | SSIM (higher is better) | LPIPS (lower is better) | mask IoU (higher is better) |"
    )
    assert (
        lines[2] == "| SDEdit 0.5 | 0.4100 | n/a | n/a |" and lines[3] == "| Ours | 0.8123 | n/a | 0.5000 |"
    )
    assert lines[-1] == "- LPIPS: unavailable: no AlexNet weights"


def test_a_frechet_distance_from_few_items_carries_its_caveat():
    from portrait_edit.evaluation.report import frechet_caveats

    caveats = frechet_caveats(8, {"fid_clip": 768, "fid": 2048})
    assert set(caveats) == {"fid_clip", "fid"} and "from 8 items, fewer than its 768" in caveats["fid_clip"]
    assert frechet_caveats(5000, {"fid_clip": 768}) == {}
    table = markdown_table({"Ours": {"ssim": 0.9, "fid_clip": 12.0}}, {}, caveats=caveats)
    assert "- FID (CLIP features): caveat: from 8 items" in table
    assert "FID: caveat" not in table  # a column the table does not show gets no note
