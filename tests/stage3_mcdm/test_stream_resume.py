"""The training stream resumes exactly: 20 straight steps equal 10 steps, a SIGKILL and a rerun to 20,
bitwise, with 8 shards and 2 workers, on one process and under 2-process gloo DDP; its order is a pure
function of (seed, epoch, rank, worker); corrupt samples are counted once, where training used them."""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from portrait_edit.data.shard_pipeline import write_shard_samples
from portrait_edit.data.shard_reader import PairShardsDataModule
from portrait_edit.data.train_stream import TrainStream, worker_share

SHARDS, PER_SHARD, SIZE = 8, 6, 8


def png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_shards(folder: Path, corrupt: tuple[str, ...] = ()) -> list[str]:
    """8 shards of 6 pairs (keys s<shard>k<i>); the keys in `corrupt` get a truncated tgt.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    urls = []
    for s in range(SHARDS):
        samples = {}
        for i in range(PER_SHARD):
            key = f"s{s}k{i}"
            target = png(rng)
            samples[key] = {"src.png": png(rng), "tgt.png": target[:20] if key in corrupt else target,
                            "json": json.dumps({"key": key}).encode()}  # fmt: skip
        url = str(folder / f"pairs-000-{s:06d}.tar")
        write_shard_samples(url, samples)
        (folder / f"pairs-000-{s:06d}.json").write_text(json.dumps({"count": PER_SHARD}))
        urls.append(url)
    return urls


def keys(loader) -> list[list[str]]:
    return [batch["__key__"] for batch in loader]


def stream(urls, **kw) -> TrainStream:
    settings = dict(rank=0, world_size=1, batch_size=2, num_batches=5, shuffle_buffer=4, seed=7)
    return TrainStream(urls, **{**settings, **kw})


def test_order_is_a_function_of_seed_epoch_rank_and_worker(tmp_path):
    urls = make_shards(tmp_path)
    order = keys(DataLoader(stream(urls), batch_size=None, num_workers=2))
    assert order == keys(DataLoader(stream(urls), batch_size=None, num_workers=2))  # run again: the same
    assert len(order) == 10 and all(len(b) == 2 for b in order)
    for change in (dict(seed=8), dict(rank=1, world_size=2)):
        assert keys(DataLoader(stream(urls, **change), batch_size=None, num_workers=2)) != order
    later = stream(urls)
    later.epoch = 1
    assert keys(DataLoader(later, batch_size=None, num_workers=2)) != order
    # Worker w yields batches w, w + 2, ...: one worker's stream alone is every other batch.
    assert keys(DataLoader(stream(urls), batch_size=None, num_workers=0)) == order[0::2]


def test_a_position_skips_exactly_the_consumed_batches(tmp_path):
    urls = make_shards(tmp_path)
    order = keys(DataLoader(stream(urls), batch_size=None, num_workers=2))
    for consumed in (0, 1, 4, 7, 10):
        resumed = stream(urls)
        resumed.consumed = consumed
        assert keys(DataLoader(resumed, batch_size=None, num_workers=2)) == order[consumed:]
    assert [worker_share(7, w, 2) for w in (0, 1)] == [4, 3]


def test_corrupt_samples_are_counted_once_where_training_used_them(tmp_path, caplog):
    urls = make_shards(tmp_path / "shards", corrupt=("s0k1", "s3k2", "s5k0"))
    data = PairShardsDataModule(str(tmp_path / "shards"), batch_size=2, num_workers=2, shuffle_buffer=4)
    data.setup("fit")
    loader = data.train_dataloader()
    used, skipped = [], set()
    with caplog.at_level(logging.WARNING):
        for k, batch in enumerate(loader):  # training takes 5 batches; the workers may read further ahead
            if k == 5:
                break
            skipped |= {what for what, _ in batch["__counts__"]["errors"]}
            used.append(data.record_counts(batch, "train"))
    warned = {r.getMessage().split("'")[1] for r in caplog.records if "skipping corrupt" in r.getMessage()}
    counts = data.sample_counts()["train"]
    assert counts["skipped"] == len(skipped) == len(warned) > 0  # every skip warned about once and counted
    assert counts["seen"] == 5 * 2 + counts["skipped"]
    assert {f"key {w}" for w in warned} == skipped
    assert all("__counts__" not in b for b in used)
    assert data.state_dict()["position"] == {"epoch": 0, "consumed": 5}
    assert len(urls) == SHARDS


RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer
    from safetensors.torch import save_file
    from portrait_edit.data.shard_reader import PairShardsDataModule

    shards, out, kill_at, devices = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class Tiny(LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(3, 3))

        def training_step(self, batch, batch_idx):
            with open(os.path.join(out, f"keys-r{self.global_rank}.txt"), "a") as f:
                f.write(f"{self.global_step} {' '.join(batch['__key__'])}\\n")
            x, y = batch["src.png"].mean(dim=(2, 3)), batch["tgt.png"].mean(dim=(2, 3))
            return ((x @ self.weight - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    class Kill(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                trainer.save_checkpoint(os.path.join(out, "checkpoints", "last.ckpt"))
                trainer.strategy.barrier()
                os.kill(os.getpid(), signal.SIGKILL)

    data = PairShardsDataModule(shards, batch_size=2, num_workers=2, shuffle_buffer=4, seed=3,
                                samples_per_epoch=24 * devices)  # 12 steps an epoch: 2 workers x 6 batches of 2
    trainer = Trainer(
        max_steps=20, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        callbacks=[Kill()] if kill_at else [], enable_checkpointing=False, deterministic=True,
    )
    last = os.path.join(out, "checkpoints", "last.ckpt")
    module = Tiny()
    trainer.fit(module, datamodule=data, ckpt_path=last if os.path.exists(last) else None)
    if trainer.global_rank == 0:
        save_file({"weight": module.weight.detach().contiguous()}, os.path.join(out, "final.safetensors"))
    """
)


def run_resume(tmp_path, devices: int, kill_at: int) -> None:
    make_shards(tmp_path / "shards")
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

    def run(out, kill):
        out.mkdir(exist_ok=True)
        return subprocess.run(
            [sys.executable, str(script), str(tmp_path / "shards"), str(out), str(kill), str(devices)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(straight, 0).returncode == 0
    killed = run(resumed, kill_at)
    assert killed.returncode != 0 and not (resumed / "final.safetensors").exists()  # really killed
    again = run(resumed, 0)
    assert again.returncode == 0, again.stderr[-3000:]
    for rank in range(devices):
        lines = (straight / f"keys-r{rank}.txt").read_text().splitlines()
        assert len(lines) == 20
        assert (
            resumed / f"keys-r{rank}.txt"
        ).read_text().splitlines() == lines  # the same batch at every step
    a, b = load_file(straight / "final.safetensors"), load_file(resumed / "final.safetensors")
    assert torch.equal(a["weight"], b["weight"])


@pytest.mark.parametrize("kill_at", [10, 12])  # mid-epoch, and at the last batch of the first epoch
def test_killed_and_rerun_training_sees_the_same_batches_and_ends_bitwise_equal(tmp_path, kill_at):
    run_resume(tmp_path, devices=1, kill_at=kill_at)


def test_the_same_under_two_process_gloo_ddp(tmp_path):
    run_resume(tmp_path, devices=2, kill_at=10)
