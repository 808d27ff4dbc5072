"""The mini world's CLIP: text and image towers trained contrastively on mini-world images and captions.

The world has few distinct captions (2 genders x (2 source + 8 direction) = 20), so a batch of 64 holds
each caption many times. Standard CLIP loss (open_clip's ClipLoss) would treat the copies of an image's
own caption as negatives; here each DISTINCT caption of the batch is encoded once and every image is
contrasted against them with all captions of its class as positives (`multi_positive_loss`). A class
is (gender, label); both source captions of a gender ("a man, normal costume" and "a man, neutral
expression": the source image of a costume pair and of an expression pair look alike) belong to the
source class, so either one is a correct answer for a source image, in training and in retrieval.
A caption that also describes the person ("a man with tan skin and a grey buzz cut, angry": the
datamodule's `describe_p`) is a positive of its own image only (`caption_positives`), so the towers learn
the words and the looks of a person, as real CLIP knows them; the identity encoder reads those looks.

Validation: image-to-caption retrieval over all 20 captions, top-1 counted correct when the best caption
is of the image's class (`retrieval_top1`), i.e. over the 18 caption classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from portrait_edit.data.world_images import caption_classes, image_classes
from portrait_edit.loading.components import MAX_TOKENS, load_tokenizer
from portrait_edit.metrics.retrieval import retrieval_top1
from portrait_edit.models.clip_pair import build_clip, export_clip
from portrait_edit.systems.exporting import ExportingSystem

log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) here so the softmax temperature cannot collapse


def multi_positive_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, positives: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss where an image may match several captions and a caption several images.

    Each direction is -log(sum of softmax probability over the positives), averaged over rows; the result
    is the mean of the image->text and text->image terms. With one positive per row and B == C it is
    CLIP's loss.

    Args:
        image_embeds: float (B, D), L2-normalised.
        text_embeds: float (C, D), L2-normalised.
        positives: bool (B, C); every row and every column needs at least one True.
        logit_scale: scalar, the multiplier of the cosine similarities (exp of CLIP's parameter).
    """
    if not (positives.any(dim=1).all() and positives.any(dim=0).all()):
        raise ValueError("every image and every caption needs at least one positive")
    logits = logit_scale * image_embeds @ text_embeds.T  # (B, C)
    masked = logits.masked_fill(~positives, float("-inf"))
    image_to_text = torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)
    text_to_image = torch.logsumexp(logits, dim=0) - torch.logsumexp(masked, dim=0)
    return 0.5 * (image_to_text.mean() + text_to_image.mean())


def caption_positives(
    captions: list[str], classes: torch.Tensor, distinct: list[str], plain: set[str]
) -> torch.Tensor:
    """Which of the `distinct` captions are true of each image, bool (B, C).

    A plain caption (one of `plain`, the world's 20 class captions) is true of every image of its class; a
    described caption only of the images that carry it. A caption's class is that of an image carrying it.

    Args:
        captions: the B images' own captions.
        classes: long (B,), each image's class (`image_classes`).
        distinct: the C captions contrasted against (each carried by some image).
        plain: the captions that name only a class.
    """
    caption_class = torch.stack([classes[captions.index(c)] for c in distinct])
    same_class = classes[:, None] == caption_class[None, :]
    own = torch.tensor(
        [[c == mine or c in plain for c in distinct] for mine in captions], device=classes.device
    )
    return same_class & own


