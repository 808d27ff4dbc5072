"""The command line: `portrait-edit {fit,validate,test,predict} --config a.yaml --config b.yaml ...`.

Every stage of the pipeline is a LightningCLI subcommand driven by YAML in `configs/`: a stage file
(`configs/<world>/<stage>.yaml`) names the system (`model`) and the datamodule (`data`) by class path;
reusable pieces (`configs/trainer/*.yaml`, `configs/logger/*.yaml`) are stacked with more `--config`
flags, later files winning.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.run_dir import RunCheckpoint, fill_run_logger, refuse_foreign_checkpoint

log = logging.getLogger(__name__)

# Job loaders yield whole batches (lists of job dicts) from one process: Lightning can neither infer
# per-sample batch indices (the shard writer does not need them) nor trust an IterableDataset's __len__
# with several workers (ours is exact: job loaders run in the main process).
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class PortraitCLI(LightningCLI):
    """LightningCLI with the project's defaults.

    - Systems and datamodules are chosen in the config by `class_path` (subclass mode).
    - Systems own their optimisers (`configure_optimizers`), so the CLI adds none.
    - The run dir (`trainer.default_root_dir`) owns the fit's checkpoints and W&B run (run_dir.py): the
      `checkpoint:` group (`--checkpoint.every_n_train_steps=...`) keeps them in `<run>/checkpoints`, a W&B
      logger writes into the run dir under the run dir's own id, and a checkpoint that does not fit the
      config's model (another run's) is refused before fit starts.
    - `config.yaml` is overwritten in a fixed run directory, so a rerun or a requeued job does not crash on
      the file its previous attempt wrote; a W&B run gets the whole resolved config, not only the system's
      hyperparameters.
    - `seed_everything` must be an explicit integer: Lightning turns `true` into seed 0, not a random seed.
    - With `--ckpt_path <file>` the config's model settings are used as given (Lightning's CLI would
      overwrite them with the checkpoint's, command-line values included: a resumed run would export
      into the checkpoint's `export_dir`); the settings that differ from the checkpoint's are logged.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", SaveFullConfig)
        kwargs.setdefault(
            "parser_kwargs",
            {"prog": "portrait-edit", "description": "portrait_edit: feature-preserving portrait editing."},
        )
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")

    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            fill_run_logger(self.config[subcommand].trainer)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # The run dir's checkpointing (forced for every subcommand, inert outside fit) goes with
        # enable_checkpointing: Lightning refuses a ModelCheckpoint when it is off.
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, RunCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        ckpt_path = self.config_init["fit"].get("ckpt_path")
        checkpoint = next((cb for cb in self.trainer.callbacks if isinstance(cb, RunCheckpoint)), None)
        path = checkpoint.last_checkpoint(self.trainer) if ckpt_path == "last" and checkpoint else ckpt_path
        if path and Path(path).is_file():
            refuse_foreign_checkpoint(path, self.model, self.trainer.default_root_dir)

    def parse_arguments(self, parser, args) -> None:
        # Checked right after parsing: Lightning replaces `true` / null by a drawn seed right after this.
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        seed = config.get("seed_everything")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(
                f"seed_everything is {seed!r}; set it to an explicit integer in your config "
                "(e.g. `seed_everything: 0`): `true` silently means seed 0 in Lightning."
            )

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # None, or "last" / "hpc" (resolved by the trainer)
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        model = self.config[subcommand].model
        saved_class = hparams.get("_class_path")
        if saved_class and saved_class != model.class_path:
            raise ValueError(
                f"{ckpt_path} was saved by {saved_class}, but the config's model is {model.class_path}: "
                "pass the config the checkpoint was trained with, or another checkpoint"
            )
        for key, (saved, given) in checkpoint_differences(hparams, model.init_args.as_dict()).items():
            log.warning(
                "%s: model.init_args.%s is %r here, %r in the checkpoint; %r is used",
                ckpt_path,
                key,
                given,
                saved,
                given,
            )


def checkpoint_differences(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The model settings a config gives (`given`) that differ from a checkpoint's hyperparameters
    (`saved`): {name: (saved value, given value)}, compared as JSON (a YAML list equals a saved tuple).
    Lightning's bookkeeping keys (`_class_path`, `_instantiator`) and settings the checkpoint does not
    hold (module arguments it ignores) are left out."""

    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value, sort_keys=True, default=str))

    return {
        key: (saved[key], given[key])
        for key in sorted(saved.keys() & given.keys())
        if not key.startswith("_") and plain(saved[key]) != plain(given[key])
    }


class SaveFullConfig(SaveConfigCallback):
    """Writes config.yaml (Lightning's) and gives a W&B run the whole resolved config (trainer, model, data,
    checkpoint) twice: as the run's config (the dashboard's filters) and as `run_config.yaml` in the run's
    files folder, which an offline run keeps readable and `wandb sync` uploads."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"config": self.config.as_dict()}, allow_val_change=True)
                text = self.parser.dump(self.config, skip_none=False)
                atomic_write_bytes(Path(logger.experiment.dir) / "run_config.yaml", text.encode("utf-8"))


def resolve_config(args: list[str]) -> dict[str, Any]:
    """The config `portrait-edit <args>` would run (its `--config` files stacked, its overrides applied),
    resolved and validated without building anything, for tools that read a stage's settings.

    Raises:
        ValueError: the arguments do not parse (the parser's message).
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            PortraitCLI(args=[*args, "--print_config"])
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise ValueError(f"portrait-edit {' '.join(args)}: {err.getvalue().strip()}") from None
    return yaml.safe_load(out.getvalue())


def user_error(exc: BaseException) -> BaseException | None:
    """The project's own ValueError inside `exc` (a config or input error saying what to change), unwrapped
    from jsonargparse's validation dumps (which chain it as the cause), or None for any other exception."""
    seen = exc
    while seen is not None:
        frames = []
        tb = seen.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        if isinstance(seen, ValueError) and frames and f"{os.sep}portrait_edit{os.sep}" in frames[-1]:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main(args: ArgsType = None) -> None:
    """Console-script entry point (`portrait-edit` and `python -m portrait_edit`); `args` for use from Python.

    A config or input error (the project's ValueErrors) is printed as one message and exits with status 2;
    PORTRAIT_EDIT_TRACEBACK=1 shows the whole traceback instead."""
    _show_project_logs()
    try:
        PortraitCLI(args=args)
    except Exception as exc:
        error = user_error(exc)
        if error is None or os.environ.get("PORTRAIT_EDIT_TRACEBACK"):
            raise
        print(f"portrait-edit: error: {error}", file=sys.stderr)
        sys.exit(2)


def _show_project_logs() -> None:
    """Print the project's INFO messages (resumed shards, sample counts) the way Lightning prints its own."""
    logger = logging.getLogger("portrait_edit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


if __name__ == "__main__":
    main()
