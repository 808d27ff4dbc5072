"""The rows of the evaluation (paper Table 1) behind one call: `method(batch)` (data/eval_pairs.py layout).

A `MethodSpec` names a row of the table and how to build it:
- kind "mcdm": an MCDM export (`model`), with the model-made mask (Ours, and the ablation checkpoints
  "w/o Prt", "w/o Spt", "w/o Iemb") or without it (`use_mask: false`, "w/o Mask"); lambda per task
  unless `threshold` is set;
- kind "sdedit": SDEdit at `strength` on the text-to-image base (`model`: a base source; None: the
  evaluation's `base`, so a table names its base once);
- kind "diffedit": DiffEdit on the base (the same);
- references that edit nothing, for the figures an edit is read against: "input" (x_A itself: the SSIM
  an edit must add to), "vae" (x_A's round trip through the VAE of `model`: what an editor on those
  latents keeps at best), "target" (the exact target, mini world: what a perfect edit keeps), "grid" (x_A
  with the best mask any latent-resolution mask of `model`'s VAE can be against the true edit region:
  the mask IoU's ceiling, mini world).
Every method gets the same inputs and per-input seeds, so rows differ only by the method. The call
returns `BaselineEdit`: images float (B, 3, H, W) in [-1, 1] and, for methods that make one, the mask
float (B, H, W) in {0, 1} at image resolution (an MCDM's also with the soft map it was cut from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from portrait_edit.diffusion.conditions import check_scales
from portrait_edit.evaluation.baselines import PARTS, BaselineEdit, DiffEdit, SDEdit
from portrait_edit.loading.components import load_components, vae_roundtrip, vae_scale_factor
from portrait_edit.metrics.image import grid_ceiling_mask
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.tasks import mask_lambda

KINDS = ("mcdm", "sdedit", "diffedit", "input", "vae", "target", "grid")
REFERENCES = ("input", "vae", "target", "grid")


@dataclass
class MethodSpec:
    """One row of the evaluation table.

    Args:
        name: the row's name ("Ours", "SDEdit 0.5", "w/o Mask").
        kind: one of KINDS (module docstring).
        model: the MCDM export folder (mcdm) or the base model source (sdedit, diffedit, vae, grid; None:
            the evaluation's base).
        use_mask: mcdm only: edit with the model-made mask (Eq. 3) or without it.
        keep_source: mcdm only, past the paper: also hold x_A's latents outside the mask at every step.
        threshold: mcdm only: lambda of the mask; None: per task (costume 0.2, expression 0.35).
        strength: sdedit only: the share of the schedule x_A is noised to (0.5, 0.8).
        steps: sampling steps (UniPC 20 for the MCDM; DDIM for the baselines).
        scales: mcdm only: guidance scales {image, spatial, text}, any of them; None: the export's.
        mask_at: mcdm only: the mask's share of the sampling timesteps; None: the export's.
    """

    name: str
    kind: str
    model: str | None = None
    use_mask: bool = True
    keep_source: bool = False
    threshold: float | None = None
    strength: float = 0.5
    steps: int = 20
    scales: dict[str, float] | None = None
    mask_at: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"method {self.name!r}: steps must be >= 1, got {self.steps}")
        if self.keep_source and not (self.kind == "mcdm" and self.use_mask):
            raise ValueError(f"method {self.name!r}: keep_source is for an mcdm row with use_mask")
        if (self.scales is not None or self.mask_at is not None) and self.kind != "mcdm":
            raise ValueError(f"method {self.name!r}: scales and mask_at are for an mcdm row")
        if self.scales is not None:
            self.scales = check_scales(self.scales)
        if self.mask_at is not None and not 0.0 < self.mask_at <= 1.0:
            raise ValueError(f"method {self.name!r}: mask_at must be in (0, 1], got {self.mask_at}")


class MCDMMethod:
    """An MCDM export as a table row: one editor call, each input at its direction's lambda."""

    def __init__(self, spec: MethodSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.editor = MCDMEditor.from_pretrained(spec.model, device=device)

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules it runs (for moving it to a device)."""
        return [self.editor.unet, self.editor.conditioning, self.editor.vae]

    def __call__(self, batch: dict[str, Any]) -> BaselineEdit:
        spec, sources = self.spec, batch["source"]
        result = self.editor.edit(
            sources, batch["p_a"], batch["p_b"], threshold=[mask_lambda(d, spec.threshold) for d in batch["direction"]],
            use_mask=spec.use_mask, keep_source=spec.keep_source, steps=spec.steps, seed=batch["seed"].tolist(),
            scales=spec.scales, mask_at=spec.mask_at,
        )  # fmt: skip
        masks = None if result.masks is None else result.masks.cpu()
        soft = None if result.soft_masks is None else result.soft_masks.cpu()
        return BaselineEdit(result.images.to(sources), masks, soft)


def load_base(spec: MethodSpec, parts: tuple[str, ...], vae: str | None, single_file_config: str | None):
    """The `parts` of the row's base model (float32)."""
    return load_components(
        spec.model, vae=vae, parts=parts, torch_dtype=torch.float32, single_file_config=single_file_config
    )


class BaseModelMethod:
    """SDEdit or DiffEdit on a base model; DiffEdit's latent mask is upsampled to the image size."""

    def __init__(self, spec: MethodSpec, device: str = "cpu", **base: str | None) -> None:
        components = load_base(spec, PARTS, **base)
        for part in ("vae", "unet", "text_encoder"):
            getattr(components, part).to(device)
        self.spec = spec
        if spec.kind == "sdedit":
            self.edit = SDEdit(components, strength=spec.strength, steps=spec.steps)
        else:
            self.edit = DiffEdit(components, steps=spec.steps)

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules it runs (for moving it to a device)."""
        return [self.edit.pipe.unet, self.edit.pipe.vae, self.edit.pipe.text_encoder]

    def __call__(self, batch: dict[str, Any]) -> BaselineEdit:
        sources = batch["source"]
        out = self.edit(sources, batch["p_a"], batch["p_b"], batch["seed"].tolist())
        if out.mask is None:
            return out
        mask = F.interpolate(out.mask[:, None], size=tuple(sources.shape[-2:]), mode="nearest")[:, 0]
        return BaselineEdit(out.images, mask)


class ReferenceMethod:
    """A row that edits nothing (module docstring: input, vae, target, grid)."""

    def __init__(self, spec: MethodSpec, device: str = "cpu", **base: str | None) -> None:
        self.spec = spec
        self.vae = load_base(spec, ("vae",), **base).vae.to(device) if spec.kind in ("vae", "grid") else None

    def modules(self) -> list[torch.nn.Module]:
        return [] if self.vae is None else [self.vae]

    def __call__(self, batch: dict[str, Any]) -> BaselineEdit:
        kind, sources = self.spec.kind, batch["source"]
        if kind == "vae":
            return BaselineEdit(vae_roundtrip(self.vae, sources))
        if kind == "target":
            return BaselineEdit(batch["target"])
        if kind == "grid":
            cell = vae_scale_factor(self.vae)
            return BaselineEdit(sources, grid_ceiling_mask(batch["region"].clamp(0, 1), cell))
        return BaselineEdit(sources)


def build_method(
    spec: MethodSpec, device: str = "cpu", vae: str | None = None, single_file_config: str | None = None
) -> MCDMMethod | BaseModelMethod | ReferenceMethod:
    """The row's method; `vae` / `single_file_config` are the base's (as in load_components), for the
    baselines and the references that read a VAE."""
    if spec.kind in ("mcdm", "sdedit", "diffedit", "vae", "grid") and not spec.model:
        where = "`mcdm` (an MCDM export)" if spec.kind == "mcdm" else "`base`"
        raise ValueError(f"method {spec.name!r}: no model: set the row's model or the evaluation's {where}")
    if spec.kind == "mcdm":
        return MCDMMethod(spec, device)
    base = {"vae": vae, "single_file_config": single_file_config}
    return (ReferenceMethod if spec.kind in REFERENCES else BaseModelMethod)(spec, device, **base)