class CLIPSystem(ExportingSystem):
    """Trains a two-tower CLIPModel on `image` / `caption` / `label` / `gender` batches."""

    betas = (0.9, 0.98)  # CLIP's

    def __init__(
        self,
        text_config: str = "mini",
        vision_config: str = "mini",
        tokenizer: str = "mini",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        export_dir: str | None = None,
        fp16: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            text_config: text encoder architecture: preset name or folder with text_encoder/config.json.
            vision_config: image encoder architecture: preset name or folder with image_encoder/config.json.
            tokenizer: tokenizer source for `load_tokenizer` (presets share the offline CLIP tokenizer).
            lr: peak AdamW learning rate (one-cycle schedule: warmup, then cosine decay to lr / 100).
            weight_decay: AdamW weight decay (not applied to the logit scale).
            warmup_fraction: fraction of the steps spent warming up.
            export_dir: when set, text_encoder/, image_encoder/ and tokenizer/ are written there at the end of fit.
            fp16: export half-precision weights.
            seed: seed of the initial weights.
        """
        super().__init__()
        if lr <= 0 or not 0 <= warmup_fraction < 1:
            raise ValueError(f"need lr > 0 and 0 <= warmup_fraction < 1; got {lr}, {warmup_fraction}")
        self.save_hyperparameters()
        self.clip = build_clip(text_config, vision_config, seed)
        self.tokenizer = load_tokenizer(tokenizer)
        self._tokens: dict[str, torch.Tensor] = {}  # caption -> ids (L,)
        self._plain = set(caption_classes()[0])  # the 20 class captions; others describe a person
        self._val_captions: torch.Tensor | None = None  # (20, D) caption embeddings during validation
        self._val_classes: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D) of images (B, 3, H, W) in [-1, 1]."""
        return F.normalize(self.clip.get_image_features(pixel_values=images).pooler_output, dim=-1)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """L2-normalised caption embeddings (C, D).

        Captions are padded to the longest one, not to 77: the text tower's causal mask makes the states up
        to the end token (the pooled one) the same for any padding, and a 12-token batch is 6x cheaper.
        """
        missing = [c for c in captions if c not in self._tokens]
        if missing:
            ids = self.tokenizer(missing, max_length=MAX_TOKENS, truncation=True).input_ids
            self._tokens.update((c, torch.tensor(i)) for c, i in zip(missing, ids))
        pad = self.tokenizer.pad_token_id
        ids = torch.nn.utils.rnn.pad_sequence(
            [self._tokens[c] for c in captions], batch_first=True, padding_value=pad
        )
        # No attention mask, like Stable Diffusion's use of the text encoder (the causal mask suffices).
        return F.normalize(self.clip.get_text_features(input_ids=ids.to(self.device)).pooler_output, dim=-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        captions: list[str] = batch["caption"]
        classes = image_classes(batch["gender"], batch["label"])
        distinct = sorted(set(captions))
        positives = caption_positives(captions, classes, distinct, self._plain)  # (B, C)
        scale = self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        loss = multi_positive_loss(self(batch["image"]), self.encode_text(distinct), positives, scale)
        size = len(captions)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/logit_scale", scale, batch_size=size)
        return loss

    def on_validation_epoch_start(self) -> None:
        captions, classes = caption_classes()
        self._val_captions = self.encode_text(captions)
        self._val_classes = torch.tensor(classes, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert self._val_captions is not None and self._val_classes is not None
        similarity = self(batch["image"]) @ self._val_captions.T
        correct = retrieval_top1(
            similarity, image_classes(batch["gender"], batch["label"]), self._val_classes
        )
        self.log("val/retrieval_top1", correct.mean(), prog_bar=True, batch_size=len(correct), sync_dist=True)

    def export(self, out_dir: str, dtype: torch.dtype | None = None) -> dict[str, Path]:
        """Write `text_encoder/` (CLIPTextModel), `image_encoder/` (CLIPVisionModelWithProjection) and
        `tokenizer/` into `out_dir` (safetensors; dtype None: float16 if the system's `fp16` is set)."""
        dtype = dtype or (torch.float16 if self.hparams.fp16 else torch.float32)
        folders = export_clip(self.clip, self.tokenizer, out_dir, dtype)
        log.info("exported CLIP text and image encoders and the tokenizer to %s", out_dir)
        return folders

    def parameter_groups(self) -> list[dict]:
        decay = [p for p in self.clip.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.clip.parameters() if p.ndim < 2]  # norms, biases, logit scale
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
