"""MCDM training (paper §3.3, DESIGN.md stage 3): the shared diffusion loop with the MCDM's conditioning,
the 5% reconstruction swap, and an export that the editing pipeline loads on its own.

Pair batches: the target x_B as "image" (or its cached scaled "latent"), the source x_A as "source" (or
"source_latent" + "source_clip"), the target prompt p_b as "caption" and the source prompt p_a as
"source_caption". With probability p_swap a sample becomes a reconstruction: target (x_A, p_a).
Condition dropout (p = 0.2 over the 7 condition subsets) happens in `MCDMConditioning`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from portrait_edit.data.cached_conditions import cache_settings, check_cached_conditions
from portrait_edit.diffusion.conditions import swap_mask
from portrait_edit.diffusion.masks import MASK_AT
from portrait_edit.diffusion.noise import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS
from portrait_edit.images import to_uint8
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.models.mcdm_export import MCDMExportSettings, save_mcdm_export
from portrait_edit.systems.diffusion import DiffusionSystem

# Guidance defaults (supplementary 1.3): image 3, spatial 3, text 5; UniPC, 20 steps.
DEFAULT_SCALES = {"image": 3.0, "spatial": 3.0, "text": 5.0}
# The training noise schedule, as the UniPC sampler's configuration.
SCHEDULER = dict(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
    beta_schedule="scaled_linear", prediction_type="epsilon",
)  # fmt: skip


# Pair-shard members (DESIGN.md §4) -> MCDM batch keys.
SHARD_FIELDS = {
    "tgt.png": "image", "src.png": "source", "tgt.latent.npy": "latent", "src.latent.npy": "source_latent",
    "src.clip.npy": "source_clip",
}  # fmt: skip


def pair_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """A PairShardsDataModule batch (`src.png`, `tgt.png`, `json` with p_a / p_b, optional cached
    `*.npy` conditions) as an MCDM batch; a batch that already has "caption" is returned as it is."""
    if "caption" in batch:
        return batch
    if "json" not in batch:
        raise ValueError(
            f"an MCDM batch needs `caption` or the pair shards' `json`; got keys {sorted(batch)}"
        )
    out = {new: batch[old] for old, new in SHARD_FIELDS.items() if old in batch}
    out["caption"] = [meta["p_b"] for meta in batch["json"]]
    out["source_caption"] = [meta["p_a"] for meta in batch["json"]]
    return out


def swapped(batch: dict[str, Any], swap: torch.Tensor) -> dict[str, Any]:
    """The batch with the rows where `swap` (B,) is True turned into reconstructions: target x_A (image
    and/or latent) and caption p_a."""
    if not swap.any():
        return batch
    out = dict(batch)
    for target, source in (("image", "source"), ("latent", "source_latent")):
        if target in batch:
            if source not in batch:
                raise ValueError(f"the reconstruction swap needs {source!r} next to {target!r} in the batch")
            mask = swap.to(batch[target].device).reshape(-1, *([1] * (batch[target].ndim - 1)))
            out[target] = torch.where(mask, batch[source].to(batch[target]), batch[target])
    if "source_caption" not in batch:
        raise ValueError("the reconstruction swap needs `source_caption` (p_a) in the batch")
    out["caption"] = [
        a if s else b for a, b, s in zip(batch["source_caption"], batch["caption"], swap.tolist())
    ]
    return out


class MCDMSystem(DiffusionSystem):
    """Trains the widened UNet and the image-embedding adapter on pairs.

    Args:
        conditioning: an MCDMConditioning (its ablation switches use_spatial / use_image).
        p_swap: probability of the reconstruction swap (0.05 in the paper).
        scales: guidance scales recorded in the export ({image, spatial, text}; the paper's by default).
        mask_at: where the edit mask is read, recorded in the export: E(x_A) is noised to this share of
            the 20 sampling timesteps (0.5, the 10th, in the paper).
        val_edits: inputs of the first validation batch edited and logged to W&B each validation (0: off).
        other arguments: as DiffusionSystem (paper: lr 5e-6, batch 4, 200k steps, EMA, bf16-mixed).
    """

    def __init__(
        self,
        base: str = "mini",
        conditioning: MCDMConditioning | None = None,
        vae: str | None = None,
        single_file_config: str | None = None,
        p_swap: float = 0.05,
        scales: dict[str, float] | None = None,
        mask_at: float = MASK_AT,
        val_edits: int = 4,
        lr: float = 5e-6,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        use_ema: bool = True,
        ema_decay: float = 0.9999,
        snr_gamma: float | None = None,
        seed: int = 0,
        export_dir: str | None = None,
        export_dtype: str = "float16",
        local_files_only: bool | None = None,
        from_scratch: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        if not 0.0 <= p_swap <= 1.0:
            raise ValueError(f"p_swap must be in [0, 1], got {p_swap}")
        if not 0.0 < mask_at <= 1.0:
            raise ValueError(f"mask_at must be in (0, 1], got {mask_at}")
        conditioning = MCDMConditioning() if conditioning is None else conditioning
        if not isinstance(conditioning, MCDMConditioning):
            raise ValueError(f"MCDMSystem needs an MCDMConditioning, got {type(conditioning).__name__}")
        super().__init__(
            base=base,
            vae=vae,
            single_file_config=single_file_config,
            conditioning=conditioning,
            train_unet=True,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            use_ema=use_ema,
            ema_decay=ema_decay,
            snr_gamma=snr_gamma,
            seed=seed,
            export_dir=export_dir,
            export_dtype=export_dtype,
            local_files_only=local_files_only,
            from_scratch=from_scratch,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.scales = {**DEFAULT_SCALES, **(scales or {})}
        self.val_edits = val_edits
        self._val_batch: dict[str, Any] | None = None
        if set(self.scales) != set(DEFAULT_SCALES):
            raise ValueError(f"scales takes {sorted(DEFAULT_SCALES)}, got {sorted(self.scales)}")

    def setup(self, stage: str) -> None:
        # Conditions cached into the shards must be the ones this conditioning computes online.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        settings = cache_settings(self.conditioning, self.hparams.base, self.hparams.vae)
        for spec in (getattr(datamodule, "train_shards", None), getattr(datamodule, "val_shards", None)):
            if spec:
                check_cached_conditions(spec, settings)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = pair_batch(batch)
        swap = swap_mask(len(batch["caption"]), self.generator, self.hparams.p_swap)
        return swapped(batch, swap)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = pair_batch(batch)
        if batch_idx == 0 and self.val_edits > 0:
            self._val_batch = {k: v[: self.val_edits] for k, v in batch.items()}
        return super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        """Rank 0 edits the first validation inputs (no mask, the export's guidance, UniPC 20 steps) and
        logs them to W&B as `val/edits`: one image per input, x_A | x_B | the edit side by side, captioned
        with p_b. Images logged directly are written into the run folder (a W&B table's images are left in
        a staging folder outside it in offline runs, and lost when the run folder is synced elsewhere)."""
        batch, self._val_batch = self._val_batch, None
        if batch is None or self.global_rank != 0 or self.trainer.sanity_checking:
            return
        from lightning.pytorch.loggers import WandbLogger

        logger = next((lg for lg in self.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None or "source" not in batch or "image" not in batch:
            return
        edits = self.sample_edits(batch)
        strips = torch.cat([batch["source"].to(edits), batch["image"].to(edits), edits], dim=-1)
        pictures = [to_uint8(strip) for strip in strips]
        logger.log_image("val/edits", pictures, step=self.global_step, caption=list(batch["caption"]))

    @torch.no_grad()
    def sample_edits(self, batch: dict[str, Any], steps: int = 20, seed: int = 0) -> torch.Tensor:
        """Edits (B, 3, H, W) in [-1, 1] of the batch's sources toward its captions: 3-way guidance with the
        export's scales, no mask, UniPC, from seeded noise (the live weights, as validation sees them)."""
        batch = pair_batch(batch)
        editor = MCDMEditor(self.unet, self.conditioning, self.scales, SCHEDULER)
        p_a = batch.get("source_caption", batch["caption"])
        return editor.edit(
            batch["source"], p_a, batch["caption"], use_mask=False, steps=steps, seed=seed
        ).images

    @rank_zero_only
    def export(self, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float16) -> list[Path]:
        """A self-contained MCDM folder: the trained `unet/` and `image_adapter/` (EMA weights), the frozen
        VAE, text encoder, tokenizer, image encoder and scheduler of the base, and `mcdm.json` (how the
        conditions are computed, the guidance scales, the mask's noise level and the base it was trained
        from)."""
        final = {name: self.ema[name].module if self.ema else module for name, module in self.trained.items()}
        hp = self.hparams
        trainer = self._trainer
        loss = trainer.callback_metrics.get("train/loss") if trainer is not None else None
        training = {
            "optimizer_steps": self.global_step, "lr": hp.lr, "ema": hp.use_ema, "p_swap": hp.p_swap,
            "p_drop": self.conditioning.p_drop, "last_train_loss": None if loss is None else round(float(loss), 5),
        }  # fmt: skip
        settings = MCDMExportSettings.of(
            self.conditioning,
            base=hp.base,
            vae=hp.vae,
            scales=self.scales,
            mask_at=hp.mask_at,
            training=training,
        )
        save_mcdm_export(
            out_dir, final["unet"], final.get("image_adapter"), self.conditioning, SCHEDULER, settings, dtype
        )
        return [Path(out_dir) / name for name in final]
