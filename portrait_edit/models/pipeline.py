"""`PortraitEditPipeline`: any MCDM export (ours, or a converted release) as a diffusers pipeline.

A thin `diffusers.DiffusionPipeline` over `MCDMEditor` (no second implementation: the mask, Eq. 3, the kept
source and the seeding are the editor's, so an edit here equals `portrait-edit predict`'s for the same
seed and settings):

    pipe = PortraitEditPipeline.from_pretrained("data/mini/mcdm").to("cuda", torch.bfloat16)
    out = pipe(image, direction="santa", gender="woman", seed=0)       # or prompt= / source_prompt=
    out.images[0].save("santa.png"); out.masks[0]

`save_pretrained` writes the export format (and a model_index.json naming this class), so the round trip
edits identically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler
from diffusers.utils import BaseOutput
from PIL import Image

from portrait_edit.images import load_image, square_face, to_uint8
from portrait_edit.loading.components import SDComponents
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_export import MCDMExportSettings, save_mcdm_export
from portrait_edit.tasks import mask_lambda, prompts_for


@dataclass
class PortraitEditOutput(BaseOutput):
    """images: the edits (PIL images); masks: the edit masks (PIL, mode L) or None without the mask."""

    images: list[Image.Image]
    masks: list[Image.Image] | None


class PortraitEditPipeline(DiffusionPipeline):
    """Mask-guided portrait editing with a trained MCDM (models/editor.py).

    Args:
        unet, vae, text_encoder, tokenizer, image_encoder, image_adapter, scheduler: an export's parts
            (`from_pretrained` loads them from an export folder).
        settings: the export's mcdm.json (`MCDMExportSettings`: how its conditions are computed, scales, mask_at).
    """

    def __init__(
        self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, image_encoder: Any, image_adapter: Any,
        scheduler: Any, settings: MCDMExportSettings | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if settings is None:
            raise ValueError(
                "PortraitEditPipeline needs the export's settings (its mcdm.json); use from_pretrained"
            )
        self.register_modules(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
            image_adapter=image_adapter, scheduler=scheduler,
        )  # fmt: skip
        self.settings = settings
        conditioning = settings.conditioning()
        parts = SDComponents(
            vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder
        )
        conditioning.bind(parts)
        if image_adapter is not None:
            if image_adapter.config != conditioning.adapter.config:
                raise ValueError(
                    f"the image adapter is {image_adapter.config}, the settings need {conditioning.adapter.config}"
                )
            conditioning.adapter = image_adapter
        config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        self.editor = MCDMEditor.from_settings(unet, conditioning.to(unet.dtype), config, settings)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype = torch.float32, **_: Any
    ) -> PortraitEditPipeline:
        """Any MCDM export folder (a `portrait-edit fit` export, a converted release, a `save_pretrained`)."""
        e = MCDMEditor.from_pretrained(folder, dtype=torch_dtype)
        c = e.conditioning
        scheduler = UniPCMultistepScheduler.from_config(e.scheduler_config)
        settings = MCDMExportSettings.load(folder)
        return cls(
            e.unet, e.vae, c.text_encoder, c.tokenizer, c.image_encoder, c.adapter, scheduler, settings
        )

    def save_pretrained(self, folder: str | Path, **_: Any) -> None:
        """Write the export format (loadable by from_pretrained, MCDMEditor and `predict`)."""
        e = self.editor
        settings = self.settings.replace(scales=e.scales, mask_at=e.mask_at)
        save_mcdm_export(
            folder, e.unet, e.conditioning.adapter, e.conditioning, e.scheduler_config, settings, e.unet.dtype
        )
        index = {
            "_class_name": type(self).__name__,
            "_module": __name__,
            "format": "portrait_edit MCDM export",
        }
        (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    def image_tensor(self, image: Image.Image | str | Path | torch.Tensor, size: int) -> torch.Tensor:
        """x_A as (1, 3, size, size) in [-1, 1]: a file through the project's loader, a PIL image
        centre-cropped and resized like the edit job's inputs, or a tensor (3, H, W) / (1, 3, H, W) as is."""
        if isinstance(image, torch.Tensor):
            return (image[None] if image.ndim == 3 else image).float()
        if isinstance(image, (str, Path)):
            image = load_image(image)
        return square_face(image.convert("RGB"), size)[None]

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | str | Path | torch.Tensor,
        direction: str | None = None,
        gender: str | None = None,
        prompt: str | None = None,
        source_prompt: str | None = None,
        scales: dict[str, float] | None = None,
        threshold: float | None = None,
        use_mask: bool = True,
        keep_source: bool = False,
        num_inference_steps: int = 20,
        mask_seeds: int = 10,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        height: int | None = None,
    ) -> PortraitEditOutput:
        """Edit one portrait.

        Args:
            image: x_A: a PIL image, an image file, or a tensor in [-1, 1].
            direction, gender: the edit as the paper's prompts ("santa" and "woman": "a woman, normal
                costume" -> "a woman, santa claus costume"); or give the prompts themselves:
            prompt, source_prompt: p_b and p_a.
            scales: guidance scales {image, spatial, text} (None: the export's).
            threshold: lambda of the mask (None: the direction's task's, 0.2 costume / 0.35 expression).
            use_mask, keep_source: Eq. 3 with the model-made mask; past the paper, x_A kept outside it.
            num_inference_steps, mask_seeds: UniPC steps (20) and the mask's noises (10).
            seed: the edit's seed (its noise is drawn from it: the same edit as `predict` with that seed);
                None: drawn from `generator` (or 0 without one).
            height: side x_A is resized to (None: the UNet's sample size x the VAE's factor).
        """
        if direction is not None:
            if gender is None:
                raise ValueError("a direction's prompts name the person: give gender='man' or 'woman'")
            prompts = prompts_for(direction, gender)
            prompt, source_prompt = prompt or prompts["p_b"], source_prompt or prompts["p_a"]
        if prompt is None or source_prompt is None:
            raise ValueError("give a direction (and gender) or both prompt (p_b) and source_prompt (p_a)")
        if seed is None:
            seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        e = self.editor
        size = height or e.unet.config.sample_size * 2 ** (len(e.vae.config.block_out_channels) - 1)
        lam = threshold if threshold is not None or direction is None else mask_lambda(direction, None)
        result = e.edit(
            self.image_tensor(image, size).to(self.device), [source_prompt], [prompt],
            threshold=0.2 if lam is None else lam, use_mask=use_mask, keep_source=keep_source,
            steps=num_inference_steps, seed=seed, mask_seeds=mask_seeds, scales=scales,
        )  # fmt: skip
        images = [Image.fromarray(to_uint8(x)) for x in result.images]
        masks = (
            None
            if result.masks is None
            else [Image.fromarray(np.uint8(m.cpu().numpy() * 255)) for m in result.masks]
        )
        return PortraitEditOutput(images=images, masks=masks)
