"""Trains the direction classifier (0 source, 1..8 DIRECTIONS) on mini-world images: the later
edit-fidelity metric. Cross-entropy on `image` / `label` batches; val/accuracy on held-out renders.

The images it judges are generated ones, decoded by the mini VAE: slightly soft, slightly noisy. A
classifier trained on crisp renders alone read only 0-56% of VAE round trips of the expression renders
(tears, open mouths still plainly visible). So training shows it a share of the images as VAE round
trips (`roundtrip_vae`: encoded and decoded by the VAE that decodes the generations; each image's round
trip is computed once and kept) and degrades another share (`degrade`: a Gaussian blur of random width
and additive noise of random strength). val/accuracy_roundtrip and val/accuracy_blurred report the
held-out accuracy on round trips and under a fixed blur (sigma 1 px)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from portrait_edit.blur import gaussian_blur
from portrait_edit.evaluation.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.images import pixels_to_unit, unit_to_pixels
from portrait_edit.loading.components import load_vae, vae_roundtrip
from portrait_edit.systems.exporting import ExportingSystem

log = logging.getLogger(__name__)


def degrade(
    images: torch.Tensor,
    p: float,
    blur_max: float,
    noise_max: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability p per image: blur by sigma ~ U(0, blur_max) px, then add Gaussian noise of std
    ~ U(0, noise_max) (images in [-1, 1]; the result is clamped to it). Other images pass unchanged."""
    batch = images.shape[0]
    device = images.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    chosen = uniform(batch) < p
    sigma = uniform(batch) * blur_max * chosen
    std = uniform(batch) * noise_max * chosen
    noise = torch.randn(images.shape, generator=generator).to(images)
    out = gaussian_blur(images, sigma) + std.to(images)[:, None, None, None] * noise
    return torch.where(chosen[:, None, None, None], out.clamp(-1, 1), images)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax(logits) (B, K) equals labels (B,), else 0.0; float (B,)."""
    return (logits.argmax(dim=1) == labels).float()


class DirectionClassifierSystem(ExportingSystem):
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
        degrade_p: float = 0.0,
        blur_max: float = 1.5,
        noise_max: float = 0.1,
        roundtrip_vae: str | None = None,
        roundtrip_p: float = 0.0,
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
            degrade_p: share of training images degraded by `degrade` (0: none).
            blur_max: largest blur sigma of a degraded image, in pixels.
            noise_max: largest noise std of a degraded image (images in [-1, 1]).
            roundtrip_vae: source of the VAE whose round trips the classifier also learns from (a pipeline
                folder such as data/mini, a preset, a hub id); None: none. Batches need an `index`.
            roundtrip_p: share of training images replaced by their VAE round trip.
        """
        super().__init__()
        if lr <= 0 or not 0 <= warmup_fraction < 1:
            raise ValueError(f"need lr > 0 and 0 <= warmup_fraction < 1; got {lr}, {warmup_fraction}")
        if not 0 <= degrade_p <= 1 or blur_max < 0 or noise_max < 0:
            raise ValueError(
                f"need degrade_p in [0, 1], blur_max >= 0, noise_max >= 0; got {degrade_p}, {blur_max}, {noise_max}"
            )
        self.save_hyperparameters()
        config = (
            DirectionClassifierConfig() if channels is None else DirectionClassifierConfig(channels=channels)
        )
        if not 0 <= roundtrip_p <= 1 or (roundtrip_p > 0 and roundtrip_vae is None):
            raise ValueError(
                f"roundtrip_p must be in [0, 1] and needs roundtrip_vae; got {roundtrip_p}, {roundtrip_vae}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.classifier = DirectionClassifier(config)
        # The frozen VAE is kept out of the state dict (a tuple), loaded on first use.
        self._vae: tuple = ()
        self._roundtrips: dict[int, torch.Tensor] = {}  # dataset index -> uint8 (3, H, W) round trip

    def vae(self):
        if not self._vae:
            vae = load_vae(self.hparams.roundtrip_vae, torch_dtype=torch.float32)
            self._vae = (vae.requires_grad_(False).eval().to(self.device),)
        return self._vae[0]

    def roundtrip(self, images: torch.Tensor) -> torch.Tensor:
        """The round trip (`vae_roundtrip`) of images (B, 3, H, W) in [-1, 1] through `roundtrip_vae`."""
        return vae_roundtrip(self.vae(), images)

    def cached_roundtrips(self, images: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Round trips of the rows of `images` with dataset `indices`, each computed once (kept as uint8)."""
        missing = [k for k, i in enumerate(indices) if i not in self._roundtrips]
        if missing:
            fresh = unit_to_pixels(self.roundtrip(images[missing])).cpu()
            self._roundtrips.update((indices[k], x) for k, x in zip(missing, fresh))
        stored = torch.stack([self._roundtrips[i] for i in indices]).to(images.device)
        return pixels_to_unit(stored)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, 9) of images (B, 3, H, W) in [-1, 1]."""
        return self.classifier(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        if self.hparams.roundtrip_p > 0:
            if "index" not in batch:
                raise ValueError("roundtrip_p > 0 needs an `index` per item (WorldImagesDataModule gives it)")
            chosen = (torch.rand(len(images)) < self.hparams.roundtrip_p).nonzero().flatten().tolist()
            if chosen:
                indices = [int(batch["index"][k]) for k in chosen]
                images = images.clone()
                images[chosen] = self.cached_roundtrips(images[chosen], indices)
        if self.hparams.degrade_p > 0:
            images = degrade(images, self.hparams.degrade_p, self.hparams.blur_max, self.hparams.noise_max)
        logits = self(images)
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
        blurred = self(gaussian_blur(batch["image"], torch.ones(size, device=self.device)))
        self.log(
            "val/accuracy_blurred", accuracy(blurred, batch["label"]).mean(), batch_size=size, sync_dist=True
        )
        if self.hparams.roundtrip_vae is not None:
            trips = self(self.roundtrip(batch["image"]))
            self.log(
                "val/accuracy_roundtrip",
                accuracy(trips, batch["label"]).mean(),
                batch_size=size,
                sync_dist=True,
            )

    def export(self, out_dir: str, fp16: bool | None = None) -> Path:
        """Write the classifier to `<out_dir>/classifier/` (config.json + model.safetensors)."""
        fp16 = self.hparams.fp16 if fp16 is None else fp16
        folder = self.classifier.save_pretrained(
            Path(out_dir) / "classifier", torch.float16 if fp16 else None
        )
        log.info("exported the direction classifier to %s", folder)
        return folder

    def trained_module(self) -> torch.nn.Module:
        return self.classifier
