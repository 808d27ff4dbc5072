"""`ExportingSystem`: what the mini base's single-model systems (VAE, CLIP, direction classifier, world
probe) share: AdamW under the one-cycle schedule and, when `export_dir` is set, the model written there by
rank zero at the end of fit."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only

from portrait_edit.systems.schedules import one_cycle


class ExportingSystem(LightningModule):
    """A LightningModule with hyperparameters lr, weight_decay, warmup_fraction and export_dir.

    Subclasses define `trained_module()` (the module trained) and `export(out_dir)`, and may override
    `parameter_groups` (default: every parameter of the trained module with the system's weight decay);
    `betas` are AdamW's."""

    betas: tuple[float, float] = (0.9, 0.999)

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = list(self.trained_module().parameters())
        return [{"params": params, "weight_decay": self.hparams.weight_decay}]

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.lr, betas=self.betas)
        return one_cycle(
            optimizer, self.hparams.lr, self.hparams.warmup_fraction, self.trainer.estimated_stepping_batches
        )

    def on_fit_end(self) -> None:
        if self.hparams.export_dir is not None:
            self._export_rank_zero(self.hparams.export_dir)

    @rank_zero_only
    def _export_rank_zero(self, out_dir: str) -> None:
        self.export(out_dir)
