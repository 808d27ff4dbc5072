"""`ShardWriter`: writes predict_step samples into WebDataset pair shards, atomically and reproducibly.

Files in `output_dir` (DESIGN.md §4), with `name = {prefix}-{rank:03d}-{shard:06d}` where rank is the
writing rank and shard the GLOBAL shard index from `ShardedJobs`:

1. `{name}.tar.tmp` receives the shard's samples as they arrive (a leftover from an interrupted run is
   simply overwritten on the rerun);
2. once the shard holds `__shard_len__` samples it is closed and `{name}.json` (the sidecar: keys,
   count, per-member size and sha256, tar sha256) is written atomically;
3. the tar is renamed to `{name}.tar` with os.replace: the final tar appears LAST and is the completion
   marker (`ShardedJobs` skips shards that have one; readers glob only `*.tar`);
4. at the end of predict (or on a crash) each rank rewrites `manifest-r{rank:03d}.json` atomically from
   the sidecars of all complete shards named with its rank.

`.settings.json` records what writes into the folder (the module's and the datamodule's class and
hyperparameters, less those that only change how many samples or how fast: `RUN_ONLY`). A run with other
settings is refused before it writes anything: resuming would count the complete shards of the other
settings as its own.

Tars are byte-reproducible: fixed mtime/owner/mode and members in sorted field order, so one rank or N
ranks, first run or rerun, write identical bytes for the same key. No collectives are used; each rank
only touches its own shards.

Callers must use `trainer.predict(model, datamodule=dm, return_predictions=False)`: with the default
`return_predictions=True` Lightning keeps every generated sample in memory until predict ends.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from portrait_edit.atomic import atomic_write_json, file_sha256
from portrait_edit.data.sample_codec import encode_sample

log = logging.getLogger(__name__)

SETTINGS_FILE = ".settings.json"
RUN_ONLY = frozenset({"num_samples", "batch_size", "num_workers", "local_files_only"})


def writer_settings(pl_module: Any, datamodule: Any) -> dict[str, Any]:
    """What makes the samples of a run: each part's class and hyperparameters (less RUN_ONLY and the
    CLI's own `_class_path` / `_instantiator`, so a CLI run and a Python run agree), as JSON."""

    def part(obj: Any) -> dict[str, Any] | None:
        if obj is None:
            return None
        hparams = {
            k: v
            for k, v in dict(getattr(obj, "hparams", {}) or {}).items()
            if k not in RUN_ONLY and not k.startswith("_")
        }
        kind = type(obj)
        return {"class": f"{kind.__module__}.{kind.__qualname__}", "hparams": hparams}

    return json.loads(
        json.dumps({"module": part(pl_module), "data": part(datamodule)}, sort_keys=True, default=str)
    )


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """`writer_settings` as {"module.class": ..., "module.<hparam>": ..., "data.<hparam>": ...}."""
    flat = {}
    for where, part in settings.items():
        part = part or {}
        flat[f"{where}.class"] = part.get("class")
        flat.update({f"{where}.{key}": value for key, value in part.get("hparams", {}).items()})
    return flat


def completed_shards(output_dir: str | os.PathLike, prefix: str) -> set[int]:
    """Global shard indices that have a final `.tar` in `output_dir`, whichever rank wrote them."""
    if not os.path.isdir(output_dir):
        return set()
    pattern = re.compile(rf"^{re.escape(prefix)}-\d+-(\d+)\.tar$")
    found = (pattern.match(name) for name in os.listdir(output_dir))
    return {int(m.group(1)) for m in found if m}


@dataclass
class _OpenShard:
    shard: int
    expected: int
    name: str
    tmp_path: str
    tar: tarfile.TarFile
    keys: list[str] = field(default_factory=list)
    members: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    filtered: dict[str, str] = field(default_factory=dict)  # key -> why the sample was dropped
    last_index: int = -1


