"""CLIP zero-shot gender: which of "a photo of a man" / "a photo of a woman" a face is closer to.

The identity prompts need the gender word [X] of each face (supplementary 1.1: "the gender detected from
the portrait image"). Face datasets without gender metadata (FFHQ) get it from the loaded CLIP: cosine
between the image embedding and the two prompts' text embeddings, both in CLIP's shared space.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPVisionModelWithProjection

from portrait_edit import paths
from portrait_edit.loading.clip_tokenizer import CLIPPromptTokenizer
from portrait_edit.loading.components import load_image_encoder, load_text_encoder, load_tokenizer
from portrait_edit.loading.sources import resolve_source
from portrait_edit.models.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_pixels
from portrait_edit.models.clip_pair import load_text_projection
from portrait_edit.models.token_splice import GENDER_WORDS


class ZeroShotGender(nn.Module):
    """faces float (B, 3, H, W) in [-1, 1] -> gender words.

    Args:
        image_encoder: CLIPVisionModelWithProjection (its `image_embeds` live in the shared space).
        text_encoder: CLIPTextModel; its pooled output goes through `text_projection`.
        tokenizer: the text encoder's tokenizer.
        text_projection: pooled text states -> the shared space (bias-free Linear).
        image_size, image_mean, image_std: how faces are shown to CLIP (None: OpenAI's mean / std).
        template: prompt with `{}` for the word.
        words: the candidate gender words.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        text_projection: nn.Module,
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        template: str = "a photo of a {}",
        words: tuple[str, ...] = GENDER_WORDS,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.pixels = (image_size, list(image_mean or OPENAI_CLIP_MEAN), list(image_std or OPENAI_CLIP_STD))
        self.words = words
        ids = tokenizer(
            [template.format(w) for w in words], padding="max_length", max_length=77, return_tensors="pt"
        )
        with torch.no_grad():
            pooled = text_encoder.eval()(input_ids=ids.input_ids.to(text_encoder.device)).pooler_output
            text = F.normalize(text_projection.to(pooled)(pooled).float(), dim=-1)
        self.register_buffer("text_embeds", text.cpu())  # (len(words), E)

    @torch.no_grad()
    def forward(self, faces: torch.Tensor) -> list[str]:
        pixels = clip_pixels(faces, *self.pixels).to(self.image_encoder.device, self.image_encoder.dtype)
        image = F.normalize(self.image_encoder(pixel_values=pixels).image_embeds.float(), dim=-1)
        choice = (image @ self.text_embeds.to(image.device).T).argmax(dim=1)
        return [self.words[int(i)] for i in choice]

    @classmethod
    def load(cls, source: str, **kwargs) -> ZeroShotGender:
        """From a CLIP source: a preset (`mini`: the shipped data/mini CLIP), a local folder in the
        project's layout (image_encoder/, text_encoder/ with text_projection.safetensors, tokenizer/), or
        a full CLIPModel (hub id or folder, e.g. openai/clip-vit-large-patch14); kwargs go to __init__."""
        kind, where = resolve_source(source)
        folder = paths.DATA_DIR / where if kind == "preset" else Path(where)
        if kind in ("preset", "folder") and (folder / "text_encoder").is_dir():
            return cls(
                load_image_encoder(source),
                load_text_encoder(source),
                load_tokenizer(source),
                load_text_projection(folder / "text_encoder"),
                **kwargs,
            )
        model = CLIPModel.from_pretrained(where).eval()
        vision = CLIPVisionModelWithProjection(model.config.vision_config)
        vision.vision_model.load_state_dict(model.vision_model.state_dict())
        vision.visual_projection.load_state_dict(model.visual_projection.state_dict())
        return cls(
            vision,
            model.text_model,
            CLIPPromptTokenizer.from_pretrained(where),
            model.text_projection,
            **kwargs,
        )
