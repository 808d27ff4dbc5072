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

    Subclasses give `parameter_groups` (default: every parameter of `trained_module()` with the system's
    weight decay) and `export(out_dir)`; `betas` are AdamW's."""

    betas: tuple[float, float] = (0.9, 0.999)

    def trained_module(self) -> torch.nn.Module:
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [
            {"params": list(self.trained_module().parameters()), "weight_decay": self.hparams.weight_decay}
        ]

    def export(self, out_dir: str) -> Any:
        raise NotImplementedError

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
