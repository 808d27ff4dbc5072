"""Pair-shard reading pieces: shard discovery, the training pipeline, finite iteration, a map-style dataset.

The training stream itself is `train_stream.TrainStream` (resampled shards, an order that is a pure
function of seed, epoch, rank and worker, exact resume); here: the finite readers (validation,
inspection, tools), `batches_per_worker` (equal batches on every worker and rank, so DDP never waits on a
short rank) and `collate_samples`. Corrupt data is skipped and counted by a `CountingErrorHandler`
passed to every stage.

The datamodule built from these pieces is `portrait_edit.data.shard_reader.PairShardsDataModule`, which
also re-exports them.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import math
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import Dataset

from portrait_edit.data.error_handler import COUNTS_FIELD, CountingErrorHandler
from portrait_edit.data.sample_codec import REQUIRED_FIELDS, decode_sample

log = logging.getLogger(__name__)


def resolve_shards(spec: str) -> list[str]:
    """Complete shard files named by a directory, a glob or a brace pattern, sorted.

    Only names ending in `.tar` are returned: temporary `.tar.tmp` files of unfinished shards are
    never read.

    Raises:
        ValueError: nothing matches (the message names the spec).
    """
    if os.path.isdir(spec):
        paths = glob.glob(os.path.join(spec, "*.tar"))
    else:
        paths = [p for pattern in braceexpand.braceexpand(spec) for p in glob.glob(pattern)]
    paths = sorted({p for p in paths if p.endswith(".tar") and os.path.isfile(p)})
    if not paths:
        raise ValueError(
            f"no complete shards (*.tar) match {spec!r}; pass a shard directory, a glob such as "
            "'out/pairs-*.tar' or a brace pattern, and check that generation has finished (the mini "
            "world's training pairs, data/mini/pairs: `make mini-pairs`)"
        )
    return paths


def shard_sample_count(url: str) -> int:
    """Samples in one shard: from the writer's sidecar `{name}.json` when present, else by listing the tar."""
    sidecar = url[: -len(".tar")] + ".json"
    if os.path.exists(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                return int(json.load(f)["count"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("unreadable sidecar %s (%s); counting the tar instead", sidecar, exc)
    try:
        with tarfile.open(url, "r:") as tar:
            return len({split_member(m.name)[0] for m in tar.getmembers() if m.isreg()})
    except (OSError, tarfile.TarError) as exc:
        log.warning("cannot list %s (%s); counted as 0 samples", url, exc)
        return 0


def split_member(name: str) -> tuple[str, str]:
    """WebDataset's key/field split: key = path up to the first dot of the basename."""
    head, base = os.path.split(name)
    key, _, field = base.partition(".")
    return os.path.join(head, key) if head else key, field


def read_shard_samples(url: str) -> dict[str, dict[str, bytes]]:
    """{key: {field: bytes}} of one shard, in member order (tools that rewrite or filter shards)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(url, "r:") as tar:
        for member in tar:
            key, field = split_member(member.name)
            if member.isreg() and field:
                samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def write_shard_samples(path: str, samples: dict[str, dict[str, bytes]]) -> None:
    """Write {key: {field: bytes}} as a shard at `path`, members sorted per sample, fixed mtime and mode (a
    reproducible tar), through a temporary name renamed into place (readers never see half a shard)."""
    tmp = f"{path}.write.tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, fields in samples.items():
            for field in sorted(fields):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(fields[field]), 0, 0o444
                tar.addfile(info, io.BytesIO(fields[field]))
    os.replace(tmp, path)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded samples -> one batch: tensors of equal shape stacked, everything else (keys, json) as lists.

    Only fields present in every sample are kept (optional fields must be all-or-nothing per batch).
    """
    fields = set(samples[0]).intersection(*samples[1:])
    batch: dict[str, Any] = {}
    for name in sorted(fields):
        values = [s[name] for s in samples]
        same_shape = all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
        batch[name] = torch.stack(values) if same_shape else values
    return batch


def batches_per_worker(samples_per_epoch: int, world_size: int, num_workers: int, batch_size: int) -> int:
    """ceil(samples / (world_size * max(1, workers) * batch_size)): equal on every worker and rank."""
    return max(1, math.ceil(samples_per_epoch / (world_size * max(1, num_workers) * batch_size)))


def iter_samples(
    urls: str | list[str],
    *,
    decode: bool = False,
    handler: CountingErrorHandler | None = None,
    required: tuple[str, ...] = REQUIRED_FIELDS,
) -> Iterator[dict[str, Any]]:
    """Every sample of a shard set once, in shard order then tar order (validation, inspection).

    Args:
        urls: shard files, or a spec for resolve_shards.
        decode: yield decoded samples (tensors) instead of raw member bytes.
        handler: counting error handler; None re-raises the first error (inspection wants to see it).
        required: fields every decoded sample must have.
    """
    urls = resolve_shards(urls) if isinstance(urls, str) else list(urls)
    read_handler = handler.on_read_error if handler is not None else wds.reraise_exception
    ds = wds.WebDataset(
        urls,
        shardshuffle=False,
        nodesplitter=None,
        workersplitter=None,
        handler=read_handler,
        empty_check=False,
    )
    if decode:
        stage_handler = handler if handler is not None else wds.reraise_exception
        if handler is not None:
            ds = ds.map(handler.count, handler=stage_handler)
        ds = ds.map(functools.partial(decode_sample, required=required), handler=stage_handler)
    yield from ds


class PairShardsMapDataset(Dataset):
    """Map-style view of a small shard set (validation): Lightning's DistributedSampler then applies.

    The tars are indexed once (member offsets, no pixel data in memory); `__getitem__` reads and decodes
    one sample, returning None for a corrupt one (counted by the handler; `collate_or_skip` drops it).
    """

    def __init__(
        self,
        urls: list[str],
        handler: CountingErrorHandler | None = None,
        required: tuple[str, ...] = REQUIRED_FIELDS,
    ) -> None:
        self.urls = list(urls)
        self.handler = handler or CountingErrorHandler()
        self.required = required
        self.index: list[tuple[str, str, dict[str, tuple[int, int]]]] = []
        for url in self.urls:
            self._index_tar(url)

    def _index_tar(self, url: str) -> None:
        entries: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(url, "r:") as tar:
                # Iterate (not getmembers) so a truncated tar keeps the samples before the damage.
                for member in tar:
                    key, field = split_member(member.name)
                    if member.isreg() and field:
                        entries.setdefault(key, {})[field] = (member.offset_data, member.size)
        except (OSError, tarfile.TarError) as exc:
            exc.args = (*exc.args, url)
            self.handler.on_read_error(exc)
        self.index.extend((url, key, members) for key, members in entries.items())

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        url, key, members = self.index[i]
        self.handler.count(None)
        raw: dict[str, Any] = {"__key__": key, "__url__": url}
        try:
            with open(url, "rb") as f:
                for field, (offset, size) in members.items():
                    f.seek(offset)
                    raw[field] = f.read(size)
            return decode_sample(raw, required=self.required)
        except (OSError, ValueError) as exc:
            self.handler(exc)
            return None


def collate_or_skip(samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Collate for PairShardsMapDataset: drop corrupt (None) samples and record how many were dropped."""
    good = [s for s in samples if s is not None]
    counts = {"worker": 0, "seen": len(samples), "skipped": len(samples) - len(good)}
    if not good:
        return None
    batch = collate_samples(good)
    batch[COUNTS_FIELD] = counts
    return batch
