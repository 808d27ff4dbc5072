"""Trains the direction classifier (0 source, 1..8 DIRECTIONS) on mini-world images: the later
edit-fidelity metric. Cross-entropy on `image` / `label` batches; val/accuracy on held-out renders."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only

from portrait_edit.models.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.systems.schedules import one_cycle

log = logging.getLogger(__name__)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax(logits) (B, K) equals labels (B,), else 0.0; float (B,)."""
    return (logits.argmax(dim=1) == labels).float()


class DirectionClassifierSystem(LightningModule):
    """Cross-entropy training of a `DirectionClassifier`."""

    def __init__(
        self,
        channels: list[int] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        export_dir: str | None = None,
        fp16: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            channels: stage widths of the CNN (None: DirectionClassifierConfig's default).
            lr: peak AdamW learning rate (one-cycle schedule: warmup, then cosine decay to lr / 100).
            weight_decay: AdamW weight decay.
            warmup_fraction: fraction of the steps spent warming up.
            export_dir: when set, the classifier is written to `<export_dir>/classifier/` at the end of fit.
            fp16: export half-precision weights (the model is tiny; full precision is the default).
            seed: seed of the initial weights.
        """
        super().__init__()
        if lr <= 0 or not 0 <= warmup_fraction < 1:
            raise ValueError(f"need lr > 0 and 0 <= warmup_fraction < 1; got {lr}, {warmup_fraction}")
        self.save_hyperparameters()
        config = (
            DirectionClassifierConfig() if channels is None else DirectionClassifierConfig(channels=channels)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.classifier = DirectionClassifier(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, 9) of images (B, 3, H, W) in [-1, 1]."""
        return self.classifier(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        size = logits.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", accuracy(logits, batch["label"]).mean(), batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        size = logits.shape[0]
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), batch_size=size, sync_dist=True)
        correct = accuracy(logits, batch["label"])
        self.log("val/accuracy", correct.mean(), prog_bar=True, batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(
            self.classifier.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        return one_cycle(
            optimizer, self.hparams.lr, self.hparams.warmup_fraction, self.trainer.estimated_stepping_batches
        )

    def on_fit_end(self) -> None:
        if self.hparams.export_dir is not None:
            self._export_rank_zero(self.hparams.export_dir)

    def export(self, out_dir: str, fp16: bool | None = None) -> Path:
        """Write the classifier to `<out_dir>/classifier/` (config.json + model.safetensors)."""
        fp16 = self.hparams.fp16 if fp16 is None else fp16
        folder = self.classifier.save_pretrained(
            Path(out_dir) / "classifier", torch.float16 if fp16 else None
        )
        log.info("exported the direction classifier to %s", folder)
        return folder

    @rank_zero_only
    def _export_rank_zero(self, out_dir: str) -> None:
        self.export(out_dir)
