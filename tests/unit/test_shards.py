"""Sharded generation -> ShardWriter -> reader, with real Lightning and real tars (no mocks)."""

import io
import json
import logging
import os
import re
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, DistributedSampler

from portrait_edit.atomic import file_sha256
from portrait_edit.data.error_handler import CountingErrorHandler
from portrait_edit.data.jobs import JobsDataModule, ShardedJobs, sample_seed
from portrait_edit.data.shard_reader import (
    PairShardsDataModule,
    PairShardsMapDataset,
    SampleCountLogger,
    TrainStream,
    batches_per_worker,
    iter_samples,
    resolve_shards,
)
from portrait_edit.data.shard_writer import ShardWriter

N, SHARD, BATCH = 22, 5, 2  # 5 shards (5, 5, 5, 5, 2); batches of 2, 2, 1 per full shard
ALL_KEYS = [f"{i:09d}" for i in range(N)]
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


class TinyJobs(JobsDataModule):
    def make_job(self, index: int) -> dict:
        return {**super().make_job(index), "direction": ("smile", "frown")[index % 2]}


class TinyPairSystem(LightningModule):
    """predict_step: job dicts -> pair samples with seeded random pixels; can crash after K samples."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.produced = 0

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        samples = []
        for job in batch:
            if self.fail_after is not None and self.produced >= self.fail_after:
                raise RuntimeError("simulated crash mid-shard")
            rng = np.random.default_rng(int(job["seed"]))
            samples.append(
                {
                    "__key__": job["key"],
                    "__index__": job["index"],
                    "__shard__": job["shard"],
                    "__shard_len__": job["shard_len"],
                    "src.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                    "tgt.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                    "edit_mask.png": (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255,
                    "json": {
                        "direction": job["direction"],
                        "seed": int(job["seed"]),
                        "index": int(job["index"]),
                    },
                }
            )
            self.produced += 1
        return samples


def _jobs_dm(out) -> TinyJobs:
    return TinyJobs(num_samples=N, shard_size=SHARD, batch_size=BATCH, seed=3)


def run_rank(out, rank: int, world_size: int, fail_after: int | None = None) -> None:
    """One rank of a generation run in-process: the rank's real jobs loader, predict_step, writer hooks."""
    dm, writer, model = _jobs_dm(out), ShardWriter(str(out)), TinyPairSystem(fail_after)
    trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    loader = DataLoader(dm.jobs(rank, world_size, str(out)), batch_size=None, num_workers=0)
    writer.on_predict_start(trainer, model)
    try:
        for batch_idx, batch in enumerate(loader):
            prediction = model.predict_step(batch, batch_idx)
            writer.write_on_batch_end(trainer, model, prediction, None, batch, batch_idx, 0)
    except RuntimeError as exc:
        writer.on_exception(trainer, model, exc)
        raise
    writer.on_predict_end(trainer, model)


def run_trainer(out, fail_after: int | None = None, **trainer_kw) -> None:
    trainer = Trainer(callbacks=[ShardWriter(str(out))], default_root_dir=str(out), **QUIET, **trainer_kw)
    trainer.predict(TinyPairSystem(fail_after), datamodule=_jobs_dm(out), return_predictions=False)


