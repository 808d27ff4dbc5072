"""The pair filter (data/pair_filter.py) and its tool on shards written by the real ShardWriter: the
per-direction selection against hand-computed ranks, byte-identical copies, corrupt samples, merging,
refusal and resume."""

import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from run_tool import run_tool

from portrait_edit.data import pair_filter as tool
from portrait_edit.data.jobs import ShardedJobs, sample_seed
from portrait_edit.data.shard_pipeline import PairShardsMapDataset, resolve_shards
from portrait_edit.data.shard_writer import ShardWriter

# Direction "a": identity and halves' agreement fall together, so both criteria keep the first three.
# Direction "b": they disagree. Identity ranks (0 = best): i0 0, i2 1, i3 2, i1 3; SSIM ranks (noise
# 0 < 10 < 20 < 40): i1 0, i2 1, i3 2, i0 3. Sums: i0 3, i1 3, i2 2, i3 4 -> keep 2 = {i2, i0} (the tie
# i0/i1 goes to the earlier one); by SSIM alone {i1, i2}; by identity alone {i0, i2}.
PAIRS = [("a", 0.9, 0), ("a", 0.8, 10), ("a", 0.7, 20), ("a", 0.6, 30), ("a", 0.5, 40), ("a", 0.4, 50)]
PAIRS += [("b", 0.9, 40), ("b", 0.1, 0), ("b", 0.6, 10), ("b", 0.5, 20)]
KEPT = {0, 1, 2, 8, 6}
KEPT_BY = {("ssim",): {0, 1, 2, 7, 8}, ("identity",): {0, 1, 2, 6, 8}}


def _pixels(index: int, noise: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sample_seed(3, index))
    src = rng.integers(60, 196, (16, 16, 3)).astype(np.int64)
    tgt = np.clip(src + rng.choice([-1, 1], src.shape) * noise, 0, 255)
    return {"src.png": src.astype(np.uint8), "tgt.png": tgt.astype(np.uint8)}


def _write(out: Path, pairs=PAIRS, shard_size: int = 4, corrupt: int | None = None, marks=None) -> None:
    """`marks`: {index: (left label, right label)}, written in the halves' top-left red value (10 x label)
    for the reader of `_Reader`."""
    writer, trainer = ShardWriter(str(out)), SimpleNamespace(global_rank=0, world_size=1)
    writer.on_predict_start(trainer, None)
    for batch in ShardedJobs(len(pairs), shard_size, 2, str(out)):
        samples = []
        for j in batch:
            direction, identity, noise = pairs[j["index"]]
            sample = {
                "__key__": j["key"], "__index__": j["index"], "__shard__": j["shard"],
                "__shard_len__": j["shard_len"], "json": {"direction": direction, "identity_similarity": identity},
                "src.latent.npy": np.full(2, j["index"], dtype=np.float16), **_pixels(j["index"], noise),
            }  # fmt: skip
            for half, label in zip(("src.png", "tgt.png"), (marks or {}).get(j["index"], ()), strict=False):
                sample[half][0, 0, 0] = 10 * label
            if j["index"] == corrupt:
                sample["src.png"] = b"not a png"
            samples.append(sample)
        writer.write_on_batch_end(trainer, None, samples, None, batch, 0)
    writer.on_predict_end(trainer, None)


def _members(folder: Path) -> dict[str, dict[str, bytes]]:
    """{key: {field: bytes}} of every complete shard in the folder, read with tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    for url in sorted(folder.glob("*.tar")):
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                key, field = member.name.split(".", 1)
                samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def _kept_sources(record: dict) -> set[int]:
    return {int(origin.rsplit(":", 1)[1]) for origin in record["origin"].values()}


def test_keeps_the_hand_ranked_pairs_byte_for_byte(tmp_path):
    _write(tmp_path / "pairs")
    record = tool.filter_pairs([str(tmp_path / "pairs")], str(tmp_path / "out"), keep=0.5)
    assert _kept_sources(record) == KEPT
    assert (record["pairs"], record["kept"], record["unreadable"]) == (10, 5, 0)
    a = record["directions"]["a"]
    assert (a["pairs"], a["kept"]) == (6, 3) and a["identity"] == [0.65, 0.8]
    assert a["ssim"][1] > a["ssim"][0]

    # The output reads as pair shards: the kept samples, new keys in order, every member unchanged.
    source, out = _members(tmp_path / "pairs"), _members(tmp_path / "out")
    assert list(out) == sorted(record["origin"])
    assert all(out[key] == source[origin.rsplit(":", 1)[1]] for key, origin in record["origin"].items())
    decoded = PairShardsMapDataset(resolve_shards(str(tmp_path / "out")))
    assert len(decoded) == 5 and all(decoded[i] is not None for i in range(5))
    manifest = json.loads((tmp_path / "out" / "manifest-r000.json").read_text())
    assert (manifest["num_samples"], manifest["num_filtered"], manifest["num_shards"]) == (5, 5, 3)
    side = json.loads((tmp_path / "out" / "pairs-000-000001.json").read_text())
    assert side["count"] + len(side["filtered"]) == 4
    assert set(side["filtered"].values()) == {"not in the top 0.5 of its direction"}


class _Reader:
    """A direction classifier reading the label 10 x label written in an image's top-left red value."""

    def __init__(self, labels=("source", "a", "b")) -> None:
        self.config = SimpleNamespace(labels=list(labels))

    def eval(self):
        return self

    def predict_directions(self, images: torch.Tensor) -> torch.Tensor:
        return torch.round((images[:, 0, 0, 0] + 1) * 127.5 / 10).long()


