"""The mini world's VAE: an AutoencoderKL trained from random init on mini-world renders (DESIGN.md §5).

Loss: L1 + MSE reconstruction (the MSE term is what PSNR measures, the L1 term keeps flat cartoon areas
sharp) + kl_weight x KL. With `face_weight` > 0 the reconstruction is a weighted mean whose per-pixel weight
is 1 + face_weight x a Gaussian over the face (from the batch's OpenPose keypoints): the face covers under
a tenth of a head shot, yet its few-pixel eyes, mouth and tears are what the expression edits change. The KL is a mean over latent elements, like the reconstruction is a mean over
pixels, so kl_weight = 1e-6 keeps it a light regulariser of the latent scale, as in Stable Diffusion.

After training, the latent standard deviation of training images is measured and stored as the VAE's
`scaling_factor` = 1 / std (Stable Diffusion's convention: scaled latents have unit variance), then the
VAE is written in diffusers layout (`<export_dir>/vae/`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from portrait_edit import paths
from portrait_edit.atomic import replace_folder
from portrait_edit.diffusion.face_weights import face_gaussian, face_weights
from portrait_edit.metrics.psnr import psnr_per_image
from portrait_edit.systems.exporting import ExportingSystem

log = logging.getLogger(__name__)


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent element, averaged per image.

    Args:
        mean, logvar: float (B, C, h, w).

    Returns:
        float (B,): 0.5 * mean over (C, h, w) of (mean^2 + exp(logvar) - 1 - logvar).
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).mean(dim=1)


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean absolute error + mean squared error over pixels (images in [-1, 1], (B, C, H, W)).

    Args:
        weight: optional float (B, 1, H, W) per-pixel weights; the means become weighted means.
    """
    diff = reconstruction.float() - target.float()
    per_pixel = diff.abs() + diff.pow(2)
    if weight is None:
        return per_pixel.mean()
    weight = weight.expand_as(per_pixel)
    return (per_pixel * weight).sum() / weight.sum()


