"""Identity encoder (paper §3.2, supplementary 1.1): a face -> K word embeddings c_id ("new words").

A variant of ELITE's global mapper: the frozen CLIP image encoder's tokens -> ONE transformer decoder layer
whose K learned queries attend to them -> LayerNorm + MLP -> K x d word embeddings, d the text encoder's
width (K = 2, d = 768 at SD 1.5: c_id is 2 x 768). The embeddings are spliced into prompts right before
the gender word (models/token_splice.py).

`IdentityEncoder` holds only the trained part (decoder layer + MLP), stored as one folder
(config.json + model.safetensors). `encode_identity(image_encoder, encoder, faces)` runs the whole chain;
the config records how faces are shown to CLIP (size, mean/std, which hidden layer), since that is part of
what the encoder learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

from portrait_edit.models.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_hidden_state
from portrait_edit.models.folder_model import FolderModel


@dataclass
class IdentityEncoderConfig:
    """Architecture and CLIP input of the identity encoder.

    Args:
        clip_width: hidden size of the CLIP image encoder's tokens (1024 for ViT-L/14, 64 for the mini CLIP).
        word_width: width d of the text encoder's word embeddings (768 for SD 1.5, 64 mini).
        num_tokens: K, the number of words c_id is made of (2 in the paper).
        num_heads: attention heads of the decoder layer (must divide clip_width).
        mlp_hidden: hidden width of the output MLP.
        clip_layer: which CLIP hidden state the queries read (index into hidden_states: -1 the last
            layer's output, -2 the penultimate).
        image_size: side the faces are resized to for CLIP (224 for ViT-L/14, 64 mini).
        image_mean, image_std: CLIP's per-channel pixel normalisation of [0, 1] images (OpenAI's for
            ViT-L/14; 0.5 / 0.5 for the mini CLIP, which reads [-1, 1] images as they are).
        init_output_std: when set, the MLP's last layer starts with weights of std init_output_std /
            sqrt(mlp_hidden) and zero bias, so new words start near the scale of the text encoder's own
            word embeddings (IdentityConditioning passes their std). PyTorch's default init makes them
            tens of times larger, where the text encoder's attention saturates and passes little gradient.
    """

    clip_width: int = 1024
    word_width: int = 768
    num_tokens: int = 2
    num_heads: int = 8
    mlp_hidden: int = 1024
    clip_layer: int = -1
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    init_output_std: float | None = None

    def __post_init__(self) -> None:
        if min(self.clip_width, self.word_width, self.num_tokens, self.num_heads, self.mlp_hidden) < 1:
            raise ValueError(f"all widths and counts must be >= 1: {self}")
        if self.clip_width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide clip_width={self.clip_width}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"image_mean / image_std need 3 values, std > 0; got {self.image_mean}, {self.image_std}"
            )
        if self.init_output_std is not None and self.init_output_std <= 0:
            raise ValueError(f"init_output_std must be > 0 when set, got {self.init_output_std}")


class IdentityEncoder(FolderModel):
    """CLIP tokens float (B, N, clip_width) -> identity word embeddings float (B, K, word_width)."""

    config_class = IdentityEncoderConfig
    made_by = "train one (portrait-edit fit --config configs/mini/identity.yaml)"

    def __init__(self, config: IdentityEncoderConfig | None = None) -> None:
        """
        Args:
            config: architecture; None builds the SD 1.5 / ViT-L/14 one.
        """
        super().__init__()
        self.config = c = config if config is not None else IdentityEncoderConfig()
        self.queries = nn.Parameter(torch.randn(c.num_tokens, c.clip_width) * 0.02)
        # Pre-norm (norm_first), no dropout: one layer, self-attention over the K queries then
        # cross-attention from the queries to the CLIP tokens, then a feed-forward block.
        self.decoder = nn.TransformerDecoderLayer(
            d_model=c.clip_width,
            nhead=c.num_heads,
            dim_feedforward=4 * c.clip_width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.mlp = nn.Sequential(
            nn.LayerNorm(c.clip_width),
            nn.Linear(c.clip_width, c.mlp_hidden),
            nn.GELU(),
            nn.Linear(c.mlp_hidden, c.word_width),
        )
        if c.init_output_std is not None:
            nn.init.normal_(self.mlp[-1].weight, std=c.init_output_std / c.mlp_hidden**0.5)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        if clip_tokens.ndim != 3 or clip_tokens.shape[2] != self.config.clip_width:
            raise ValueError(
                f"clip_tokens must be (B, N, {self.config.clip_width}); got {tuple(clip_tokens.shape)}: is "
                "this encoder's clip_width the image encoder's hidden size?"
            )
        queries = self.queries.to(clip_tokens.dtype).expand(clip_tokens.shape[0], -1, -1)  # (B, K, w)
        return self.mlp(self.decoder(queries, clip_tokens))  # (B, K, w) -> (B, K, d)


def clip_tokens(
    image_encoder: CLIPVisionModel | CLIPVisionModelWithProjection,
    faces: torch.Tensor,
    config: IdentityEncoderConfig,
) -> torch.Tensor:
    """The CLIP tokens the identity encoder reads: hidden state `config.clip_layer` of faces (B, 3, H, W)
    in [-1, 1] shown to CLIP as the config says, float (B, N, clip_width)."""
    return clip_hidden_state(
        image_encoder, faces, config.clip_layer, config.image_size, config.image_mean, config.image_std
    )


def encode_identity(
    image_encoder: CLIPVisionModel | CLIPVisionModelWithProjection,
    encoder: IdentityEncoder,
    faces: torch.Tensor,
) -> torch.Tensor:
    """c_id of faces float (B, 3, H, W) in [-1, 1]: float (B, K, word_width). CLIP runs without gradients
    (it is frozen); the encoder's own parameters get them."""
    with torch.no_grad():
        tokens = clip_tokens(image_encoder, faces, encoder.config)
    return encoder(tokens.to(encoder.queries.dtype))
