"""Text-to-image (optionally pose-ControlNet) samples of a base model, for previews and base-model checks.

Built on diffusers' StableDiffusionPipeline / StableDiffusionControlNetPipeline over our loaded
components, with classifier-free guidance (its unconditional branch is the encoder output of "", the null
text TextConditioning trains with). Each job's noise comes from its own CPU generator seeded by the job,
so an image depends on its seed alone, not on the batch or the device count.

Writes into `output_dir`: `images/<key>.png`, `samples.json` (prompt, seed, the pose's keypoints per
image: what a head-position check needs) and `sheet.png`, a contact sheet with a row per prompt, all
written atomically. Under DDP each rank writes its own `samples-r<rank>.json` / `sheet-r<rank>.png`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
from lightning.pytorch import LightningModule
from PIL import Image, ImageDraw

from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.images import encode_png
from portrait_edit.loading.components import load_components, vae_scale_factor
from portrait_edit.world import draw_pose, pose_keypoints, sample_pose

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LABEL_WIDTH = 192  # pixels of the prompt column of the contact sheet


class SamplingSystem(LightningModule):
    """Draws one image per prompt job ({key, prompt, seed}; see data/prompt_jobs.py).

    Args:
        base: source of the VAE, UNet, text encoder, tokenizer and noise schedule (preset, folder, file, id).
        controlnet: source of a pose ControlNet; None: plain text-to-image (the pose is still recorded).
        scheduler: diffusers scheduler class for sampling, e.g. DDIMScheduler or UniPCMultistepScheduler.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale (1 disables guidance).
        image_size: output side in pixels (a multiple of the VAE's downscale).
        output_dir: folder of the images, samples.json and the contact sheet.
        dtype: weights dtype: float32, float16 or bfloat16 (float16 needs a GPU).
        local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
    """

    def __init__(
        self,
        base: str = "mini",
        controlnet: str | None = None,
        scheduler: str = "DDIMScheduler",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        image_size: int = 64,
        output_dir: str = "outputs/mini/samples",
        dtype: str = "float32",
        local_files_only: bool | None = None,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if num_inference_steps < 1 or guidance_scale < 0:
            raise ValueError(
                f"need num_inference_steps >= 1 and guidance_scale >= 0, got {num_inference_steps}"
            )
        self.save_hyperparameters()
        parts = ("vae", "unet", "text_encoder", "tokenizer", "scheduler") + (
            ("controlnet",) if controlnet else ()
        )
        c = load_components(
            base,
            controlnet=controlnet,
            parts=parts,
            scheduler_kind=scheduler,
            torch_dtype=DTYPES[dtype],
            local_files_only=local_files_only,
        )
        scale = vae_scale_factor(c.vae)
        if image_size % scale:
            raise ValueError(f"image_size {image_size} must be a multiple of the VAE's downscale {scale}")
        # Registered as submodules so Lightning moves them to the device; the pipeline holds the same objects.
        self.vae, self.unet, self.text_encoder, self.controlnet = c.vae, c.unet, c.text_encoder, c.controlnet
        common = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        parts = {"vae": c.vae, "text_encoder": c.text_encoder, "tokenizer": c.tokenizer, "unet": c.unet}
        if controlnet:
            self.pipeline = StableDiffusionControlNetPipeline(
                **parts, controlnet=c.controlnet, scheduler=c.scheduler, **common
            )
        else:
            self.pipeline = StableDiffusionPipeline(**parts, scheduler=c.scheduler, **common)
        self.pipeline.set_progress_bar_config(disable=True)
        self.records: list[dict[str, Any]] = []

    def on_predict_start(self) -> None:
        self.records = []

    def pose_of(self, seed: int) -> np.ndarray:
        """Keypoints float32 (18, 3) of the mini-world pair with this seed (its pose stream, [seed, 1])."""
        return pose_keypoints(sample_pose(np.random.default_rng([seed, 1])), self.hparams.image_size)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        size = self.hparams.image_size
        keypoints = [self.pose_of(job["seed"]) for job in batch]
        kwargs: dict[str, Any] = {}
        if self.controlnet is not None:
            kwargs["image"] = [Image.fromarray(draw_pose(k, size, size)) for k in keypoints]
        images = self.pipeline(
            prompt=[job["prompt"] for job in batch],
            height=size,
            width=size,
            num_inference_steps=self.hparams.num_inference_steps,
            guidance_scale=self.hparams.guidance_scale,
            generator=[torch.Generator().manual_seed(job["seed"]) for job in batch],
            output_type="np",
            **kwargs,
        ).images  # float (B, H, W, 3) in [0, 1]
        images = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        out = Path(self.hparams.output_dir) / "images"
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for job, image, points in zip(batch, images, keypoints):
            atomic_write_bytes(out / f"{job['key']}.png", encode_png(image))
            records.append({**job, "keypoints": points.tolist(), "image": image})
        self.records.extend(records)
        return [{k: v for k, v in r.items() if k != "image"} for r in records]

    def on_predict_epoch_end(self) -> None:
        suffix = f"-r{self.global_rank}" if self.trainer.world_size > 1 else ""
        out = Path(self.hparams.output_dir)
        meta = {
            "settings": dict(self.hparams),
            "samples": [{k: v for k, v in r.items() if k != "image"} for r in self.records],
        }
        atomic_write_json(out / f"samples{suffix}.json", meta)
        atomic_write_bytes(out / f"sheet{suffix}.png", encode_png(contact_sheet(self.records)))
        self.records = []


def contact_sheet(records: list[dict[str, Any]]) -> np.ndarray:
    """A row per prompt (in first-seen order) with its images in job order, the prompt written on the left.

    Args:
        records: dicts with "prompt" and "image" uint8 (S, S, 3).

    Returns:
        uint8 (rows * S, LABEL_WIDTH + max_columns * S, 3).
    """
    if not records:
        raise ValueError("no images to put on a contact sheet")
    rows: dict[str, list[np.ndarray]] = {}
    for record in records:
        rows.setdefault(record["prompt"], []).append(record["image"])
    size = records[0]["image"].shape[0]
    columns = max(len(images) for images in rows.values())
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * size, len(rows) * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (prompt, images) in enumerate(rows.items()):
        # ~30 characters fit a line of PIL's default font in the label column.
        draw.multiline_text((3, r * size + 3), "\n".join(textwrap.wrap(prompt, 30)), fill=(0, 0, 0))
        for c, image in enumerate(images):
            sheet.paste(Image.fromarray(image), (LABEL_WIDTH + c * size, r * size))
    return np.asarray(sheet)