def build_vae(config: str, seed: int = 0) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL from a preset name (`mini`, `tiny`) or a folder with config.json."""
    folder = paths.PRESETS_DIR / config / "vae" if (paths.PRESETS_DIR / config).is_dir() else Path(config)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"vae config {config!r}: no {folder}/config.json; use a preset name (mini, tiny) or a folder"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL.from_config(AutoencoderKL.load_config(folder))


class VAESystem(ExportingSystem):
    """Trains an AutoencoderKL on `image` batches (float (B, 3, H, W) in [-1, 1])."""

    def __init__(
        self,
        config: str = "mini",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.03,
        kl_weight: float = 1e-6,
        face_weight: float = 0.0,
        face_sigma: float = 1.5,
        scale_batches: int = 16,
        export_dir: str | None = None,
        fp16: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            config: architecture, a preset name (`mini`, `tiny`) or a folder with the VAE's config.json;
                weights always start random (seeded).
            lr: peak AdamW learning rate (one-cycle schedule: warmup, then cosine decay to lr / 100).
            weight_decay: AdamW weight decay.
            warmup_fraction: fraction of the steps spent warming up.
            kl_weight: weight of the per-element KL term.
            face_weight: extra reconstruction weight on the face (0: plain means); needs `keypoints` in
                the batches (WorldImagesDataModule gives them).
            face_sigma: width of the face weighting relative to the spread of the face keypoints.
            scale_batches: training batches whose latents set the scaling factor at the end of fit.
            export_dir: when set, the trained VAE is written to `<export_dir>/vae/` at the end of fit.
            fp16: export half-precision weights.
            seed: seed of the initial weights.
        """
        super().__init__()
        if lr <= 0 or kl_weight < 0 or scale_batches < 1 or not 0 <= warmup_fraction < 1:
            raise ValueError(
                f"need lr > 0, kl_weight >= 0, scale_batches >= 1, 0 <= warmup_fraction < 1; got {lr}, "
                f"{kl_weight}, {scale_batches}, {warmup_fraction}"
            )
        if face_weight < 0 or face_sigma <= 0:
            raise ValueError(f"need face_weight >= 0 and face_sigma > 0; got {face_weight}, {face_sigma}")
        self.save_hyperparameters()
        self.vae = build_vae(config, seed)
        # 0 = not measured yet; a buffer so a checkpoint written after measuring keeps it.
        self.register_buffer("scaling_factor", torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (posterior mean) of images (B, 3, H, W) in [-1, 1]."""
        return self.vae.decode(self.vae.encode(images).latent_dist.mode()).sample

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        rec = reconstruction_loss(reconstruction, images, self._pixel_weights(batch))
        kl = kl_per_element(posterior.mean, posterior.logvar).mean()
        loss = rec + self.hparams.kl_weight * kl
        size = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/rec", rec, batch_size=size)
        self.log("train/kl", kl, batch_size=size)
        return loss

    def _pixel_weights(self, batch: dict) -> torch.Tensor | None:
        if self.hparams.face_weight == 0:
            return None
        if "keypoints" not in batch:
            raise ValueError("face_weight > 0 needs `keypoints` in the batches; use WorldImagesDataModule")
        size = tuple(batch["image"].shape[-2:])
        return face_weights(batch["keypoints"], size, size, self.hparams.face_weight, self.hparams.face_sigma)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        reconstruction = self(images)
        psnr = psnr_per_image((reconstruction.clamp(-1, 1) + 1) / 2, (images + 1) / 2)
        # Logged as the batch mean weighted by batch size: the epoch value is the mean over all images.
        self.log("val/psnr", psnr.mean(), prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        if "keypoints" in batch:
            # PSNR of the face alone: the MSE weighted by the face Gaussian.
            face = face_gaussian(batch["keypoints"], *images.shape[-2:], self.hparams.face_sigma)
            err = ((reconstruction.clamp(-1, 1) - images) / 2).pow(2).mean(dim=1, keepdim=True)
            mse = (err * face).flatten(1).sum(1) / face.flatten(1).sum(1).clamp(min=1e-6)
            face_psnr = -10 * torch.log10(mse.clamp(min=1e-10))
            self.log("val/psnr_face", face_psnr.mean(), batch_size=images.shape[0], sync_dist=True)

    def on_fit_end(self) -> None:
        # Every rank measures its own batches and the sums are reduced: a collective on all ranks.
        # A run resumed at max_steps never builds its training loader: ask the datamodule.
        loader = self.trainer.train_dataloader or self.trainer.datamodule.train_dataloader()
        self.measure_scaling_factor(loader, self.hparams.scale_batches)
        super().on_fit_end()

    @torch.no_grad()
    def measure_scaling_factor(self, loader, max_batches: int) -> float:
        """Set `scaling_factor` = 1 / std of posterior samples of up to `max_batches` batches of `loader`.

        Returns:
            the factor, also written into the VAE's config (`vae.config.scaling_factor`).
        """
        was_training = self.vae.training
        self.vae.eval()
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # count, sum, sum of squares
        generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed)
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            latents = self.vae.encode(batch["image"].to(self.device)).latent_dist.sample(generator).double()
            stats += torch.stack(
                [torch.tensor(latents.numel(), device=self.device), latents.sum(), latents.pow(2).sum()]
            )
        self.vae.train(was_training)
        if self.trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        if stats[0] < 2:
            raise ValueError("no training images to measure the latent scale on; check the datamodule")
        variance = stats[2] / stats[0] - (stats[1] / stats[0]) ** 2
        factor = float(variance.clamp_min(1e-12).rsqrt())
        self.scaling_factor.fill_(factor)
        self.vae.register_to_config(scaling_factor=factor)
        log.info(
            "VAE latent std %.5f over %d elements -> scaling_factor %.5f", 1 / factor, int(stats[0]), factor
        )
        return factor

    def export(self, out_dir: str, dtype: torch.dtype | None = None) -> Path:
        """Write the VAE to `<out_dir>/vae/` (diffusers layout, safetensors) with the measured scaling_factor.

        Args:
            out_dir: pipeline folder (e.g. data/mini); created if missing.
            dtype: dtype of the stored weights (None: float16 if the system's `fp16` argument is set).

        Raises:
            ValueError: the scaling factor was never measured (call measure_scaling_factor).
        """
        if float(self.scaling_factor) <= 0:
            raise ValueError(
                "the latent scaling factor is not measured yet; call measure_scaling_factor first"
            )
        dtype = dtype or (torch.float16 if self.hparams.fp16 else torch.float32)
        vae = copy.deepcopy(self.vae).cpu().eval()
        vae.register_to_config(scaling_factor=float(self.scaling_factor))
        vae = torch.nn.Module.to(vae, dtype)  # ModelMixin.to warns about fp32 modules; see components
        target = replace_folder(
            Path(out_dir) / "vae", lambda tmp: vae.save_pretrained(tmp, safe_serialization=True)
        )
        log.info("exported the VAE to %s (scaling_factor %.5f)", target, float(self.scaling_factor))
        return target

    def trained_module(self) -> torch.nn.Module:
        return self.vae
