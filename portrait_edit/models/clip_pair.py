"""A two-tower CLIPModel built from the SD parts' configs, and its split back into those parts.

The text tower is exactly the `text_encoder` of a preset (same config, full 49,408-token vocabulary), so
after contrastive training it exports as a `CLIPTextModel` (what the UNet is conditioned on); the vision
tower plus its projection export as a `CLIPVisionModelWithProjection` (the `image_encoder` whose
`image_embeds` the identity encoder and the MCDM's image condition use). The text projection, which
Stable Diffusion never uses but zero-shot classification and retrieval need, is written beside the text
encoder as `text_encoder/text_projection.safetensors` (`load_text_projection`), so that the folder still
loads as a plain `CLIPTextModel`.

Image inputs are float (B, 3, H, W) in [-1, 1], no CLIP mean/std normalisation; the exported
`preprocessor_config.json` says so for tools that read uint8 images through a CLIPImageProcessor.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from portrait_edit import paths
from portrait_edit.atomic import replace_folder

TEXT_PROJECTION = "text_projection.safetensors"


def _config_folder(source: str, part: str) -> Path:
    """A preset name -> its `<part>/` folder; a folder -> its `<part>/` subfolder or itself."""
    for folder in (paths.PRESETS_DIR / source / part, Path(source) / part, Path(source)):
        if (folder / "config.json").is_file():
            return folder
    raise ValueError(
        f"no {part} config.json for {source!r}; use a preset name (mini, tiny) or a folder holding {part}/config.json"
    )


def build_clip(text_config: str = "mini", vision_config: str = "mini", seed: int = 0) -> CLIPModel:
    """A randomly initialised CLIPModel whose towers use the given text / image encoder configs.

    Args:
        text_config: preset name or folder of the `text_encoder` config (kept exactly).
        vision_config: preset name or folder of the `image_encoder` config; its projection_dim must equal
            the text config's (the shared embedding width).
        seed: seed of the initial weights.
    """
    text = CLIPTextConfig.from_pretrained(_config_folder(text_config, "text_encoder"))
    vision = CLIPVisionConfig.from_pretrained(_config_folder(vision_config, "image_encoder"))
    if text.projection_dim != vision.projection_dim:
        raise ValueError(
            f"text projection_dim {text.projection_dim} != vision projection_dim {vision.projection_dim}; "
            "pick configs with the same embedding width"
        )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=vision.projection_dim
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)


def text_encoder_of(model: CLIPModel) -> CLIPTextModel:
    """The text tower: in transformers 5 it already is a CLIPTextModel (shared, not copied)."""
    return model.text_model


def image_encoder_of(model: CLIPModel) -> CLIPVisionModelWithProjection:
    """A CLIPVisionModelWithProjection holding copies of the vision tower and its projection, so that
    `image_encoder(x).image_embeds == model.get_image_features(x).pooler_output`."""
    config = CLIPVisionConfig(
        **{**model.config.vision_config.to_dict(), "projection_dim": model.projection_dim}
    )
    encoder = CLIPVisionModelWithProjection(config)
    encoder.vision_model.load_state_dict(model.vision_model.state_dict())  # both CLIPVisionModel
    encoder.visual_projection.load_state_dict(model.visual_projection.state_dict())
    return encoder.to(model.dtype).eval()


def export_clip(
    model: CLIPModel, tokenizer: CLIPTokenizer, out_dir: str | Path, dtype: torch.dtype = torch.float32
) -> dict[str, Path]:
    """Write `text_encoder/`, `image_encoder/` and `tokenizer/` into a pipeline folder (safetensors).

    Returns:
        the three folders by name.
    """
    out = Path(out_dir)
    size = model.config.vision_config.image_size
    # uint8 -> [-1, 1]: rescale by 1/255, then (x - 0.5) / 0.5; no resize or crop beyond the trained size.
    processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    projection = {"weight": model.text_projection.weight.detach().to("cpu", dtype).contiguous()}
    text = torch.nn.Module.to(copy.deepcopy(text_encoder_of(model)).eval(), dtype)
    image = torch.nn.Module.to(image_encoder_of(model), dtype)

    def write_text(tmp: Path) -> None:
        text.save_pretrained(tmp, safe_serialization=True)
        save_file(projection, str(tmp / TEXT_PROJECTION))

    def write_image(tmp: Path) -> None:
        image.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)

    # Each folder is swapped in whole (models/export.py): a reader never sees half an encoder.
    folders = {
        "text_encoder": replace_folder(out / "text_encoder", write_text),
        "image_encoder": replace_folder(out / "image_encoder", write_image),
        "tokenizer": replace_folder(out / "tokenizer", tokenizer.save_pretrained),
    }
    return folders


def load_text_projection(text_encoder_dir: str | Path) -> torch.nn.Linear:
    """The CLIP text projection exported beside a text encoder: pooled text states (B, d_text) -> the
    shared embedding (B, d_embed), comparable with the image encoder's `image_embeds`."""
    path = Path(text_encoder_dir) / TEXT_PROJECTION
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: export the text encoder with CLIPSystem.export (make mini-base)"
        )
    weight = load_file(str(path))["weight"].float()
    projection = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    projection.weight.data.copy_(weight)
    return projection.eval()