class ShardWriter(BasePredictionWriter):
    """Prediction writer that turns each predict_step's list of samples into pair shards.

    The sample contract is in `portrait_edit.data.sample_codec`; each sample also carries `__index__`,
    `__shard__` and `__shard_len__` copied from its job (ShardedJobs `index`, `shard`, `shard_len`).
    A sample with `__filtered__` (the reason, a str) counts towards its shard but is not written; the
    sidecar and the manifest list such samples (e.g. pairs dropped by an identity-similarity filter).
    """

    def __init__(self, output_dir: str, prefix: str = "pairs", mtime: int = 0) -> None:
        """
        Args:
            output_dir: directory of the shards, sidecars and manifests (created if missing).
            prefix: shard file prefix; must match the jobs datamodule's prefix.
            mtime: modification time stamped on every tar member (fixed so tars are reproducible).
        """
        super().__init__(write_interval="batch")
        if not prefix or "." in prefix or "/" in prefix:
            raise ValueError(f"prefix {prefix!r} must be non-empty, without '.' or '/'")
        self.output_dir = output_dir
        self.prefix = prefix
        self.mtime = mtime
        self._open: _OpenShard | None = None
        self._finished: list[str] = []
        self._started = False

    # Lightning hooks, in call order.
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Before the jobs loader skips complete shards: with every shard complete, predict never starts.
        if stage == "predict":
            self._started = False
            os.makedirs(self.output_dir, exist_ok=True)
            self.check_settings(writer_settings(pl_module, getattr(trainer, "datamodule", None)), trainer)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        self._open = None
        self._finished = []
        self._started = True

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, list | tuple):
            raise ValueError(
                f"predict_step must return a list of sample dicts for ShardWriter, got {type(prediction).__name__}"
            )
        for sample in prediction:
            self.write_sample(sample, rank=trainer.global_rank)

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        if self._open is not None:
            shard = self._open
            self._abort_open()
            raise RuntimeError(
                f"shard {shard.shard} received {len(shard.keys)} of {shard.expected} samples when predict "
                f"ended; {shard.tmp_path} is left incomplete. The jobs and predict_step disagree on the "
                "shard length (every job must produce exactly one sample)."
            )
        self.write_manifest(trainer.global_rank)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Leave the partial .tar.tmp for inspection (the rerun overwrites it); record what did finish.
        self._abort_open()
        if self._started:  # not in a run refused at setup, nor a fit/validate run that never predicted
            self.write_manifest(trainer.global_rank)

    def check_settings(self, settings: dict[str, Any], trainer: Any) -> None:
        """Refuse a folder whose shards were made with other settings; record them in a new folder."""
        path = os.path.join(self.output_dir, SETTINGS_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f)
            if recorded != settings:
                old, new = flat_settings(recorded), flat_settings(settings)
                changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
                raise ValueError(
                    f"{self.output_dir} holds shards made with other settings ({path}; differing: "
                    f"{', '.join(changed)}); this run would resume them as its own. Write to a new folder "
                    "(--trainer.callbacks.init_args.output_dir=...) or move this one away."
                )
            return
        if getattr(trainer, "global_rank", 0) != 0:
            return
        if any(name.endswith(".tar") for name in os.listdir(self.output_dir)):
            log.warning(
                "%s has shards of unrecorded settings; recording this run's in %s", self.output_dir, path
            )
        atomic_write_json(path, settings)

    # Writing.
    def write_sample(self, sample: dict[str, Any], rank: int) -> None:
        """Append one sample to its shard, finishing the shard when it is full."""
        key, members = encode_sample(sample)
        try:
            index, shard, shard_len = (int(sample[k]) for k in ("__index__", "__shard__", "__shard_len__"))
        except KeyError as exc:
            raise ValueError(
                f"sample {key!r} lacks {exc.args[0]}: copy index/shard/shard_len from its job"
            ) from exc
        current = self._open
        if current is None:
            current = self._open = self._start(rank, shard, shard_len)
        elif shard != current.shard or shard_len != current.expected:
            raise RuntimeError(
                f"sample {key!r} belongs to shard {shard} (len {shard_len}) but shard {current.shard} is open "
                f"with {len(current.keys)}/{current.expected} samples; jobs must arrive shard by shard"
            )
        if index <= current.last_index or key in current.members or key in current.filtered:
            raise RuntimeError(
                f"sample {key!r} (index {index}) arrived out of order or twice in shard {shard}"
            )
        current.last_index = index
        if sample.get("__filtered__"):
            current.filtered[key] = str(sample["__filtered__"])
            if len(current.keys) + len(current.filtered) == current.expected:
                self._finish(current)
            return
        for field_name, data in members.items():
            info = tarfile.TarInfo(f"{key}.{field_name}")
            info.size, info.mtime, info.mode = len(data), self.mtime, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            current.tar.addfile(info, io.BytesIO(data))
        current.keys.append(key)
        current.members[key] = {
            f: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for f, d in members.items()
        }
        if len(current.keys) + len(current.filtered) == current.expected:
            self._finish(current)

    def _start(self, rank: int, shard: int, shard_len: int) -> _OpenShard:
        if shard_len < 1:
            raise ValueError(f"__shard_len__ must be >= 1, got {shard_len}")
        if shard in completed_shards(self.output_dir, self.prefix):
            raise RuntimeError(
                f"shard {shard} is already complete in {self.output_dir}; refusing to write it twice"
            )
        name = f"{self.prefix}-{rank:03d}-{shard:06d}"
        tmp_path = os.path.join(self.output_dir, f"{name}.tar.tmp")
        # Mode "w" truncates a leftover .tar.tmp from an interrupted run.
        tar = tarfile.open(tmp_path, "w", format=tarfile.PAX_FORMAT)
        return _OpenShard(shard=shard, expected=shard_len, name=name, tmp_path=tmp_path, tar=tar)

    def _finish(self, shard: _OpenShard) -> None:
        shard.tar.close()
        self._open = None
        fd = os.open(shard.tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data must be on disk before the rename publishes it as complete
        finally:
            os.close(fd)
        final = os.path.join(self.output_dir, f"{shard.name}.tar")
        summary = {
            "name": f"{shard.name}.tar",
            "prefix": self.prefix,
            "shard": shard.shard,
            "count": len(shard.keys),
            "keys": shard.keys,
            "filtered": shard.filtered,
            "samples": shard.members,
            "tar_sha256": file_sha256(shard.tmp_path),
        }
        atomic_write_json(os.path.join(self.output_dir, f"{shard.name}.json"), summary)
        os.replace(shard.tmp_path, final)  # the completion marker, written last
        self._remove_stale(shard)
        self._finished.append(summary["name"])
        log.debug("wrote %s (%d samples)", final, len(shard.keys))

    def _remove_stale(self, shard: _OpenShard) -> None:
        """Drop leftovers of this shard from interrupted runs under any rank (e.g. another world size)."""
        pattern = re.compile(
            rf"^{re.escape(self.prefix)}-\d+-{shard.shard:06d}\.(tar\.tmp|json|json\.tmp\d*)$"
        )
        keep = f"{shard.name}.json"
        for entry in os.listdir(self.output_dir):
            if entry != keep and pattern.match(entry):
                try:
                    os.remove(os.path.join(self.output_dir, entry))
                except FileNotFoundError:
                    pass

    def _abort_open(self) -> None:
        if self._open is not None:
            try:
                self._open.tar.fileobj.close()  # no end-of-archive blocks: the file stays visibly partial
            finally:
                self._open = None

    def write_manifest(self, rank: int) -> str:
        """Rewrite `manifest-r{rank:03d}.json` from the sidecars of every complete shard named with this rank.

        Rebuilt from the sidecars rather than from this run's memory, so a crashed or killed run, or a
        rerun that had nothing left to do, still leaves a manifest listing every shard the rank owns.
        """
        path = os.path.join(self.output_dir, f"manifest-r{rank:03d}.json")
        pattern = re.compile(rf"^{re.escape(self.prefix)}-{rank:03d}-\d+\.tar$")
        shards: dict[str, Any] = {}
        for name in sorted(os.listdir(self.output_dir)):
            if not pattern.match(name):
                continue
            try:
                with open(
                    os.path.join(self.output_dir, name[: -len(".tar")] + ".json"), encoding="utf-8"
                ) as f:
                    side = json.load(f)
            except (OSError, ValueError) as exc:
                log.warning("shard %s has no readable sidecar (%s); left out of %s", name, exc, path)
                continue
            shards[name] = {k: side[k] for k in ("shard", "count", "keys", "tar_sha256")}
            shards[name]["filtered"] = len(side.get("filtered", {}))
        manifest = {
            "rank": rank,
            "prefix": self.prefix,
            "num_shards": len(shards),
            "num_samples": sum(s["count"] for s in shards.values()),
            "num_filtered": sum(s["filtered"] for s in shards.values()),
            "written_this_run": list(self._finished),
            "shards": shards,
        }
        atomic_write_json(path, manifest)
        return path
