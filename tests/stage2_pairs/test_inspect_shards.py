"""The shard report (data/shard_report.py) and its tool, tools/inspect_shards.py, on shards written by the
real ShardWriter."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from run_tool import run_tool

from portrait_edit.data.jobs import ShardedJobs, sample_seed
from portrait_edit.data.shard_report import LABEL, TILE, inspect_shards
from portrait_edit.data.shard_writer import ShardWriter
from portrait_edit.images import encode_png


def _pixels(index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sample_seed(7, index))
    return {
        "src.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "tgt.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "gt.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "edit_mask.png": np.where(rng.random((16, 16)) > 0.5, 255, 0).astype(np.uint8),
    }


def _write(out: Path, num: int = 7) -> None:
    writer, trainer = ShardWriter(str(out)), SimpleNamespace(global_rank=0, world_size=1)
    writer.on_predict_start(trainer, None)
    for batch in ShardedJobs(num, 3, 2, str(out)):
        samples = [
            {
                "__key__": j["key"],
                "__index__": j["index"],
                "__shard__": j["shard"],
                "__shard_len__": j["shard_len"],
                "json": {"direction": "smile" if j["index"] < 5 else "frown"},
                **_pixels(j["index"]),
            }
            for j in batch
        ]
        writer.write_on_batch_end(trainer, None, samples, None, batch, 0)
    writer.on_predict_end(trainer, None)


def test_inspect_report_and_contact_sheet(tmp_path):
    out = tmp_path / "pairs"
    _write(out)
    report = inspect_shards(str(out), sheet=str(tmp_path / "sheet.png"), n=4)
    assert (report["shards"], report["samples"], report["skipped"]) == (3, 7, 0)
    assert (report["first_key"], report["last_key"]) == ("000000000", "000000006")
    assert report["duplicate_keys"] == [] and report["temporary_files"] == []
    assert report["directions"] == {"frown": 2, "smile": 5}
    src_sizes = [len(encode_png(_pixels(i)["src.png"])) for i in range(7)]
    assert report["field_bytes"]["src.png"] == {
        "mean": sum(src_sizes) / 7,
        "min": min(src_sizes),
        "max": max(src_sizes),
    }
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    tile, label = TILE, LABEL
    assert sheet.shape == (4 * (tile + label), 4 * tile, 3)  # 4 rows; src | tgt | gt | mask (no pose)
    # Row 1, column 0 is sample 1's src scaled 6x (nearest): its top-left block is src[0, 0].
    y0 = tile + label + label
    np.testing.assert_array_equal(
        sheet[y0 : y0 + 6, 0:6], np.broadcast_to(_pixels(1)["src.png"][0, 0], (6, 6, 3))
    )
    assert sheet[label + 1, 3 * tile + 1].tolist() in ([0, 0, 0], [255, 255, 255])  # mask column


def test_inspect_flags_duplicates_leftovers_and_cli(tmp_path):
    out = tmp_path / "pairs"
    _write(out)
    shutil.copy(out / "pairs-000-000000.tar", out / "pairs-001-000009.tar")  # same keys twice
    (out / "pairs-001-000002.tar.tmp").write_bytes(b"partial")
    report = inspect_shards(str(out))
    assert report["duplicate_keys"] == ["000000000", "000000001", "000000002"]
    assert [Path(p).name for p in report["temporary_files"]] == ["pairs-001-000002.tar.tmp"]
    assert report["sheet"] is None

    done = run_tool("inspect_shards", out / "pairs-000-*.tar", "--sheet", tmp_path / "s.png", "--n", 2)
    assert done.returncode == 0
    printed = done.stdout
    assert "3 shard(s), 7 sample(s)" in printed and f"wrote contact sheet to {tmp_path / 's.png'}" in printed
    assert Image.open(tmp_path / "s.png").size == (
        4 * TILE,
        2 * (TILE + LABEL),
    )
    missing = run_tool("inspect_shards", tmp_path / "missing")
    assert missing.returncode == 2 and "no complete shards" in missing.stderr
