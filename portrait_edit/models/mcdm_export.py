"""The MCDM export: one folder that `MCDMEditor.from_pretrained`, `predict`, `validate` and the diffusers
pipeline load, and its settings file `mcdm.json`, typed (`MCDMExportSettings`).

A folder holds `unet/`, `image_adapter/` (with the image condition), the frozen `vae/`, `text_encoder/`,
`tokenizer/`, `image_encoder/`, a UniPC `scheduler/`, `mcdm.json` and a model card (README.md). Every
part is swapped in whole (atomic.replace_folder). mcdm.json says how the conditions are computed (the
MCDMConditioning it was trained with), how it edits (guidance scales, the mask's step `mask_at`, the
measured lambda range) and where it came from; every writer (the MCDM fit, the release converter, the
pipeline's save_pretrained, the scale tuner, the mask calibration) goes through `MCDMExportSettings`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UniPCMultistepScheduler
from torch import nn

from portrait_edit.atomic import atomic_write_bytes, replace_folder
from portrait_edit.diffusion.conditions import check_scales
from portrait_edit.diffusion.masks import MASK_AT
from portrait_edit.models.export import save_module
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.models.model_card import model_card
from portrait_edit.models.official_adapter import KIND as OFFICIAL

SETTINGS_FILE = "mcdm.json"
LEGACY_KEYS = {"image_size": "clip_image_size"}  # mcdm.json keys of earlier exports -> today's


@dataclass
class MCDMExportSettings:
    """mcdm.json of an MCDM export.

    How the conditions are computed (MCDMConditioning's settings):
        use_spatial, use_image: which conditions the model reads.
        num_image_tokens, latent_pool, mlp_ratio: the image adapter's sizes.
        clip_layer, clip_image_size, image_mean, image_std: how x_A is shown to the CLIP image encoder.
        adapter: "ours" or "official" (the released checkpoints' adapter); spatial_null: "black" or "zeros".
    How it edits:
        scales: guidance scales {image, spatial, text} (Eq. 1).
        mask_at: the share of the sampling timesteps E(x_A) is noised to for the mask.
        mask_range: the lambdas whose masks are neither empty nor everything (tools/calibrate_mask.py);
            None: not measured.
        scheduler, num_inference_steps: the sampler the export was made for (UniPC, 20).
    Where it came from (any may be None):
        base, vae: the base model it was trained from; training: the run's settings; converted_from: the
        released checkpoint; demo_scales: the release demo's scales; scales_tuned, mask_range_measured:
        how the scales and the range were picked.
    """

    use_spatial: bool
    use_image: bool
    num_image_tokens: int
    latent_pool: int
    mlp_ratio: float
    clip_layer: int
    clip_image_size: int
    image_mean: list[float]
    image_std: list[float]
    scales: dict[str, float]
    adapter: str = "ours"
    spatial_null: str = "black"
    mask_at: float = MASK_AT
    mask_range: list[float] | None = None
    scheduler: str = "UniPC"
    num_inference_steps: int = 20
    base: str | None = None
    vae: str | None = None
    training: dict[str, Any] | None = None
    converted_from: str | None = None
    demo_scales: dict[str, float] | None = None
    scales_tuned: dict[str, Any] | None = None
    mask_range_measured: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.scales = check_scales(self.scales, complete=True)
        if not 0.0 < self.mask_at <= 1.0:
            raise ValueError(f"mask_at must be in (0, 1], got {self.mask_at}")
        if self.mask_range is not None:
            self.mask_range = [float(v) for v in self.mask_range]

    @classmethod
    def of(cls, conditioning: MCDMConditioning, **rest: Any) -> MCDMExportSettings:
        """The settings of a model with this conditioning, plus `rest` (scales, mask_at, base, ...)."""
        c = conditioning
        num_tokens, pool, ratio = c.adapter_sizes
        if c.adapter_kind == OFFICIAL and c.adapter is not None:
            num_tokens = c.adapter.config.clip_tokens
        layer, size, mean, std = c.clip_view
        return cls(
            use_spatial=c.use_spatial, use_image=c.use_image, adapter=c.adapter_kind, spatial_null=c.spatial_null,
            num_image_tokens=num_tokens, latent_pool=pool, mlp_ratio=ratio, clip_layer=layer,
            clip_image_size=size, image_mean=list(mean), image_std=list(std), **rest,
        )  # fmt: skip

    def conditioning(self, folder: str | Path | None = None) -> MCDMConditioning:
        """The (unbound) conditioning these settings describe; with `folder`, its trained adapter and image
        encoder are read from there at bind time (None: the caller gives them)."""
        use_image = self.use_image and folder is not None
        return MCDMConditioning(
            p_drop=0.0, use_spatial=self.use_spatial, use_image=self.use_image,
            num_image_tokens=self.num_image_tokens, latent_pool=self.latent_pool, mlp_ratio=self.mlp_ratio,
            clip_layer=self.clip_layer, clip_image_size=self.clip_image_size, image_mean=self.image_mean,
            image_std=self.image_std, adapter=str(Path(folder) / "image_adapter") if use_image else None,
            image_encoder=str(folder) if use_image else None, adapter_kind=self.adapter,
            spatial_null=self.spatial_null,
        )  # fmt: skip

    def replace(self, **changes: Any) -> MCDMExportSettings:
        """A copy with `changes` set (checked as a new record)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The mcdm.json record: every field, those that are None left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def save(self, folder: str | Path) -> Path:
        """Write `folder`/mcdm.json (atomically)."""
        path = Path(folder) / SETTINGS_FILE
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> MCDMExportSettings:
        """Read `folder`/mcdm.json; a ValueError names the file and what is wrong with it."""
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            raise ValueError(
                f"{folder} is not an MCDM export (no {SETTINGS_FILE}); export one with an MCDM fit"
            )
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        record = {LEGACY_KEYS.get(k, k): v for k, v in record.items()}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(fields)}")
        try:
            return cls(**record)
        except (TypeError, ValueError) as exc:  # a required setting missing, a value out of range
            raise ValueError(f"{path}: {exc}") from exc


def save_mcdm_export(
    out: str | Path,
    unet: nn.Module,
    adapter: nn.Module | None,
    conditioning: MCDMConditioning,
    scheduler_config: dict[str, Any],
    settings: MCDMExportSettings,
    dtype: torch.dtype,
) -> Path:
    """Write a self-contained MCDM export (module docstring) of a bound `conditioning`.

    Args:
        unet, adapter: the (widened) UNet and the image adapter to write (the EMA copies of a training run);
            adapter None without the image condition.
        conditioning: the bound conditioning whose frozen encoders to write.
        scheduler_config: the UniPC configuration (the training noise schedule).
        settings: mcdm.json.
        dtype: dtype of every stored weight.
    """
    out = Path(out)
    c = conditioning
    modules = {"unet": unet, "vae": c._vae[0], "text_encoder": c.text_encoder}
    if c.use_image:
        modules |= {"image_adapter": adapter, "image_encoder": c.image_encoder}
    for name, module in modules.items():
        save_module(module, out / name, dtype)
    replace_folder(out / "tokenizer", c.tokenizer.save_pretrained)
    replace_folder(out / "scheduler", UniPCMultistepScheduler.from_config(scheduler_config).save_pretrained)
    card = model_card(settings, image_encoder_source=c.image_encoder_source)
    atomic_write_bytes(out / "README.md", card.encode())
    settings.save(out)
    return out
