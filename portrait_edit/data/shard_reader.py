"""Reading pair shards: `PairShardsDataModule` for training (resampled, equal batches per rank, exact
resume) and validation.

The pipeline pieces live in `shard_pipeline` and `train_stream` and are re-exported here
(`decode_sample`, `iter_samples`, `resolve_shards`, `TrainStream`, `PairShardsMapDataset`, ...).

Training batches come from a `TrainStream` (its order a pure function of seed, epoch, rank and worker);
the datamodule counts the batches training consumes and saves that position, with the sample counts, in
the checkpoint (`state_dict`), so a resumed run continues the stream where it stopped. Validation comes
from a map-style dataset so Lightning's DistributedSampler splits it across ranks. Every batch carries
the samples skipped while it was read; `on_before_batch_transfer` strips them, warns once per item and
sums them, so `sample_counts()` tells how many samples THIS rank's training and validation used and
skipped; `SampleCountLogger` logs them at the end of every epoch.

If the LightningModule overrides `on_before_batch_transfer` too, Lightning calls only the module's hook:
call `datamodule.record_counts(batch, split)` from it to keep the counts.

Trainer settings for the unsized training loader: use `max_steps` (or epochs: one epoch is
samples_per_epoch samples over all ranks), an integer `val_check_interval` and `limit_val_batches`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningDataModule
from torch.utils.data import DataLoader

from portrait_edit.data.error_handler import COUNTS_FIELD, CountingErrorHandler
from portrait_edit.data.sample_codec import decode_sample
from portrait_edit.data.shard_pipeline import (
    PairShardsMapDataset,
    batches_per_worker,
    collate_or_skip,
    collate_samples,
    iter_samples,
    resolve_shards,
    shard_sample_count,
)
from portrait_edit.data.train_stream import StreamLoader, TrainStream

log = logging.getLogger(__name__)

__all__ = [
    "CountingErrorHandler",
    "PairShardsDataModule",
    "PairShardsMapDataset",
    "SampleCountLogger",
    "batches_per_worker",
    "collate_samples",
    "decode_sample",
    "iter_samples",
    "TrainStream",
    "resolve_shards",
    "shard_sample_count",
]


class PairShardsDataModule(LightningDataModule):
    """Pair shards written by `ShardWriter` (DESIGN.md §4) as training and validation batches.

    A batch is a dict: `src.png`, `tgt.png`, ... float (B, 3, H, W) in [-1, 1]; `*_mask.png` (B, 1, H, W)
    in {0, 1}; `*.npy` stacked tensors; `json` and `__key__` lists.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        samples_per_epoch: int | None = None,
        max_error_rate: float = 0.05,
        seed: int = 0,
    ) -> None:
        """
        Args:
            train_shards: training shards: a directory, a glob or a brace pattern (only complete `*.tar`).
            val_shards: validation shards, same forms; None disables validation.
            batch_size: samples per batch on each rank.
            num_workers: DataLoader workers per rank (0 reads in the main process).
            shuffle_buffer: sample shuffle buffer per worker; 0 disables.
            samples_per_epoch: samples per epoch over all ranks; default: the count in the shard sidecars.
            max_error_rate: fail when more than this fraction of samples is corrupt (after 20 samples).
            seed: seeds the training stream (shard draws and shuffle buffers, per epoch, rank and worker).
        """
        super().__init__()
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 0:
            raise ValueError(
                f"need batch_size >= 1, num_workers >= 0, shuffle_buffer >= 0; got {batch_size}, "
                f"{num_workers}, {shuffle_buffer}"
            )
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.max_error_rate = max_error_rate
        self.seed = seed
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []
        self._counts = {split: {"seen": 0, "skipped": 0} for split in ("train", "val")}
        self._position = {"epoch": 0, "consumed": 0}  # training batches of that epoch already used
        self._started = False  # whether this process has started a training epoch of the stream
        self._epoch_batches = 0
        self._warned: set[str] = set()
        self._rate = CountingErrorHandler(max_error_rate=max_error_rate)  # judges the training counts

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_urls = resolve_shards(self.train_shards)
            if self.samples_per_epoch is None:
                self.samples_per_epoch = sum(shard_sample_count(u) for u in self.train_urls)
                if self.samples_per_epoch < 1:
                    raise ValueError(f"the shards of {self.train_shards!r} hold no samples; regenerate them")
        if stage in ("fit", "validate") and self.val_shards is not None:
            self.val_urls = resolve_shards(self.val_shards)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _handler(self) -> CountingErrorHandler:
        return CountingErrorHandler(max_error_rate=self.max_error_rate)

    def train_dataloader(self) -> DataLoader:
        if not self.train_urls:
            self.setup("fit")
        rank, world_size = self._rank()
        assert self.samples_per_epoch is not None
        num_batches = batches_per_worker(
            self.samples_per_epoch, world_size, self.num_workers, self.batch_size
        )
        stream = TrainStream(
            self.train_urls,
            rank=rank,
            world_size=world_size,
            batch_size=self.batch_size,
            num_batches=num_batches,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
        )
        log.info(
            "rank %d/%d: %d shard(s), %d batch(es) of %d per worker x %d worker(s) per epoch",
            rank,
            world_size,
            len(self.train_urls),
            num_batches,
            self.batch_size,
            max(1, self.num_workers),
        )
        self._epoch_batches = num_batches * max(1, self.num_workers)
        return StreamLoader(stream, self._next_epoch, self.num_workers)

    def _next_epoch(self) -> tuple[int, int]:
        """(epoch, batches of it already used) of the stream epoch now starting. The first one a process
        starts goes on from the saved position (a fresh run: epoch 0 from its start; a resumed one: where
        its checkpoint was saved, or the next epoch when that one was used up); every later one is the next
        epoch, from its start. The count is the stream's own: Lightning's epoch number is not used, as it
        can skip one when a run resumes at the last batch of an epoch."""
        position = self._position
        if self._started or position["consumed"] >= self._epoch_batches:
            position = {"epoch": position["epoch"] + 1, "consumed": 0}
        self._position, self._started = position, True
        return position["epoch"], position["consumed"]

    def val_dataloader(self) -> DataLoader | list:
        if self.val_shards is None:
            return []
        if not self.val_urls:
            self.val_urls = resolve_shards(self.val_shards)
        dataset = PairShardsMapDataset(self.val_urls, handler=self._handler())
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_or_skip,
            persistent_workers=self.num_workers > 0,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        split = "train" if trainer is not None and trainer.training else "val"
        return self.record_counts(batch, split)

    def record_counts(self, batch: Any, split: str) -> Any:
        """Strip a batch's `__counts__` stamp, warn once about each item it skipped, add it to this rank's
        totals (and, in training, to the stream position); returns the batch."""
        if not (isinstance(batch, dict) and COUNTS_FIELD in batch):
            return batch
        counts = batch.pop(COUNTS_FIELD)
        total = self._counts[split]
        total["seen"] += int(counts["seen"])
        total["skipped"] += int(counts["skipped"])
        for what, reason in counts.get("errors", []):
            if what not in self._warned:
                self._warned.add(what)
                log.warning(
                    "skipping corrupt data: %s (%d skipped of %d seen)",
                    reason,
                    total["skipped"],
                    total["seen"],
                )
        if split == "train":
            self._position["consumed"] += 1
            self._rate.seen, self._rate.skipped = total["seen"], total["skipped"]
            self._rate.check()
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position and the sample counts (saved in every checkpoint)."""
        return {"position": dict(self._position), "counts": {k: dict(v) for k, v in self._counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "position" in state:  # checkpoints written before the stream was resumable start it afresh
            self._position = dict(state["position"])
            self._counts = {k: dict(v) for k, v in state["counts"].items()}

    def sample_counts(self) -> dict[str, dict[str, int]]:
        """Samples this rank's readers have seen and skipped so far, per split (`train`, `val`)."""
        return {split: dict(c) for split, c in self._counts.items()}


class SampleCountLogger(Callback):
    """Logs each rank's seen/skipped sample counts (from `datamodule.sample_counts()`) at epoch end.

    Every rank logs its own line; the metrics `data/<split>_seen` and `data/<split>_skipped` are summed
    over ranks (the all-reduce runs on every rank, never inside a rank-conditional branch).
    """

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    @staticmethod
    def _report(trainer: Any, pl_module: Any, split: str) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, PairShardsDataModule):
            return
        counts = datamodule.sample_counts()[split]
        log.info(
            "rank %d %s: %d samples seen, %d skipped so far",
            trainer.global_rank,
            split,
            counts["seen"],
            counts["skipped"],
        )
        for name, value in counts.items():
            pl_module.log(f"data/{split}_{name}", float(value), sync_dist=True, reduce_fx="sum")
