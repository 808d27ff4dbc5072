"""The command line: `portrait-edit {fit,validate,test,predict} --config a.yaml --config b.yaml ...`.

Every stage of the pipeline is a LightningCLI subcommand driven by YAML in `configs/`: a stage file
(`configs/<world>/<stage>.yaml`) names the system (`model`) and the datamodule (`data`) by class path;
reusable pieces (`configs/trainer/*.yaml`, `configs/logger/*.yaml`) are stacked with more `--config`
flags, later files winning.
"""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

# Job loaders yield whole batches (lists of job dicts) from one process: Lightning can neither infer
# per-sample batch indices (the shard writer does not need them) nor trust an IterableDataset's __len__
# with several workers (ours is exact: job loaders run in the main process).
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class PortraitCLI(LightningCLI):
    """LightningCLI with the project's defaults.

    - Systems and datamodules are chosen in the config by `class_path` (subclass mode).
    - Systems own their optimisers (`configure_optimizers`), so the CLI adds none.
    - `config.yaml` is overwritten in a fixed run directory, so a rerun or a requeued job does not crash on
      the file its previous attempt wrote.
    - `seed_everything` must be an explicit integer: Lightning turns `true` into seed 0, not a random seed.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
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


def main(args: ArgsType = None) -> None:
    """Console-script entry point (`portrait-edit` and `python -m portrait_edit`); `args` for use from Python."""
    _show_project_logs()
    PortraitCLI(args=args)


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
