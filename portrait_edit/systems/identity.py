"""Trains the identity encoder (stage 1; supplementary 1.1) on the shared diffusion loop.

Everything of Stable Diffusion is frozen; the loss is the denoising loss of the face under "a photo of a
<id> [X]" (IdentityConditioning) plus `embedding_l1` x mean |c_id| (ELITE's regulariser: it keeps the new
words near the scale of real word embeddings, so they compose with the rest of a prompt), and optionally
`identity_contrastive` x InfoNCE between the c_id of two views of each person (batches that carry a
"reference" view: WorldFacesDataModule(cross_view=true)), a term beyond the paper that asks c_id to tell
people apart rather than only to help denoise them. Validation adds
identity retrieval: each face's nearest other face by cosine of the flattened c_id should be the same
identity (val/identity_top1; the datamodule's validation set shows every identity twice).
"""

from __future__ import annotations

from typing import Any

import torch

from portrait_edit.metrics.identity import identity_contrastive_loss, identity_retrieval_top1
from portrait_edit.models.identity_conditioning import IdentityConditioning
from portrait_edit.systems.diffusion import DiffusionSystem


class IdentityEncoderSystem(DiffusionSystem):
    """DiffusionSystem with a frozen UNet and an `IdentityConditioning`.

    Args:
        base: source of the SD parts and the CLIP image encoder (preset, folder, single file, hub id).
        conditioning: the identity conditioning (None: IdentityConditioning() with its defaults).
        embedding_l1: weight of mean |c_id| in the loss (0.01 as in ELITE).
        identity_contrastive: weight of the InfoNCE term between the c_id of the denoised face and of its
            "reference" view (0: the paper's loss; > 0 needs batches with a "reference").
        contrastive_temperature: its softmax temperature over cosine similarities.
        vae, single_file_config, lr, weight_decay, warmup_steps, use_ema, ema_decay, snr_gamma, seed,
        export_dir, export_dtype, local_files_only: as in DiffusionSystem; the export writes `<export_dir>/identity_encoder/`.
    """

    def __init__(
        self,
        base: str = "mini",
        conditioning: IdentityConditioning | None = None,
        vae: str | None = None,
        single_file_config: str | None = None,
        embedding_l1: float = 0.01,
        identity_contrastive: float = 0.0,
        contrastive_temperature: float = 0.1,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        use_ema: bool = False,
        ema_decay: float = 0.999,
        snr_gamma: float | None = None,
        seed: int = 0,
        export_dir: str | None = None,
        export_dtype: str = "float32",
        local_files_only: bool | None = None,
    ) -> None:
        if embedding_l1 < 0:
            raise ValueError(f"embedding_l1 must be >= 0, got {embedding_l1}")
        if identity_contrastive < 0 or contrastive_temperature <= 0:
            raise ValueError(
                f"identity_contrastive must be >= 0 and contrastive_temperature > 0, got {identity_contrastive}, "
                f"{contrastive_temperature}"
            )
        super().__init__(
            base=base,
            vae=vae,
            single_file_config=single_file_config,
            conditioning=IdentityConditioning() if conditioning is None else conditioning,
            train_unet=False,
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
        )
        self._val_embeds: list[torch.Tensor] = []
        self._val_ids: list[torch.Tensor] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        identity = self.conditioning.identity(batch)  # (B, K, D), computed once: loss and penalty share it
        denoising = super().training_step({**batch, "identity_embeds": identity}, batch_idx)
        penalty = identity.abs().mean()
        self.log("train/embedding_l1", penalty, batch_size=len(identity))
        loss = denoising + self.hparams.embedding_l1 * penalty
        if self.hparams.identity_contrastive > 0:
            if "reference" not in batch or "identity" not in batch:
                raise ValueError(
                    "identity_contrastive > 0 needs two views of each person per batch ('reference' and "
                    "'identity'): use WorldFacesDataModule(cross_view=true), or set identity_contrastive: 0"
                )
            own = self.conditioning.identity({"image": batch["image"]})  # c_id of the denoised view itself
            ids = torch.as_tensor(batch["identity"], device=identity.device)
            contrastive = identity_contrastive_loss(
                identity.flatten(1), own.flatten(1), ids, self.hparams.contrastive_temperature
            )
            self.log("train/contrastive", contrastive, batch_size=len(identity))
            loss = loss + self.hparams.identity_contrastive * contrastive
        self.log("train/total", loss, batch_size=len(identity))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_embeds, self._val_ids = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        identity = self.conditioning.identity(batch)
        if "identity" in batch:
            self._val_embeds.append(identity.flatten(1).float())
            self._val_ids.append(torch.as_tensor(batch["identity"], device=identity.device))
        return super().validation_step({**batch, "identity_embeds": identity}, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if len(self._val_embeds) == 0:
            return
        embeds, ids = torch.cat(self._val_embeds), torch.cat(self._val_ids)
        # Gathered over ranks: retrieval needs every face of the validation set.
        embeds = self.all_gather(embeds).flatten(0, 1) if self.trainer.world_size > 1 else embeds
        ids = self.all_gather(ids).flatten() if self.trainer.world_size > 1 else ids
        if len(ids) > ids.unique().numel():  # some identity shown twice (FFHQ: every face its own identity)
            self.log("val/identity_top1", identity_retrieval_top1(embeds, ids).float().mean(), prog_bar=True)
