"""Deterministic sharded generation jobs: which global sample indices each rank produces, and in what order.

House rule 10: every seed and key comes from the GLOBAL sample index, never from the rank, so one rank or
N ranks (and any rerun) write the same pairs. The layout:

- the `num_samples` indices are cut into fixed shards of `shard_size` consecutive indices: shard k holds
  [k * S, min((k + 1) * S, N));
- shards are dealt to ranks round-robin (rank r takes shards r, r + W, r + 2W, ...);
- a rank walks its shards in order, indices in order, in batches of at most `batch_size` that never cross
  a shard boundary (so the writer can close a shard the moment its last batch arrives);
- a shard whose final `{prefix}-*-{k:06d}.tar` already exists in the output directory is skipped, so a
  rerun with any world size does only the missing work.

Use with `trainer.predict(model, datamodule=..., return_predictions=False)` and the `ShardWriter`
callback: Lightning would otherwise keep every generated image in memory until the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from portrait_edit.data.shard_writer import ShardWriter, completed_shards

log = logging.getLogger(__name__)

Job = dict[str, Any]


def sample_seed(base_seed: int, index: int) -> int:
    """A stable 63-bit seed for one global sample index (same on every machine, rank and Python run).

    Uses numpy's SeedSequence hashing rather than Python's `hash()`, which is salted per process.

    Args:
        base_seed: the run's seed (non-negative).
        index: the global sample index (non-negative).
    """
    if base_seed < 0 or index < 0:
        raise ValueError(f"sample_seed needs non-negative base_seed and index, got {base_seed}, {index}")
    lo, hi = np.random.SeedSequence([base_seed, index]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def sample_key(index: int) -> str:
    """The WebDataset `__key__` of a global sample index: zero-padded digits, never a dot."""
    return f"{index:09d}"


def _no_extra_fields(index: int) -> Job:
    return {}


class ShardedJobs(IterableDataset):
    """Yields one rank's batches of job dicts (see module docstring for the layout).

    Each job dict holds `index` (global), `key`, `shard`, `shard_len` (samples expected in that shard) and
    whatever `make_job(index)` adds (seeds, prompts, ...).
    """

    def __init__(
        self,
        num_samples: int,
        shard_size: int,
        batch_size: int,
        output_dir: str,
        prefix: str = "pairs",
        make_job: Callable[[int], Job] = _no_extra_fields,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """
        Args:
            num_samples: total number of samples over all ranks.
            shard_size: samples per shard (the last shard may be shorter).
            batch_size: most jobs per batch; batches never cross a shard boundary.
            output_dir: directory of finished shards; shards complete there are skipped.
            prefix: shard file prefix, `{prefix}-{rank:03d}-{shard:06d}.tar`.
            make_job: extra fields for one global index; a module-level function or functools.partial
                so the dataset stays picklable.
            rank: this process's global rank.
            world_size: number of ranks sharing the work.
        """
        super().__init__()
        for name, value in (
            ("num_samples", num_samples),
            ("shard_size", shard_size),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if "." in prefix or "/" in prefix:
            raise ValueError(f"prefix {prefix!r} must not contain '.' or '/'")
        self.num_samples = num_samples
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.output_dir = output_dir
        self.prefix = prefix
        self.make_job = make_job
        self.set_rank(rank, world_size)

    def set_rank(self, rank: int, world_size: int) -> None:
        """Select which rank's share of the shards this dataset yields."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank = rank
        self.world_size = world_size

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def shard_range(self, shard: int) -> range:
        """Global indices of one shard."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))

    def pending_shards(self) -> list[int]:
        """This rank's shards, in order, without those already complete in output_dir."""
        done = completed_shards(self.output_dir, self.prefix)
        mine = range(self.rank, self.num_shards, self.world_size)
        return [k for k in mine if k not in done]

    def __len__(self) -> int:
        """Batches this rank will yield (so progress bars show a total)."""
        return sum(-(-len(self.shard_range(k)) // self.batch_size) for k in self.pending_shards())

    def __iter__(self) -> Iterator[list[Job]]:
        pending = self.pending_shards()
        for shard in pending:
            indices = self.shard_range(shard)
            for start in range(0, len(indices), self.batch_size):
                yield [self._job(i, shard, len(indices)) for i in indices[start : start + self.batch_size]]

    def _job(self, index: int, shard: int, shard_len: int) -> Job:
        extra = self.make_job(index)
        reserved = {"index", "key", "shard", "shard_len"} & set(extra)
        assert not reserved, f"make_job must not set {sorted(reserved)}"
        return {"index": index, "key": sample_key(index), "shard": shard, "shard_len": shard_len, **extra}


class JobsDataModule(LightningDataModule):
    """Base datamodule for generation runs: builds this rank's `ShardedJobs` for `trainer.predict`.

    Subclasses override `make_job(index)` (calling super() keeps the per-sample `seed`). Run with
    `trainer.predict(model, datamodule=dm, return_predictions=False)` and a `ShardWriter` callback.
    """

    def __init__(
        self,
        num_samples: int,
        shard_size: int = 100,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        """
        Args:
            num_samples: total number of samples to generate over all ranks.
            shard_size: samples per shard; fixed for the lifetime of an output directory.
            batch_size: samples generated per predict_step.
            seed: base seed; each sample's seed is sample_seed(seed, global index).

        The output directory and shard prefix are the ShardWriter callback's (one place to set them).
        """
        super().__init__()
        self.save_hyperparameters()  # with a subclass's arguments: what ShardWriter records of the jobs
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.num_samples = num_samples
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.seed = seed

    def make_job(self, index: int) -> Job:
        """Per-sample fields beyond index/key/shard; the base gives the sample's seed."""
        return {"seed": sample_seed(self.seed, index)}

    def jobs(self, rank: int, world_size: int, output_dir: str, prefix: str = "pairs") -> ShardedJobs:
        """The ShardedJobs of one rank (used by predict_dataloader; handy for tools and tests)."""
        return ShardedJobs(
            num_samples=self.num_samples,
            shard_size=self.shard_size,
            batch_size=self.batch_size,
            output_dir=output_dir,
            prefix=prefix,
            make_job=self.make_job,
            rank=rank,
            world_size=world_size,
        )

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        writers = [cb for cb in trainer.callbacks if isinstance(cb, ShardWriter)] if trainer else []
        if len(writers) != 1:
            raise ValueError(
                f"{type(self).__name__} writes shards: add exactly one "
                "portrait_edit.data.shard_writer.ShardWriter to trainer.callbacks (it names the output "
                f"directory); found {len(writers)}."
            )
        jobs = self.jobs(trainer.global_rank, trainer.world_size, writers[0].output_dir, writers[0].prefix)
        mine = len(range(jobs.rank, jobs.num_shards, jobs.world_size))
        pending = len(jobs.pending_shards())
        log.info(
            "rank %d: %d of its %d shard(s) to write into %s (%d already complete)",
            jobs.rank,
            pending,
            mine,
            jobs.output_dir,
            mine - pending,
        )
        # batch_size=None: the dataset already yields whole batches (lists of job dicts). num_workers=0:
        # job dicts are cheap, the model is the bottleneck.
        return DataLoader(jobs, batch_size=None, num_workers=0)
