"""The training stream of pair shards: an order that is a pure function of (seed, epoch, rank, worker),
and a position that a resumed run skips to.

Each DataLoader worker of each rank draws shards with replacement (resampling, as open_clip trains:
any shard count works with any number of ranks and workers) from its own generator, seeded by
(seed, epoch, rank, worker); it reads the samples of each shard in tar order, shuffles them as raw bytes
in a buffer of `shuffle_buffer`, decodes, and batches, yielding exactly `num_batches` full batches an
epoch, so every rank takes the same number of steps and DDP never waits on a short rank.

The DataLoader hands out the workers' batches in turn (batch k of an epoch from stream worker k mod W).
A run that consumed k batches of an epoch and resumes asks each worker to skip its share of those k: the
worker regenerates them (same reads, same draws) without yielding them, and the workers' turns are
rotated so that batch k comes first, so step k + 1 trains on exactly the batch it would have.
`StreamLoader` reads the position (epoch, consumed) when an epoch's iteration starts;
`PairShardsDataModule` keeps it and saves it in the checkpoint.

Corrupt data never reaches a batch: each batch carries the samples skipped while it was assembled
(`__counts__`: worker, seen, skipped, errors), and the main process warns about and counts them when
the batch is used for training, so a prefetched batch that training never takes is neither warned
about nor counted, and a regenerated one is not counted twice.
"""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from portrait_edit.data.error_handler import COUNTS_FIELD, DATA_ERRORS
from portrait_edit.data.sample_codec import REQUIRED_FIELDS, SampleError, decode_sample
from portrait_edit.data.shard_pipeline import collate_samples, split_member

STREAM_DOMAIN = 0x5EED_DA7A  # keeps these generators apart from every other seeded stream of the project


def worker_share(consumed: int, worker: int, workers: int) -> int:
    """How many of the first `consumed` batches of an epoch came from `worker` (of `workers`, in turn)."""
    return len(range(worker, consumed, max(1, workers)))


def stream_generator(seed: int, epoch: int, rank: int, worker: int) -> np.random.Generator:
    """The generator of one worker's stream in one epoch: shard draws and the shuffle buffer."""
    return np.random.default_rng([STREAM_DOMAIN, seed, epoch, rank, worker])


class _Errors:
    """The samples skipped while the current batch is assembled: (what, reason) pairs and a seen count."""

    def __init__(self) -> None:
        self.seen, self.errors = 0, []

    def skip(self, what: str, exc: BaseException) -> None:
        """Record one skipped item (a sample, or a shard that cannot be read); other errors are bugs."""
        if not isinstance(exc, DATA_ERRORS):
            raise exc
        self.seen += 1
        self.errors.append((what, str(exc)))

    def take(self, worker: int, batch_size: int) -> dict[str, Any]:
        counts = {
            "worker": worker,
            "seen": self.seen + batch_size,
            "skipped": len(self.errors),
            "errors": self.errors,
        }
        self.seen, self.errors = 0, []
        return counts


def shard_samples(url: str, errors: _Errors) -> Iterator[dict[str, Any]]:
    """Raw samples ({"__key__", "__url__", field: bytes}) of one tar in member order; a tar that cannot be
    read (from where it breaks) is one skipped item."""
    sample: dict[str, Any] = {}
    try:
        with tarfile.open(url, "r|") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, field = split_member(member.name)
                if not field:
                    continue
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample.setdefault("__key__", key)
                sample["__url__"] = url
                sample[field] = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as exc:
        errors.skip(f"shard {url}", exc)
        return  # a half-read sample of a broken tar is dropped with it
    if sample:
        yield sample


class TrainStream(IterableDataset):
    """Training batches of pair shards (module docstring).

    Args:
        urls: shard files.
        rank, world_size: this process's global rank and the number of ranks.
        batch_size: samples per batch (full batches only).
        num_batches: batches per worker per epoch (`shard_pipeline.batches_per_worker`).
        shuffle_buffer: raw samples in each worker's shuffle buffer; 0 keeps the tar order.
        seed: the stream's seed.
        required: fields every sample must have.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        num_batches: int,
        shuffle_buffer: int = 256,
        seed: int = 0,
        required: tuple[str, ...] = REQUIRED_FIELDS,
    ) -> None:
        if not urls:
            raise ValueError("the training stream needs at least one shard")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.batch_size, self.num_batches, self.shuffle_buffer = batch_size, num_batches, shuffle_buffer
        self.seed, self.required = seed, required
        self.epoch, self.consumed = 0, 0  # set by StreamLoader before each epoch's workers start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader asks its worker 0 first: after k consumed batches, batch k is the next one, and
        # it belongs to stream worker k mod W, so DataLoader worker i plays stream worker (i + k) mod W.
        worker = (loader_worker + self.consumed) % workers
        rng = stream_generator(self.seed, self.epoch, self.rank, worker)
        errors = _Errors()
        decoded = self._decoded(self._shuffled(self._raw(rng, errors), rng), errors)
        skip = worker_share(self.consumed, worker, workers)
        for index in range(self.num_batches):
            samples = [next(decoded) for _ in range(self.batch_size)]
            counts = errors.take(worker, self.batch_size)
            if index < skip:
                continue  # consumed before the interruption: regenerated, not yielded, not counted again
            batch = collate_samples(samples)
            batch[COUNTS_FIELD] = counts
            yield batch

    def _raw(self, rng: np.random.Generator, errors: _Errors) -> Iterator[dict[str, Any]]:
        empty_draws = 0
        while True:
            produced = False
            for sample in shard_samples(self.urls[int(rng.integers(len(self.urls)))], errors):
                produced = True
                yield sample
            empty_draws = 0 if produced else empty_draws + 1
            if empty_draws > 10 * len(self.urls):
                raise RuntimeError(
                    f"none of the {len(self.urls)} training shards yields a sample; regenerate them"
                )

    def _shuffled(
        self, samples: Iterator[dict[str, Any]], rng: np.random.Generator
    ) -> Iterator[dict[str, Any]]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                k = int(rng.integers(len(buffer)))
                buffer[k], buffer[-1] = buffer[-1], buffer[k]
                yield buffer.pop()

    def _decoded(self, samples: Iterator[dict[str, Any]], errors: _Errors) -> Iterator[dict[str, Any]]:
        decode = functools.partial(decode_sample, required=self.required)
        for sample in samples:
            try:
                yield decode(sample)
            except SampleError as exc:
                errors.skip(f"key {exc.key}", exc)


class StreamLoader(DataLoader):
    """A DataLoader of a `TrainStream` that sets the stream's position, `position()` -> (epoch, batches of
    that epoch already consumed), each time an epoch's iteration starts (before its workers copy the
    stream). Workers are not persistent: each epoch's start their stream anew."""

    def __init__(
        self, stream: TrainStream, position: Callable[[], tuple[int, int]], num_workers: int
    ) -> None:
        super().__init__(stream, batch_size=None, num_workers=num_workers)
        self.position = position

    def __iter__(self):
        self.dataset.epoch, self.dataset.consumed = self.position()
        return super().__iter__()
