"""Trains the world probe (`WorldProbe`) on world images: it reads the nose position (the pose ControlNet's
head-position metric) and, when configured, the skin and hair colour (the attribute reader of the identity
evaluation). MSE on normalised targets (keypoint / image side, colour / 255); val/nose_px_median is the
median pixel error, val/<target>_mae the mean absolute colour error in 0..255 units."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from portrait_edit.evaluation.world_probe import NOSE, WorldProbe, WorldProbeConfig
from portrait_edit.systems.exporting import ExportingSystem

log = logging.getLogger(__name__)


COLOURS = {"skin_rgb": "skin", "hair_rgb": "hair"}  # colour target -> its batch field


def probe_targets(batch: dict, targets: dict[str, int], image_size: int) -> dict[str, torch.Tensor]:
    """Normalised regression targets of a world-images batch, one float (B, size) per target name.

    nose_xy: keypoints[:, 0, :2] / image_size (the nose, OpenPose index 0, as fractions of the side).
    skin_rgb, hair_rgb: the identity's skin / hair colour, RGB in [0, 1].

    Raises:
        ValueError: a target this function cannot read off a batch (add it here with its source).
    """
    out = {}
    for name, size in targets.items():
        if name == NOSE and size == 2:
            out[name] = batch["keypoints"][:, 0, :2].float() / image_size
        elif name in COLOURS and size == 3 and COLOURS[name] in batch:
            out[name] = batch[COLOURS[name]].float()
        else:
            raise ValueError(
                f"no batch field gives the probe target {name!r} of size {size}; known: {NOSE}: 2, "
                + ", ".join(f"{c}: 3" for c in COLOURS)
            )
    return out


def pixel_errors(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean distance, float (B,), between points float (B, 2) and float (B, 2) (both in pixels)."""
    if predicted.shape != target.shape or predicted.ndim != 2 or predicted.shape[1] != 2:
        raise ValueError(
            f"need two (B, 2) point sets of the same shape; got {predicted.shape}, {target.shape}"
        )
    return (predicted.float() - target.float()).norm(dim=1)


def median(values: torch.Tensor) -> torch.Tensor:
    """Median of float (N,): the mean of the two middle values when N is even (torch.median would return
    the lower one)."""
    if values.numel() == 0:
        raise ValueError("the median of no values is undefined; validate on at least one image")
    return torch.quantile(values.float(), 0.5)


class WorldProbeSystem(ExportingSystem):
    """MSE training of a `WorldProbe` on normalised targets."""

    def __init__(
        self,
        channels: list[int] | None = None,
        targets: dict[str, int] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        export_dir: str | None = None,
        fp16: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            channels: stage widths of the CNN (None: WorldProbeConfig's default).
            targets: what the probe reads, name -> size (None: {"nose_xy": 2}; add "skin_rgb": 3 and
                "hair_rgb": 3 for the attribute reader).
            lr: peak AdamW learning rate (one-cycle schedule: warmup, then cosine decay to lr / 100).
            weight_decay: AdamW weight decay.
            warmup_fraction: fraction of the steps spent warming up.
            export_dir: when set, the probe is written to `<export_dir>/probe/` at the end of fit.
            fp16: export half-precision weights (the model is tiny; full precision is the default).
            seed: seed of the initial weights.
        """
        super().__init__()
        if lr <= 0 or not 0 <= warmup_fraction < 1:
            raise ValueError(f"need lr > 0 and 0 <= warmup_fraction < 1; got {lr}, {warmup_fraction}")
        self.save_hyperparameters()
        given = {k: v for k, v in (("channels", channels), ("targets", targets)) if v is not None}
        config = WorldProbeConfig(**given)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.probe = WorldProbe(config)
        self._val_errors: list[torch.Tensor] = []  # per-image nose errors (px) of the current validation

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised predictions {name: (B, size)} of images (B, 3, S, S) in [-1, 1]."""
        return self.probe(images)

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        predicted = self(batch["image"])
        config = self.probe.config
        targets = probe_targets(batch, config.targets, config.image_size)
        # One MSE over all target elements: every target is in normalised units of similar range.
        loss = F.mse_loss(torch.cat(list(predicted.values()), 1), torch.cat(list(targets.values()), 1))
        return loss, predicted, targets

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_errors = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, predicted, targets = self._loss(batch)
        size = batch["image"].shape[0]
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        side = self.probe.config.image_size
        self._val_errors.append(pixel_errors(predicted[NOSE] * side, targets[NOSE] * side).detach())
        for name in COLOURS.keys() & targets.keys():
            mae = (predicted[name] - targets[name]).abs().mean() * 255.0
            self.log(f"val/{name.removesuffix('_rgb')}_mae", mae, batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self._val_errors:
            return
        # The median of all validation images (gathered from every rank), not a mean of batch medians.
        errors = self.all_gather(torch.cat(self._val_errors)).reshape(-1)
        self.log("val/nose_px_median", median(errors), prog_bar=True, rank_zero_only=True)
        self._val_errors = []

    def export(self, out_dir: str, fp16: bool | None = None) -> Path:
        """Write the probe to `<out_dir>/probe/` (config.json + model.safetensors)."""
        fp16 = self.hparams.fp16 if fp16 is None else fp16
        folder = self.probe.save_pretrained(Path(out_dir) / "probe", torch.float16 if fp16 else None)
        log.info("exported the world probe to %s", folder)
        return folder

    def trained_module(self) -> torch.nn.Module:
        return self.probe
