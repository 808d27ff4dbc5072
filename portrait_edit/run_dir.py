"""A fit's run directory (`trainer.default_root_dir`) owns everything that lets it resume: its checkpoints
(`<run>/checkpoints/`, Lightning's SLURM `hpc_ckpt_*.ckpt` beside them) and its W&B run id (`<run>/wandb_id`).

Deriving both from the run dir (never a second path in YAML) means two fits with different run dirs never
share a checkpoint or a dashboard, and `ckpt_path: last` resumes the newest state of THIS run: the periodic
`last.ckpt`, the one saved on an exception, or the hpc one SLURM's requeue wrote.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

WANDB_ID_FILE = "wandb_id"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Where a run's checkpoints live."""
    return Path(run_dir) / "checkpoints"


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint kept in `<trainer.default_root_dir>/checkpoints` (the CLI's `checkpoint:`
    group; set `--checkpoint.every_n_train_steps=...` from the command line).

    Beyond ModelCheckpoint: `last.ckpt` is also written when fit stops on an exception (a crash or Ctrl-C
    after training started); "last" also finds the run's SLURM hpc checkpoints (Lightning's own lookup
    ignores them). The CLI refuses, before anything is loaded, a checkpoint whose weights do not fit the
    run's model (`refuse_foreign_checkpoint`).

    Args:
        every_n_train_steps: save every this many optimizer steps.
        save_last: keep `last.ckpt` (what `ckpt_path: last` resumes).
        save_top_k: numbered checkpoints kept besides last.ckpt (ModelCheckpoint's meaning; 0: none).
        save_on_exception: write last.ckpt when fit stops on an exception after training started.
    """

    def __init__(
        self,
        every_n_train_steps: int = 1000,
        save_last: bool = True,
        save_top_k: int = 1,
        save_on_exception: bool = True,
    ) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(save_last=save_last, every_n_train_steps=every_n_train_steps, save_top_k=save_top_k)
        self.save_on_exception = save_on_exception
        self._trained = False

    def _use_run_dir(self, trainer: Trainer) -> None:
        self.dirpath = os.fspath(checkpoint_dir(trainer.default_root_dir))

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        self._use_run_dir(trainer)
        hpc = {os.path.normpath(p) for p in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")}
        return super()._find_last_checkpoints(trainer) | hpc

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._use_run_dir(trainer)
        super().setup(trainer, pl_module, stage)

    def last_checkpoint(self, trainer: Trainer) -> str | None:
        """The checkpoint `ckpt_path: last` resumes (the newest candidate, as Lightning picks it), or None."""
        found = [p for p in self._find_last_checkpoints(trainer) if os.path.isfile(p)]
        return max(found, key=os.path.getmtime) if found else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trained = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Only once training ran: an error while setting up (a refused checkpoint) must not overwrite it.
        if self.save_on_exception and self._trained and trainer.state.fn == TrainerFn.FITTING:
            trainer.save_checkpoint(
                os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            )


def refuse_foreign_checkpoint(path: str | os.PathLike, module: LightningModule, run_dir: str) -> None:
    """Raise a ValueError when checkpoint `path` holds weights that do not fit `module` (other names or
    shapes): it was written by another run, and resuming it would fail deep in load_state_dict (or, with
    `strict=False` anywhere, silently train something else)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("state_dict", {})
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if mine == theirs:
        return
    missing, extra = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
    shapes = [
        f"{k} {theirs[k]} vs {mine[k]}" for k in sorted(mine.keys() & theirs.keys()) if mine[k] != theirs[k]
    ]
    detail = "; ".join(
        part
        for part in (
            f"{len(missing)} weights this model has are not in it (first: {missing[0]})" if missing else "",
            f"{len(extra)} weights in it are not in this model (first: {extra[0]})" if extra else "",
            f"{len(shapes)} weights differ in shape (first: {shapes[0]}, checkpoint vs config)"
            if shapes
            else "",
        )
        if part
    )
    raise ValueError(
        f"{path} holds another run's checkpoint, not one of this config's model ({detail}). Give this run its "
        f"own --trainer.default_root_dir (now {run_dir}), or remove that folder to start again."
    )


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The W&B run id of a run dir: read from `<run>/wandb_id`, created there on the first call.

    Every process of a run gets the same id (a local rerun, a requeued or resubmitted SLURM job, every rank
    of a DDP job started at once): the file is created exclusively, and whoever loses the race reads it."""
    path = Path(run_dir) / WANDB_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(uuid.uuid4().hex[:12] + "\n")
        try:
            os.link(tmp, path)  # fails if another process made it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def fill_run_logger(trainer_config: Any) -> None:
    """Point a W&B logger of a fit config (a jsonargparse namespace of `trainer`) at the run dir: its
    `save_dir` defaults to `default_root_dir` and its run id to the run dir's `wandb_id`."""
    logger = trainer_config.get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    for lg in loggers:
        if not hasattr(lg, "get") or not str(lg.get("class_path", "")).endswith("WandbLogger"):
            continue
        args = lg.init_args
        run_dir = trainer_config.get("default_root_dir") or "."
        if args.get("save_dir") in (None, "."):
            args.save_dir = run_dir
        if not args.get("id") and not args.get("version"):
            args.id = wandb_run_id(run_dir)  # the run dir's, wherever save_dir points
