"""The Multi-Conditioned Diffusion Model's conditions (paper §3.3, DESIGN.md §2); its export (the folder a
trained MCDM is saved as) is models/mcdm_export.py.

eps_theta(z_t, t, {c_s, c_im, c_p}) with
- spatial c_s = E(x_A) (scaled VAE latents), concatenated to z_t on the channel axis: the UNet's conv_in
  is widened (`widen_conv_in`) with zero-initialised new slices, so at init it computes what the base
  UNet did whatever c_s is;
- image c_im = MLP([E(x_A), CLIP_image(x_A)]): `ImageEmbeddingAdapter` pools the latent to a few tokens,
  projects them and CLIP's tokens to the cross-attention width and mixes the sequence into N tokens;
- text c_p: the text-encoder states of the target prompt;
context = concat(text tokens, image tokens) on the sequence axis.

Nulls (one definition for training dropout and for guidance at inference): the text null is the states
of ""; the image and spatial nulls are those conditions computed from an all-black x_A (its latent and
CLIP tokens are computed once and cached; the adapter runs on them, so the image null follows training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from portrait_edit.diffusion.conditions import CONDITIONS, apply_null, drop_masks
from portrait_edit.loading.components import SDComponents, load_image_encoder, vae_scale_factor
from portrait_edit.models.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_hidden_state
from portrait_edit.models.conditioning import Batch, TextConditioning, _freeze, scaled_latents
from portrait_edit.models.folder_model import FolderModel
from portrait_edit.models.official_adapter import KIND as OFFICIAL
from portrait_edit.models.official_adapter import OfficialAdapterConfig, OfficialImageAdapter
from portrait_edit.models.widen import widen_conv_in

ADAPTER_KINDS = ("ours", OFFICIAL)
SPATIAL_NULLS = ("black", "zeros")


@dataclass
class ImageAdapterConfig:
    """Sizes of the image-embedding adapter.

    Args:
        latent_channels: C of E(x_A).
        clip_width, clip_tokens: width and count T of the CLIP tokens it reads (T = 1 + patches).
        width: the UNet's cross-attention width (the text states' width).
        num_tokens: N, the image tokens appended to the context.
        latent_pool: the latent is average-pooled to latent_pool x latent_pool tokens.
        mlp_ratio: hidden width of the refining MLP, in multiples of `width`.
    """

    latent_channels: int = 4
    clip_width: int = 1024
    clip_tokens: int = 257
    width: int = 768
    num_tokens: int = 16
    latent_pool: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 1:
            raise ValueError(f"all sizes of the image-embedding adapter must be >= 1: {self}")


class ImageEmbeddingAdapter(FolderModel):
    """c_im = MLP([E(x_A), CLIP_image(x_A)]) -> (B, num_tokens, width).

    1. the latent (B, C, h, w) is average-pooled to latent_pool x latent_pool tokens and projected
       C -> width; CLIP's tokens (B, T, clip_width) are projected clip_width -> width;
    2. the S = latent_pool^2 + T tokens are mixed along the sequence into num_tokens (a learned S -> N
       linear map, as DreamPose's adapter mixes its CLIP and VAE embeddings);
    3. a pre-norm residual MLP (width -> mlp_ratio x width -> width) refines each token.
    """

    config_class = ImageAdapterConfig
    made_by = "train an MCDM (portrait-edit fit --config configs/mini/mcdm.yaml)"

    def __init__(self, config: ImageAdapterConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else ImageAdapterConfig()
        self.latent_proj = nn.Linear(c.latent_channels, c.width)
        self.clip_proj = nn.Linear(c.clip_width, c.width)
        self.mix = nn.Linear(c.latent_pool * c.latent_pool + c.clip_tokens, c.num_tokens)
        self.norm = nn.LayerNorm(c.width)
        hidden = c.mlp_ratio * c.width
        self.mlp = nn.Sequential(nn.Linear(c.width, hidden), nn.GELU(), nn.Linear(hidden, c.width))

    def forward(self, latents: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w), clip (B, T, clip_width) -> image tokens (B, num_tokens, width)."""
        pooled = (
            F.adaptive_avg_pool2d(latents, self.config.latent_pool).flatten(2).transpose(1, 2)
        )  # (B, p^2, C)
        tokens = torch.cat([self.latent_proj(pooled), self.clip_proj(clip)], dim=1)  # (B, S, width)
        mixed = self.mix(tokens.transpose(1, 2)).transpose(1, 2)  # (B, N, width)
        return mixed + self.mlp(self.norm(mixed))


class MCDMConditioning(TextConditioning):
    """The MCDM's conditioning of a pair batch, with the pure condition dropout of training.

    Batch keys: "source" x_A (B, 3, H, W) in [-1, 1] or its cached "source_latent" (scaled, B, C, h, w)
    and "source_clip" (B, T, clip_width); "caption" the target prompt (the system swaps in p_a for
    reconstructions). Text states are cached per prompt (the text encoder is frozen).

    Args:
        p_drop: probability that a training sample drops one of the 7 non-empty condition subsets.
        subset_weights: 7 weights over `conditions.SUBSETS` (None: uniform).
        use_spatial: concatenate c_s (False: the "w/o spatial" ablation; conv_in stays 4 wide).
        use_image: append c_im to the context (False: the "w/o image embedding" ablation).
        num_image_tokens, latent_pool, mlp_ratio: the adapter's sizes.
        image_encoder: source of the CLIP image encoder (a hub id such as openai/clip-vit-large-patch14, a
            folder, a preset); None: the base's own `image_encoder` part (the mini world ships one).
        clip_layer: which CLIP hidden state feeds the adapter (-1: the last layer's tokens).
        clip_image_size, image_mean, image_std: how x_A is shown to CLIP (224 and OpenAI's statistics for
            ViT-L/14; the mini CLIP reads 64 x 64 images with mean = std = 0.5).
        seed: seed of the adapter's initial weights.
        adapter: folder of a trained adapter (an MCDM export's image_adapter/) to start from; None: new.
        adapter_kind: "ours" (`ImageEmbeddingAdapter`) or "official" (the released checkpoints'
            `OfficialImageAdapter`, which reads every CLIP token and returns as many).
        spatial_null: the spatial condition's null: "black" (E of the all-black image, ours, the same in
            training and guidance) or "zeros" (an all-zero latent: what the released model's guidance uses).
    """

    def __init__(
        self,
        p_drop: float = 0.2,
        subset_weights: list[float] | None = None,
        use_spatial: bool = True,
        use_image: bool = True,
        num_image_tokens: int = 16,
        latent_pool: int = 4,
        mlp_ratio: int = 4,
        image_encoder: str | None = None,
        clip_layer: int = -1,
        clip_image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        seed: int = 0,
        adapter: str | None = None,
        adapter_kind: str = "ours",
        spatial_null: str = "black",
    ) -> None:
        super().__init__(caption_dropout=0.0)  # the text is dropped with the other conditions
        if not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"p_drop must be in [0, 1], got {p_drop}")
        if adapter_kind not in ADAPTER_KINDS or spatial_null not in SPATIAL_NULLS:
            raise ValueError(
                f"adapter_kind must be one of {ADAPTER_KINDS} and spatial_null one of {SPATIAL_NULLS}; got "
                f"{adapter_kind!r}, {spatial_null!r}"
            )
        self.adapter_kind, self.spatial_null = adapter_kind, spatial_null
        self.p_drop = p_drop
        self.subset_weights = subset_weights
        self.use_spatial = use_spatial
        self.use_image = use_image
        self.adapter_sizes = (num_image_tokens, latent_pool, mlp_ratio)
        self.seed = seed
        self.image_encoder_source = image_encoder
        self.adapter_source = adapter
        # SD parts the system loads (an explicit image encoder is loaded in bind; none for "w/o image").
        self.parts = ("text_encoder", "tokenizer") + (
            ("image_encoder",) if use_image and image_encoder is None else ()
        )
        self.clip_view = (
            clip_layer,
            clip_image_size,
            list(image_mean or OPENAI_CLIP_MEAN),
            list(image_std or OPENAI_CLIP_STD),
        )
        self.image_encoder: nn.Module | None = None
        self.adapter: ImageEmbeddingAdapter | OfficialImageAdapter | None = None
        self._vae: tuple[nn.Module, ...] = ()  # the system's frozen VAE (a tuple: not registered twice)
        self._text: dict[str, torch.Tensor] = {}
        self._black: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def bind(self, components: SDComponents) -> None:
        super().bind(components)
        if components.vae is None or components.unet is None:
            raise ValueError("MCDMConditioning needs the VAE and the UNet")
        self._vae = (components.vae,)
        latent, unet_in = components.vae.config.latent_channels, components.unet.config.in_channels
        wide = 2 * latent if self.use_spatial else latent
        if unet_in == latent and wide > latent:
            widen_conv_in(components.unet, wide)  # a base UNet: add the zero-initialised c_s slices
        elif unet_in != wide:
            raise ValueError(
                f"the UNet reads {unet_in} channels; the MCDM needs {wide} (use_spatial={self.use_spatial}) "
                f"or a base UNet with {latent}"
            )
        if self.use_image:
            if self.image_encoder_source is not None:
                image_encoder = load_image_encoder(self.image_encoder_source, torch_dtype=torch.float32)
            elif components.image_encoder is None:
                raise ValueError(
                    "MCDMConditioning needs a CLIP image encoder: set image_encoder (e.g. "
                    "openai/clip-vit-large-patch14) or use a base that has one (the mini world's)"
                )
            else:
                image_encoder = components.image_encoder
            self.image_encoder = _freeze(image_encoder)
            self.adapter = self._adapter(components)

    def _adapter(self, components: SDComponents) -> ImageEmbeddingAdapter | OfficialImageAdapter:
        """The image adapter: the trained one of `adapter` (checked against the model's sizes) or a new,
        seeded one."""
        vision, unet = self.image_encoder.config, components.unet.config
        clip_tokens = (self.clip_view[1] // vision.patch_size) ** 2 + 1
        if self.adapter_kind == OFFICIAL:
            cls = OfficialImageAdapter
            config = OfficialAdapterConfig(
                components.vae.config.latent_channels, unet.sample_size, vision.hidden_size, clip_tokens
            )
            if vision.hidden_size != unet.cross_attention_dim:
                raise ValueError(
                    f"the released adapter appends CLIP's {vision.hidden_size}-wide tokens to the context as they "
                    f"are: the UNet's cross-attention width must match, not {unet.cross_attention_dim}"
                )
        else:
            cls = ImageEmbeddingAdapter
            num_tokens, pool, ratio = self.adapter_sizes
            config = ImageAdapterConfig(
                latent_channels=components.vae.config.latent_channels, clip_width=vision.hidden_size,
                clip_tokens=clip_tokens, width=unet.cross_attention_dim, num_tokens=num_tokens,
                latent_pool=pool, mlp_ratio=ratio,
            )  # fmt: skip
        if self.adapter_source is not None:
            adapter = cls.from_pretrained(self.adapter_source).train()
            if adapter.config != config:
                raise ValueError(
                    f"adapter {self.adapter_source} is {adapter.config}, the model needs {config}"
                )
            return adapter
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return cls(config)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"image_adapter": self.adapter} if self.adapter is not None else {}

    # Frozen encoders.
    def source_latent(self, images: torch.Tensor) -> torch.Tensor:
        """E(x_A): scaled VAE latents of images (B, 3, H, W) in [-1, 1], float32 (B, C, h, w)."""
        return scaled_latents(self._vae[0], images)

    @torch.no_grad()
    def source_clip(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP tokens of images (B, 3, H, W) in [-1, 1]: float32 (B, T, clip_width)."""
        return clip_hidden_state(self.image_encoder, images, *self.clip_view).float()

    def cached_text(self, captions: list[str]) -> torch.Tensor:
        """Text states (B, 77, D) of captions, each prompt encoded once (kept on the CPU)."""
        missing = sorted({c for c in captions if c not in self._text})
        if missing:
            self._text.update(zip(missing, self.encode_text(missing).cpu()))
        return torch.stack([self._text[c] for c in captions])

    def black_conditions(self, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The latent (1, C, h, w) and CLIP tokens (1, T, w) (None without use_image) of an all-black x_A of
        `image_size` (H, W): the image and spatial nulls' inputs, computed once."""
        key = tuple(image_size)
        if key not in self._black:
            black = -torch.ones(1, 3, *key)
            clip = self.source_clip(black).cpu() if self.use_image else None
            self._black[key] = (self.source_latent(black).cpu(), clip)
        return self._black[key]

    def conditions(
        self,
        latent: torch.Tensor,
        clip: torch.Tensor | None,
        text: torch.Tensor,
        image_size: tuple[int, int],
        drop: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(c_s, context) of a batch: c_s (B, C, h, w) or None, context (B, 77 + N, D).

        Args:
            latent, clip: E(x_A) (B, C, h, w) and CLIP tokens of x_A (B, T, w) (None without use_image).
            text: text states (B, 77, D).
            image_size: (H, W) of x_A (for the black image of the nulls).
            drop: {condition: bool (B,)}: rows replaced by that condition's null (None: keep all).
        """
        device = latent.device
        keep = torch.zeros(len(latent), dtype=torch.bool)
        drop = {name: (drop or {}).get(name, keep) for name in CONDITIONS}
        black_latent, black_clip = self.black_conditions(image_size)
        spatial_null = torch.zeros_like(black_latent) if self.spatial_null == "zeros" else black_latent
        c_s = apply_null(latent, spatial_null.to(device), drop["spatial"]) if self.use_spatial else None
        text = apply_null(text.to(device), self.cached_text([""]).to(device, text.dtype), drop["text"])
        if not self.use_image:
            return c_s, text
        image_latent = apply_null(latent, black_latent.to(device), drop["image"])
        image_clip = apply_null(clip.to(device), black_clip.to(device), drop["image"])
        weight = next(self.adapter.parameters()).dtype  # a bf16 / fp16 model gets its own dtype in
        tokens = self.adapter(image_latent.to(weight), image_clip.to(weight)).to(text.dtype)
        return c_s, torch.cat([text, tokens], dim=1)

    def batch_sources(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """E(x_A), CLIP(x_A) (None without use_image) and x_A's (H, W): cached in the batch or computed."""
        vae = self._vae[0]
        if "source_latent" in batch:
            latent = batch["source_latent"].float()
            scale = vae_scale_factor(vae)
            size = (latent.shape[-2] * scale, latent.shape[-1] * scale)
        else:
            latent, size = self.source_latent(batch["source"]), tuple(batch["source"].shape[-2:])
        clip = None
        if self.use_image:
            clip = (
                batch["source_clip"].float() if "source_clip" in batch else self.source_clip(batch["source"])
            )
        return latent, clip, size

    def forward(
        self,
        batch: Batch,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        latent, clip, size = self.batch_sources(batch)
        latent = latent.to(noisy_latents.device)
        drop = None
        if generator is not None and self.training:
            drop = drop_masks(len(latent), generator, self.p_drop, self.subset_weights)
        text = self.cached_text(list(batch["caption"]))
        c_s, context = self.conditions(latent, clip, text, size, drop)
        sample = noisy_latents if c_s is None else torch.cat([noisy_latents, c_s.to(noisy_latents)], dim=1)
        return {"sample": sample, "encoder_hidden_states": context.to(noisy_latents.dtype)}
