"""One epsilon-prediction training loop for every denoiser of the project (DESIGN.md stages 0, 1 and 3).

What a stage conditions on and which weights learn is a `Conditioning` (models/conditioning.py), chosen in
the config by class_path; the math is in diffusion/noise.py. Batches are dicts with "image" (B, 3, H, W) in
[-1, 1] or an already encoded "latent" (B, 4, h, w) (scaled; then the VAE never runs), plus whatever the
conditioning reads ("caption", "pose", ...).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_only
from torch import nn

from portrait_edit.diffusion.face_weights import face_weights
from portrait_edit.diffusion.noise import (
    add_noise,
    alphas_cumprod_from_betas,
    epsilon_loss,
    fixed_timesteps,
    keyed_generator,
    min_snr_weights,
    rank_generator,
    sample_noise,
    sample_timesteps,
    scaled_linear_betas,
)
from portrait_edit.loading.components import load_components
from portrait_edit.models.conditioning import Conditioning, TextConditioning, scaled_latents
from portrait_edit.models.ema import ema_copy
from portrait_edit.models.export import save_module

log = logging.getLogger(__name__)

# The VAE, text encoder and a frozen UNet stay in eval mode on purpose (see `train`).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

_VALIDATION = 1  # key salt: validation noise never repeats a training stream
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# AdamW's fused kernel (one kernel over every parameter) where torch has one; foreach elsewhere. On the
# CPU it is 5x faster than foreach (200 tensors, 4M parameters: 2.9 vs 14.1 ms a step).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


class DiffusionSystem(LightningModule):
    """Trains a Stable Diffusion UNet (text-to-image) and/or what its conditioning trains (ControlNet, ...).

    Args:
        base: source of the VAE, UNet, text encoder and tokenizer (a preset such as `mini`, a local
            diffusers folder, a single SD checkpoint or a hub id; see loading/networks.py).
        vae: another source of the VAE (None: the base's; RealisticVision's noVAE repo is meant to be used
            with `stabilityai/sd-vae-ft-mse`).
        single_file_config: when `base` is a single SD checkpoint, the preset or local diffusers folder giving
            its architecture (None: the shipped SD 1.5 configs).
        conditioning: how a batch becomes the UNet's inputs (a class_path such as
            portrait_edit.models.conditioning.PoseControlConditioning); None: TextConditioning() (not a
            lazy_instance: that one object would be shared, and bound, by every system built in-process).
        train_unet: train the UNet (text-to-image); False freezes it (ControlNet, identity encoder, ...).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear learning-rate warmup from 0.
        use_ema: keep an exponential moving average of the trained weights (saved in checkpoints, exported).
        ema_decay: EMA decay per optimizer step, after a warmup (models/ema.py).
        snr_gamma: Min-SNR-gamma loss weighting (`min_snr_weights`; 5.0 converges several times faster in
            short runs); None: plain MSE. val/loss is always the plain MSE, comparable across settings.
        seed: seed of the per-rank noise/timestep generator (rank r uses seed + r).
        export_dir: when set, `export` writes the trained parts there (diffusers layout) at the end of fit.
        export_dtype: dtype of the exported weights: float32, float16 or bfloat16.
        local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
        face_weight: extra loss weight on the face (`data.keypoints.face_weights` on the latent grid, from
            the batch's "keypoints"); 0: plain MSE. Training loss only: val/loss stays the plain MSE.
        face_sigma: width of the face weighting relative to the spread of the face keypoints.
        from_scratch: start the UNet from random weights (seeded) of the base's architecture instead of
            its pretrained ones (the MCDM's "w/o pretrained" ablation).
        gradient_checkpointing: recompute the UNet's activations in the backward pass (less memory, about
            a third more time).
        latent_cache: keep each training image's latents (on the CPU, keyed by the batch's "index", which
            the datamodule must give) after its first encoding: the VAE is frozen and `encode` takes the
            posterior mean, so later epochs get the same latents without running the encoder (a quarter
            of a mini UNet step). Per rank; rebuilt after a resume; 2 KB per 16 x 16 x 8 image.
    """

    def __init__(
        self,
        base: str = "mini",
        conditioning: Conditioning | None = None,
        train_unet: bool = True,
        vae: str | None = None,
        single_file_config: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        use_ema: bool = False,
        ema_decay: float = 0.999,
        snr_gamma: float | None = None,
        seed: int = 0,
        export_dir: str | None = None,
        export_dtype: str = "float16",
        local_files_only: bool | None = None,
        face_weight: float = 0.0,
        face_sigma: float = 1.5,
        from_scratch: bool = False,
        gradient_checkpointing: bool = False,
        latent_cache: bool = False,
    ) -> None:
        super().__init__()
        if face_weight < 0 or face_sigma <= 0:
            raise ValueError(f"need face_weight >= 0 and face_sigma > 0; got {face_weight}, {face_sigma}")
        if export_dtype not in DTYPES:
            raise ValueError(f"export_dtype must be one of {sorted(DTYPES)}, got {export_dtype!r}")
        if (
            not 0.0 <= ema_decay <= 1.0
            or (snr_gamma is not None and snr_gamma <= 0)
            or min(seed, warmup_steps) < 0
        ):
            raise ValueError(
                f"need ema_decay in [0, 1], snr_gamma > 0 (5.0 is usual) or null, seed >= 0 and warmup_steps >= 0; "
                f"got {ema_decay}, {snr_gamma}, {seed}, {warmup_steps}"
            )
        self.save_hyperparameters(ignore=["conditioning"])
        # Plain attributes too: under LightningCLI a subclass's hparams hold only ITS signature's arguments.
        self.face_weight, self.face_sigma, self.latent_cache = face_weight, face_sigma, latent_cache
        conditioning = TextConditioning() if conditioning is None else conditioning
        parts = ("vae", "unet", *conditioning.parts)
        # Training keeps float32 master weights whatever the stored dtype; bf16-mixed autocasts the compute.
        components = load_components(
            base, vae=vae, parts=parts, torch_dtype=torch.float32, local_files_only=local_files_only,
            single_file_config=single_file_config, seed=seed,
        )  # fmt: skip
        if from_scratch:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random_unet = type(components.unet).from_config(components.unet.config)
            components = dataclasses.replace(components, unet=random_unet)
        if gradient_checkpointing:
            components.unet.enable_gradient_checkpointing()
        self.vae = components.vae.requires_grad_(False).eval()
        self.unet = components.unet.requires_grad_(train_unet)
        conditioning.bind(components)
        self.conditioning = conditioning
        self.register_buffer(
            "alphas_cumprod", alphas_cumprod_from_betas(scaled_linear_betas()), persistent=False
        )
        self.trained = {"unet": self.unet} if train_unet else {}
        self.trained.update(conditioning.trainable_modules())
        if not self.trained:
            raise ValueError(
                "nothing to train: set train_unet=true or use a conditioning with trainable modules"
            )
        self.ema = nn.ModuleDict(
            {name: ema_copy(module, ema_decay) for name, module in self.trained.items()} if use_ema else {}
        )
        self.generator: torch.Generator | None = None
        self._latents: dict[int, torch.Tensor] = {}  # latent_cache: dataset index -> latents (CPU)

    def train(self, mode: bool = True) -> DiffusionSystem:
        super().train(mode)
        self.vae.eval()  # frozen parts never run in train mode (no dropout)
        self.unet.train(mode and self.hparams.train_unet)
        self.ema.eval()
        self.conditioning.train(mode)
        return self

    def encode(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's scaled latents, float32 (B, 4, h, w): "latent" when present (the VAE never runs), else
        the VAE posterior mean of "image" times scaling_factor (the mean, so cached latents give the same
        loss). float32 even under autocast: the noise target must not be rounded to bf16."""
        if "latent" in batch:
            return batch["latent"].to(self.device, torch.float32)
        if self.latent_cache and self.training:
            return self._cached_latents(batch)
        return scaled_latents(self.vae, batch["image"])

    def _cached_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        if "index" not in batch:
            raise ValueError(
                "latent_cache needs an `index` per item in the training batches (WorldImagesDataModule "
                "gives it); set latent_cache: false for this datamodule"
            )
        indices = [int(i) for i in batch["index"]]
        missing = [k for k, i in enumerate(indices) if i not in self._latents]
        if missing:
            fresh = scaled_latents(self.vae, batch["image"][missing]).cpu()
            self._latents.update((indices[k], latent) for k, latent in zip(missing, fresh))
        return torch.stack([self._latents[i] for i in indices]).to(self.device)

    def denoising_loss(
        self,
        batch: dict[str, Any],
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None,
        snr_gamma: float | None = None,
        face_weight: float = 0.0,
    ) -> torch.Tensor:
        """Epsilon loss of the UNet on `latents` (B, 4, h, w) noised with `noise` (same shape) at `timesteps`
        (B,), conditioned on `batch`; Min-SNR weighted when `snr_gamma` is set, face weighted when
        `face_weight` > 0."""
        noise, timesteps = noise.to(latents), timesteps.to(latents.device)
        noisy = add_noise(latents, noise, timesteps, self.alphas_cumprod)
        kwargs = self.conditioning(batch, noisy, timesteps, generator)
        pred = self.unet(timestep=timesteps, **kwargs).sample
        weights = None if snr_gamma is None else min_snr_weights(timesteps, self.alphas_cumprod, snr_gamma)
        positions = None
        if face_weight > 0:
            if "keypoints" not in batch or "image" not in batch:
                raise ValueError(
                    "face_weight > 0 needs `keypoints` and `image` in the batches (WorldImagesDataModule)"
                )
            positions = face_weights(
                batch["keypoints"].to(latents.device), tuple(batch["image"].shape[-2:]), tuple(latents.shape[-2:]),
                face_weight, self.face_sigma,
            )  # fmt: skip
        return epsilon_loss(pred, noise, weights, positions)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # A generator per step, keyed by (seed, rank, step, micro-batch): a resumed run draws what an
        # uninterrupted one would have.
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        self.generator = rank_generator(
            self.hparams.seed, self.global_rank, self.global_step, batch_idx % accumulate
        )
        batch = self.prepare_batch(batch)
        latents = self.encode(batch)
        noise = sample_noise(latents.shape, self.generator)
        timesteps = sample_timesteps(len(latents), self.generator, len(self.alphas_cumprod))
        loss = self.denoising_loss(
            batch, latents, noise, timesteps, self.generator, self.hparams.snr_gamma, self.face_weight
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(latents))
        return loss

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Hook: change a training batch before encoding (with `self.generator` for any randomness)."""
        return batch

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA follows each optimizer step (not each accumulated micro-batch), here rather than in
        # on_train_batch_end: ModelCheckpoint saves in ITS on_train_batch_end, which runs before ours.
        super().optimizer_step(*args, **kwargs)
        for name, module in self.trained.items() if self.ema else ():
            self.ema[name].update_parameters(module)

    def on_fit_start(self) -> None:
        # The lr of a config is tuned for one effective batch (the paper's MCDM: 4 on one GPU).
        data = getattr(self.trainer, "datamodule", None)
        per_rank = getattr(data, "batch_size", None) or (
            data.hparams.get("batch_size") if data is not None else None
        )
        if per_rank and self.trainer.is_global_zero:
            world, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
            log.info(
                "effective batch %d = %d per rank x %d ranks x %d accumulated, at lr %g",
                per_rank * world * accumulate, per_rank, world, accumulate, self.hparams.lr,
            )  # fmt: skip

    def on_fit_end(self) -> None:
        # Not on_train_end: Lightning skips it when a resumed run has no step left to train, and such a
        # rerun (another export_dir, dtype or editing setting) must still write its export.
        if self.hparams.export_dir:
            self.export(self.hparams.export_dir, DTYPES[self.hparams.export_dtype])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Deterministic: fixed timesteps spread over the schedule, noise keyed by (seed, rank, batch),
        # no caption dropout (no generator), plain MSE.
        latents = self.encode(batch)
        generator = keyed_generator(self.hparams.seed, self.global_rank, batch_idx, _VALIDATION)
        noise = sample_noise(latents.shape, generator)
        timesteps = fixed_timesteps(len(latents), len(self.alphas_cumprod))
        loss = self.denoising_loss(batch, latents, noise, timesteps, None)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(latents))
        return loss

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:  # fmt: skip
        # Lightning's mixed-precision plugin refuses to clip for any optimizer that "unscales internally"
        # (the fused AdamW), bf16 included, where nothing is scaled: with no loss scaler the gradients are
        # the true ones, so clip them as in full precision. Under a scaler (16-mixed) `_fused_adamw` has
        # picked foreach, and Lightning unscales before clipping.
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and getattr(plugin, "scaler", None) is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _fused_adamw(self) -> bool:
        """AdamW's fused kernel where torch has one, unless a loss scaler must unscale the gradients before
        they are clipped (16-mixed with gradient clipping: the fused step unscales inside itself)."""
        trainer = self._trainer
        scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
        clipped = bool(trainer is not None and trainer.gradient_clip_val)
        return self.device.type in FUSED_ADAMW_DEVICES and not (scaler is not None and clipped)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for module in self.trained.values() for p in module.parameters() if p.requires_grad]
        fused = self._fused_adamw()
        optimizer = torch.optim.AdamW(
            params,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            fused=fused,
            foreach=None if fused else True,
        )
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @rank_zero_only
    def export(self, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float16) -> list[Path]:
        """Write each trained part (`unet/`, `controlnet/`, ...) into `out_dir` in the diffusers layout
        (config.json + safetensors), from the EMA weights when EMA is on. Each part is written to a hidden
        temporary folder and renamed into place, so a reader never sees half a model; other parts already in
        `out_dir` (a VAE, a text encoder) are left alone.

        Returns:
            the written part folders.
        """
        return [
            save_module(self.ema[name].module if self.ema else module, Path(out_dir) / name, dtype)
            for name, module in self.trained.items()
        ]