def test_classifier_drops_pairs_that_do_not_show_their_edit_before_ranking(tmp_path, monkeypatch):
    # Every pair reads (source, its direction) but pair 1 (right half read as the source) and pair 7 (left
    # half read as "a"). By identity among the rest: "a" {0, 2, 3, 4, 5} keeps 3 -> {0, 2, 3}, "b" {6, 8, 9}
    # keeps 2 -> {6, 8}; without the classifier pair 1 would be kept (KEPT_BY).
    marks = {i: (0, 1 if direction == "a" else 2) for i, (direction, _, _) in enumerate(PAIRS)}
    marks.update({1: (0, 0), 7: (1, 2)})
    _write(tmp_path / "pairs", marks=marks)
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "config.json").write_text("{}")
    monkeypatch.setattr(tool.DirectionClassifier, "from_pretrained", lambda path: _Reader())
    record = tool.filter_pairs(
        [str(tmp_path / "pairs")],
        str(tmp_path / "out"),
        keep=0.5,
        by=("identity",),
        classifier=str(tmp_path / "clf"),
    )
    assert _kept_sources(record) == {0, 2, 3, 6, 8}
    assert record["directions"]["a"]["shows_edit"] == 5 and record["directions"]["b"]["shows_edit"] == 3
    assert record["settings"]["classifier"] == str(tmp_path / "clf")
    side = json.loads((tmp_path / "out" / "pairs-000-000000.json").read_text())
    assert side["filtered"]["000000001"] == "the direction classifier does not read it as its edit"
    side = json.loads((tmp_path / "out" / "pairs-000-000001.json").read_text())
    assert side["filtered"]["000000005"] == "not in the top 0.5 of its direction"

    monkeypatch.setattr(tool.DirectionClassifier, "from_pretrained", lambda path: _Reader(("source", "a")))
    with pytest.raises(ValueError, match="knows no direction b"):
        tool.filter_pairs(
            [str(tmp_path / "pairs")], str(tmp_path / "other"), classifier=str(tmp_path / "clf")
        )
    with pytest.raises(ValueError, match="holds no direction classifier"):
        tool.filter_pairs([str(tmp_path / "pairs")], str(tmp_path / "other2"), classifier=str(tmp_path))
    assert not (tmp_path / "other2").exists()


@pytest.mark.parametrize("by", [("ssim",), ("identity",)])
def test_one_criterion(tmp_path, by):
    _write(tmp_path / "pairs")
    record = tool.filter_pairs([str(tmp_path / "pairs")], str(tmp_path / "out"), keep=0.5, by=by)
    assert _kept_sources(record) == KEPT_BY[by]


def test_corrupt_sample_is_dropped_and_counted(tmp_path):
    _write(tmp_path / "pairs", corrupt=2)
    record = tool.filter_pairs([str(tmp_path / "pairs")], str(tmp_path / "out"), keep=0.5)
    assert record["unreadable"] == 1 and record["directions"]["a"]["pairs"] == 5
    assert 2 not in _kept_sources(record) and _kept_sources(record) == {0, 1, 3, 6, 8}
    side = json.loads((tmp_path / "out" / "pairs-000-000000.json").read_text())
    assert side["filtered"]["000000002"].startswith("unreadable: ValueError: cannot decode image")


def test_merges_sources_refuses_other_settings_and_resumes(tmp_path):
    _write(tmp_path / "one")
    _write(tmp_path / "two", pairs=PAIRS[:6])
    out = tmp_path / "out"
    argv = [str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(out), "--keep", "0.5"]
    first = run_tool("filter_pairs", *argv)
    assert first.returncode == 0, first.stderr[-2000:]
    record = json.loads((out / "filter.json").read_text())
    # Direction "a" has 12 pairs now, two copies of each; a copy from "one" ranks just above its twin
    # from "two", so the top 6 are both copies of 0, 1, 2. Direction "b" (only in "one") keeps 6 and 8.
    origins = sorted(
        (Path(o.rsplit(":", 1)[0]).parent.name, o.rsplit(":", 1)[1]) for o in record["origin"].values()
    )
    assert [o for o in origins if o[0] == "two"] == [
        ("two", "000000000"),
        ("two", "000000001"),
        ("two", "000000002"),
    ]
    assert len(record["origin"]) == 6 + 2 and len(set(record["origin"])) == 8
    assert [f.name for f in sorted(out.glob("*.tar"))] == [f"pairs-000-{n:06d}.tar" for n in range(5)]
    assert "kept 8 of 16 pairs" in first.stdout

    other = run_tool("filter_pairs", *argv[:-1] + ["0.4"])
    assert other.returncode == 2 and "filtered with other settings" in other.stderr

    shard = out / "pairs-000-000003.tar"
    before = shard.read_bytes()
    os.remove(shard)
    os.remove(out / "pairs-000-000003.json")
    assert run_tool("filter_pairs", *argv).returncode == 0
    assert shard.read_bytes() == before and json.loads((out / "filter.json").read_text()) == record


def test_mismatched_cached_conditions_are_refused(tmp_path):
    _write(tmp_path / "one")
    _write(tmp_path / "two")
    (tmp_path / "one" / "conditions.json").write_text(json.dumps({"base": "mini"}))
    with pytest.raises(ValueError, match="cached conditions differ or are missing"):
        tool.filter_pairs([str(tmp_path / "one"), str(tmp_path / "two")], str(tmp_path / "out"))