def members_by_key(out) -> dict[str, dict[str, bytes]]:
    result: dict[str, dict[str, bytes]] = {}
    for url in resolve_shards(str(out)):
        for sample in iter_samples([url]):
            assert sample["__key__"] not in result, f"duplicate key {sample['__key__']}"
            result[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    return result


def check_complete_set(out) -> dict[int, dict]:
    """Every key exactly once, no temporary files, sidecars and manifests agree with the tars."""
    names = sorted(os.listdir(out))
    assert not [n for n in names if ".tmp" in n], names
    tars = [n for n in names if n.endswith(".tar")]
    shards = sorted(int(re.match(r"pairs-\d{3}-(\d{6})\.tar$", n).group(1)) for n in tars)
    assert shards == list(range(5)), tars
    assert sorted(members_by_key(out)) == ALL_KEYS
    sidecars = {}
    for name in tars:
        side = json.loads((out / name.replace(".tar", ".json")).read_text())
        keys = [s["__key__"] for s in iter_samples([str(out / name)])]
        assert side["keys"] == keys and side["count"] == len(keys)
        assert side["tar_sha256"] == file_sha256(out / name)
        sidecars[side["shard"]] = side
    manifest_shards = {}
    for name in names:
        if name.startswith("manifest-r"):
            for tar_name, entry in json.loads((out / name).read_text())["shards"].items():
                assert tar_name not in manifest_shards, f"{tar_name} in two manifests"
                manifest_shards[tar_name] = entry
    assert sorted(manifest_shards) == sorted(tars)
    for entry in manifest_shards.values():
        assert entry["keys"] == sidecars[entry["shard"]]["keys"]
        assert entry["tar_sha256"] == sidecars[entry["shard"]]["tar_sha256"]
    return sidecars


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A single-rank run through a real Trainer.predict."""
    out = tmp_path_factory.mktemp("ref")
    run_trainer(out, devices=1)
    return out


def test_jobs_layout_and_seeds(tmp_path):
    for world_size in (1, 2, 3):
        seen = []
        for rank in range(world_size):
            for batch in ShardedJobs(N, SHARD, BATCH, str(tmp_path), rank=rank, world_size=world_size):
                assert len({job["shard"] for job in batch}) == 1 and len(batch) <= BATCH
                assert all(job["shard"] % world_size == rank for job in batch)
                seen += [job["index"] for job in batch]
        assert sorted(seen) == list(range(N))
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(1, 5) != sample_seed(0, 6)
    assert sample_seed(0, 5) == 2981407451974053429  # stable across processes and machines
    assert 0 <= sample_seed(2**40, 10**9) < 2**63
    with pytest.raises(ValueError):
        ShardedJobs(N, SHARD, BATCH, str(tmp_path), rank=2, world_size=2)


def test_reference_run_is_complete(reference):
    sidecars = check_complete_set(reference)
    assert [s["count"] for s in sidecars.values()] == [5, 5, 5, 5, 2]
    sample = next(iter_samples(str(reference), decode=True))
    assert sample["src.png"].shape == (3, 16, 16) and sample["src.png"].min() >= -1
    assert sample["edit_mask.png"].shape == (1, 16, 16)
    assert set(sample["edit_mask.png"].unique().tolist()) <= {0.0, 1.0}
    assert sample["json"]["direction"] == "smile"


@pytest.mark.parametrize("rerun_world_size", [2, 3])
def test_two_ranks_interrupted_then_rerun_match_single_rank(tmp_path, reference, rerun_world_size):
    out = tmp_path / "pairs"
    run_rank(out, 0, 2)
    # Rank 1 owns shards 1 and 3; it writes shard 1 (5 samples) and 2 of shard 3, then crashes.
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_rank(out, 1, 2, fail_after=7)
    assert (out / "pairs-001-000003.tar.tmp").exists()
    assert not list(out.glob("*-000003.tar")) and (out / "pairs-001-000001.tar").exists()
    assert len(members_by_key(out)) == N - 5  # readers never see the unfinished shard

    # Rerun: complete shards are skipped; with 3 ranks shard 3 moves to rank 0 and the stale tmp goes.
    for rank in range(rerun_world_size):
        run_rank(out, rank, rerun_world_size)
    sidecars = check_complete_set(out)
    ref_sidecars = check_complete_set(reference)
    assert members_by_key(out) == members_by_key(reference)
    for shard, side in sidecars.items():
        assert side["tar_sha256"] == ref_sidecars[shard]["tar_sha256"]  # byte-identical tars
    owners = {int(n[6:9]) for n in os.listdir(out) if n.endswith("-000003.tar")}
    assert owners == ({1} if rerun_world_size == 2 else {0})


def test_writer_rejects_dotted_keys_and_mixed_shards(tmp_path):
    writer, trainer = ShardWriter(str(tmp_path)), SimpleNamespace(global_rank=0, world_size=1)
    writer.on_predict_start(trainer, None)
    meta = {"__index__": 0, "__shard__": 0, "__shard_len__": 2, "json": {}}
    with pytest.raises(ValueError, match=r"'img\.001'.*without '\.'"):
        writer.write_on_batch_end(trainer, None, [{"__key__": "img.001", **meta}], None, None, 0)
    writer.write_on_batch_end(trainer, None, [{"__key__": "000000000", **meta}], None, None, 0)
    with pytest.raises(RuntimeError, match="belongs to shard 1"):
        writer.write_sample({**meta, "__key__": "000000005", "__index__": 5, "__shard__": 1}, rank=0)
    with pytest.raises(RuntimeError, match="1 of 2 samples"):
        writer.on_predict_end(trainer, None)


def _train_loader(urls, rank, world_size, workers):
    num = batches_per_worker(N, world_size, workers, BATCH)
    stream = TrainStream(
        urls, rank=rank, world_size=world_size, batch_size=BATCH, num_batches=num, shuffle_buffer=8
    )
    return DataLoader(stream, batch_size=None, num_workers=workers)


def test_reader_two_ranks_two_workers_equal_batches(reference):
    urls = resolve_shards(str(reference))
    per_rank = []
    for rank in range(2):
        batches = list(_train_loader(urls, rank, 2, workers=2))
        assert all(b["src.png"].shape == (BATCH, 3, 16, 16) and len(b["__key__"]) == BATCH for b in batches)
        assert {b["__counts__"]["worker"] for b in batches} == {0, 1}
        assert sum(b["__counts__"]["seen"] for b in batches) >= len(batches) * BATCH
        per_rank.append(len(batches))
    assert per_rank == [2 * batches_per_worker(N, 2, 2, BATCH)] * 2  # 6 == 6: DDP cannot hang
    # Finite read as Lightning's DistributedSampler splits validation: every sample seen.
    dataset = PairShardsMapDataset(urls)
    keys = [dataset[i]["__key__"] for r in range(2) for i in DistributedSampler(dataset, 2, r, shuffle=False)]
    assert sorted(set(keys)) == ALL_KEYS


def _rewrite(url_in, url_out, corrupt):
    """Copy a tar, truncating the members whose names `corrupt` selects."""
    with tarfile.open(url_in) as src, tarfile.open(url_out, "w") as dst:
        for member in src:
            data = src.extractfile(member).read()
            if corrupt(member.name):
                data = data[: len(data) // 2]
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def test_truncated_png_is_skipped_and_counted(reference, tmp_path, caplog):
    for url in resolve_shards(str(reference)):
        _rewrite(url, tmp_path / os.path.basename(url), lambda name: name == "000000007.tgt.png")
    handler = CountingErrorHandler(max_error_rate=0.5)
    with caplog.at_level(logging.WARNING):
        keys = [s["__key__"] for s in iter_samples(str(tmp_path), decode=True, handler=handler)]
    assert sorted(keys) == [k for k in ALL_KEYS if k != "000000007"]
    assert (handler.seen, handler.skipped) == (N, 1)
    assert "000000007" in caplog.text and "tgt.png" in caplog.text
    # Through the training stream: the skipped sample travels with the batch it was read for.
    batches = list(_train_loader(resolve_shards(str(tmp_path)), 0, 1, workers=0))
    errors = [what for b in batches for what, _ in b["__counts__"]["errors"]]
    assert set(errors) <= {"key 000000007"} and sum(b["__counts__"]["skipped"] for b in batches) == len(
        errors
    )
    assert "000000007" not in {k for b in batches for k in b["__key__"]}


def test_error_rate_threshold_and_corrupt_tar(reference, tmp_path):
    for url in resolve_shards(str(reference)):
        _rewrite(url, tmp_path / os.path.basename(url), lambda name: int(name[:9]) % 3 == 0 and "src" in name)
    with pytest.raises(RuntimeError, match=r"of \d+ samples were skipped.*max_error_rate=5.0%"):
        list(iter_samples(str(tmp_path), decode=True, handler=CountingErrorHandler(max_error_rate=0.05)))
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "pairs-000-000000.tar").write_bytes(b"not a tar at all" * 100)
    good = resolve_shards(str(reference))
    handler = CountingErrorHandler(max_error_rate=0.5)
    keys = [s["__key__"] for s in iter_samples([str(bad / "pairs-000-000000.tar"), *good], handler=handler)]
    assert sorted(keys) == ALL_KEYS and handler.skipped == 1


class TinyTrainSystem(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        assert "__counts__" not in batch  # stripped by the datamodule before the model sees it
        return ((batch["tgt.png"] - batch["src.png"] * self.weight) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log(
            "val_loss", (batch["tgt.png"] - batch["src.png"]).abs().mean(), batch_size=len(batch["__key__"])
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_fit_reports_sample_counts(reference, tmp_path):
    dm = PairShardsDataModule(str(reference), val_shards=str(reference), batch_size=4, num_workers=0)
    callbacks = [SampleCountLogger()]
    kw = dict(devices=1, max_epochs=2, enable_checkpointing=False, num_sanity_val_steps=0, **QUIET)
    trainer = Trainer(callbacks=callbacks, default_root_dir=str(tmp_path), **kw)
    trainer.fit(TinyTrainSystem(), datamodule=dm)
    counts = dm.sample_counts()
    assert counts["val"] == {"seen": 2 * N, "skipped": 0}  # two validation epochs, every sample once each
    # 6 batches of 4 per epoch; seen also counts what sits in the shuffle buffer.
    assert counts["train"]["seen"] >= 2 * 6 * 4 and counts["train"]["skipped"] == 0
    assert trainer.callback_metrics["data/train_seen"] == counts["train"]["seen"]
    with pytest.raises(ValueError, match="no complete shards"):
        PairShardsDataModule(str(tmp_path / "nothing-*.tar")).setup("fit")


@pytest.mark.slow
def test_real_two_process_ddp_generation(tmp_path, reference):
    """Two real processes (ddp_spawn, gloo): every rank crashes after 7 samples (mid-shard), then a rerun."""
    out = tmp_path / "ddp"
    with pytest.raises(Exception, match="simulated crash"):
        run_trainer(out, fail_after=7, devices=2, strategy="ddp_spawn")
    assert list(out.glob("*.tar.tmp"))
    run_trainer(out, devices=2, strategy="ddp_spawn")
    check_complete_set(out)
    assert members_by_key(out) == members_by_key(reference)
    assert {n[:9] for n in os.listdir(out) if n.endswith(".tar")} == {"pairs-000", "pairs-001"}


def test_a_run_with_other_settings_is_refused_before_it_writes(tmp_path):
    out = tmp_path / "pairs"
    run_trainer(out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert json.loads((out / ".settings.json").read_text())["data"]["hparams"]["seed"] == 3

    def predict(dm: TinyJobs) -> None:
        trainer = Trainer(callbacks=[ShardWriter(str(out))], default_root_dir=str(tmp_path), **QUIET)
        trainer.predict(TinyPairSystem(), datamodule=dm, return_predictions=False)

    # another seed would make other samples: its run must not count the seed-3 shards as its own
    with pytest.raises(
        ValueError, match=r"pairs holds shards made with other settings .*differing: data\.seed"
    ):
        predict(TinyJobs(num_samples=N, shard_size=SHARD, batch_size=BATCH, seed=4))
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    # another batch size (or count of samples) makes the same samples: it resumes, with nothing left to do
    predict(TinyJobs(num_samples=N, shard_size=SHARD, batch_size=1, seed=3))
    assert len(members_by_key(out)) == N
