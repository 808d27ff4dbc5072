"""The paper's baselines (Table 1) on the text-to-image base model: SDEdit and DiffEdit.

Both are diffusers' own pipelines over our loaded parts, so the baselines are the reference
implementations, not our re-readings of them:
- `SDEdit` (Meng et al.): x_A noised to `strength` of the schedule (0.5 and 0.8 in Table 1), then denoised
  under p_b with classifier-free guidance (`StableDiffusionImg2ImgPipeline`, DDIM).
- `DiffEdit` (Couairon et al.): a mask from the difference of the guided noise predictions under p_a and
  p_b, DDIM inversion of x_A under p_a, then denoising under p_b (negative prompt p_a) where the mask is
  on, the inverted trajectory where it is off (`StableDiffusionDiffEditPipeline`).
Each input gets its own generator from its seed and runs alone: diffusers' DiffEdit mask threshold depends
on the whole batch (the mean over it), and per-input runs make every baseline edit independent of the
batch it came in. Images are float (B, 3, H, W) in [-1, 1] in and out; masks float (B, h, w) in {0, 1} at
latent resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    StableDiffusionDiffEditPipeline,
    StableDiffusionImg2ImgPipeline,
)

from portrait_edit.loading.components import SDComponents

PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")  # what the baselines load from a base


@dataclass
class BaselineEdit:
    """images: float (B, 3, H, W) in [-1, 1]; mask: float (B, h, w) in {0, 1}, or None (no mask);
    soft_mask: the soft map (B, h, w) in [0, 1] the mask was cut from, for methods that have one."""

    images: torch.Tensor
    mask: torch.Tensor | None = None
    soft_mask: torch.Tensor | None = None


def _parts(components: SDComponents) -> dict:
    missing = [name for name in PARTS if getattr(components, name) is None]
    if missing:
        raise ValueError(f"the baselines need the base's {list(PARTS)}; {missing} were not loaded")
    return dict(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _check(sources: torch.Tensor, p_a: list[str], p_b: list[str], seeds: list[int]) -> None:
    if sources.ndim != 4 or not len(sources) == len(p_a) == len(p_b) == len(seeds):
        raise ValueError(
            f"need sources (B, 3, H, W) with B prompts p_a, p_b and seeds; got {tuple(sources.shape)}, "
            f"{len(p_a)}, {len(p_b)}, {len(seeds)}"
        )


class SDEdit:
    """SDEdit at `strength` (the share of the schedule x_A is noised to) with `steps` DDIM steps for the
    full schedule (so int(steps * strength) are run) and classifier-free guidance `guidance`."""

    def __init__(
        self, components: SDComponents, strength: float, steps: int = 50, guidance: float = 7.5
    ) -> None:
        if not 0 < strength <= 1 or steps < 1:
            raise ValueError(f"need 0 < strength <= 1 and steps >= 1; got {strength}, {steps}")
        self.pipe = StableDiffusionImg2ImgPipeline(**_parts(components))
        self.pipe.set_progress_bar_config(disable=True)
        self.strength, self.steps, self.guidance = strength, steps, guidance

    @torch.no_grad()
    def __call__(
        self, sources: torch.Tensor, p_a: list[str], p_b: list[str], seeds: list[int]
    ) -> BaselineEdit:
        _check(sources, p_a, p_b, seeds)
        out = [
            self.pipe(
                prompt=[prompt],
                image=(source[None] + 1) / 2,  # the pipeline takes [0, 1] tensors
                strength=self.strength,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=torch.Generator().manual_seed(int(seed)),
                output_type="pt",
            ).images
            for source, prompt, seed in zip(sources, p_b, seeds)
        ]
        return BaselineEdit(torch.cat(out).to(sources) * 2 - 1)


class DiffEdit:
    """DiffEdit: mask from `mask_maps` noised copies at `mask_strength`, DDIM inversion to
    `inpaint_strength` of the schedule, `steps` DDIM steps for the full schedule, guidance `guidance`."""

    def __init__(
        self,
        components: SDComponents,
        steps: int = 50,
        guidance: float = 7.5,
        inpaint_strength: float = 0.8,
        mask_strength: float = 0.5,
        mask_maps: int = 10,
    ) -> None:
        parts = _parts(components)
        parts["inverse_scheduler"] = DDIMInverseScheduler.from_config(components.scheduler.config)
        self.pipe = StableDiffusionDiffEditPipeline(**parts)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.guidance = steps, guidance
        self.inpaint_strength, self.mask_strength, self.mask_maps = inpaint_strength, mask_strength, mask_maps

    @torch.no_grad()
    def __call__(
        self, sources: torch.Tensor, p_a: list[str], p_b: list[str], seeds: list[int]
    ) -> BaselineEdit:
        _check(sources, p_a, p_b, seeds)
        images, masks = [], []
        for source, prompt_a, prompt_b, seed in zip(sources, p_a, p_b, seeds):
            image = (source[None] + 1) / 2
            mask = self.pipe.generate_mask(
                image=image,
                source_prompt=[prompt_a],
                target_prompt=[prompt_b],
                num_maps_per_mask=self.mask_maps,
                mask_encode_strength=self.mask_strength,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=torch.Generator().manual_seed(int(seed)),
            )
            inverted = self.pipe.invert(
                prompt=[prompt_a],
                image=image,
                num_inference_steps=self.steps,
                inpaint_strength=self.inpaint_strength,
                guidance_scale=self.guidance,
                generator=torch.Generator().manual_seed(int(seed)),
            ).latents
            edited = self.pipe(
                prompt=[prompt_b],
                negative_prompt=[prompt_a],
                mask_image=mask,
                image_latents=inverted,
                inpaint_strength=self.inpaint_strength,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=torch.Generator().manual_seed(int(seed)),
                output_type="pt",
            ).images
            images.append(edited)
            masks.append(torch.as_tensor(mask, dtype=torch.float32).reshape(1, *mask.shape[-2:]))
        return BaselineEdit(torch.cat(images).to(sources) * 2 - 1, torch.cat(masks).to(sources.device))
