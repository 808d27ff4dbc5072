"""The model card (README.md) every MCDM export carries: what the model is, how to run it, the paper to cite,
where each part comes from and under which license, and the settings it edits with."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from portrait_edit.tasks import MASK_LAMBDAS

if TYPE_CHECKING:
    from portrait_edit.models.mcdm_export import MCDMExportSettings

CITATION = """@article{chen2024featurepreserving,
  title   = {Learning Feature-Preserving Portrait Editing from Generated Pairs},
  author  = {Chen, Bowei and Zhi, Tiancheng and Zhu, Peihao and Sang, Shen and Liu, Jing and Luo, Linjie},
  year    = {2024}
}"""
# The licenses of the sources the configs name; a part from elsewhere carries its source's own.
LICENSES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "CreativeML OpenRAIL-M",
    "SG161222/Realistic_Vision_V4.0_noVAE": "CreativeML OpenRAIL-M",
    "stablediffusionapi/realistic-vision-v13": "CreativeML OpenRAIL-M",
    "stabilityai/sd-vae-ft-mse": "MIT",
    "openai/clip-vit-large-patch14": "MIT",
    "openai/clip-vit-base-patch32": "MIT",
    "mini": "Apache-2.0 (the mini world's base, trained by portrait_edit)",
    "tiny": "Apache-2.0 (random weights)",
}


def license_of(source: str | None) -> str:
    return LICENSES.get(source or "", f"the license of {source}" if source else "the base's license")


def model_card(settings: MCDMExportSettings, image_encoder_source: str | None = None) -> str:
    """README.md of an export with these settings (its image encoder from `image_encoder_source`; None:
    the base's)."""
    base, vae, converted = settings.base, settings.vae, settings.converted_from
    origin = (
        f"The paper's released MCDM ({converted}), converted by portrait_edit (tools/convert_official.py)."
        if converted
        else "An MCDM trained by portrait_edit (`portrait-edit fit`) on generated portrait pairs."
    )
    unet_license = license_of(base) + (" (fine-tuned from the base: its license and use restrictions apply)")
    if converted:
        unet_license = "the release's license (see ByteDance/feature-preserve-portrait-editing)"
    rows = [
        ("unet/, image_adapter/", unet_license),
        ("vae/", license_of(vae or base)),
        ("text_encoder/, tokenizer/", license_of(base)),
        ("image_encoder/", license_of(image_encoder_source or base)),
    ]
    scales, demo = settings.scales, settings.demo_scales
    lines = [
        "---",
        "library_name: portrait_edit",
        "pipeline_tag: image-to-image",
        "tags: [portrait-editing, diffusers, mcdm]",
        "---",
        "",
        "# Feature-preserving portrait editing: a Multi-Conditioned Diffusion Model",
        "",
        origin,
        f"Base: `{base}`" + (f", VAE `{vae}`" if vae else "") + ".",
        "",
        "```python",
        "from portrait_edit.models.pipeline import PortraitEditPipeline",
        'pipe = PortraitEditPipeline.from_pretrained("<this folder>")',
        'edit = pipe(image, direction="santa", gender="woman").images[0]',
        "```",
        "",
        "## Settings",
        "",
        f"- guidance scales (image / spatial / text): {scales.get('image')} / {scales.get('spatial')} / "
        f"{scales.get('text')}" + (f"; the release's demo used {demo}" if demo else ""),
        f"- mask: read at {settings.mask_at} of the {settings.num_inference_steps} UniPC steps, "
        f"lambda {MASK_LAMBDAS['costume']} (costume) / {MASK_LAMBDAS['expression']} (expression)",
        f"- conditions: adapter `{settings.adapter}`, spatial null `{settings.spatial_null}`, "
        f"CLIP view {settings.clip_image_size} px, layer {settings.clip_layer}",
    ]
    if settings.training:
        lines += ["", "## Training", "", "```json", json.dumps(settings.training, indent=2), "```"]
    lines += ["", "## Licenses", "", "| part | license |", "|---|---|"]
    lines += [f"| {part} | {text} |" for part, text in rows]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)
