"""The image-embedding adapter of the paper's released checkpoints (ByteDance/feature-preserve-portrait-
editing, `adapter.pth`), written from what it computes, so that the released MCDMs run in our editor.

c_im of an x_A at 512 px (its scaled VAE latent E(x_A), 4 x 64 x 64, and CLIP ViT-B/32's 50
last_hidden_state tokens, 768 wide):
1. E(x_A) is max-pooled by 2 (4 x 32 x 32) and each channel flattened (4 x 1024);
2. `vae2clip`, Linear(1024 -> 768), maps each channel to a token: 4 tokens;
3. they are appended after the 50 CLIP tokens: 54 tokens;
4. `linear1`, Linear(54 -> 50), mixes the token axis: 50 image tokens (B, 50, 768), appended after the 77
   text tokens in the cross-attention context.
The sizes come from the config, so tiny stand-ins build the same computation at other widths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from portrait_edit.models.folder_model import FolderModel

KIND = "official"  # the adapter kind an export's mcdm.json names (ours: "ours")


@dataclass
class OfficialAdapterConfig:
    """Sizes of the released adapter.

    Args:
        latent_channels: C of E(x_A) (4).
        latent_size: side of E(x_A) (64 at 512 px); the adapter reads exactly this size.
        clip_width: width of the CLIP tokens (768, ViT-B/32), which is also the cross-attention width.
        clip_tokens: T, the CLIP tokens (50 = 1 + 7 x 7 at 224 px) and the image tokens it returns.
    """

    latent_channels: int = 4
    latent_size: int = 64
    clip_width: int = 768
    clip_tokens: int = 50

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 1 or self.latent_size % 2:
            raise ValueError(f"the released adapter's sizes must be >= 1 with an even latent_size: {self}")

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], latent_channels: int = 4
    ) -> OfficialAdapterConfig:
        """The sizes a released `adapter.pth` (module. prefixes stripped) was trained at."""
        width, pooled = state["vae2clip.weight"].shape
        tokens, inputs = state["linear1.weight"].shape
        side = round(pooled**0.5)
        if side * side != pooled or inputs != tokens + latent_channels:
            raise ValueError(
                f"not a released adapter: vae2clip {tuple(state['vae2clip.weight'].shape)}, linear1 "
                f"{tuple(state['linear1.weight'].shape)} (expected (W, (h/2)^2) and (T, T + {latent_channels}))"
            )
        return cls(latent_channels, 2 * side, width, tokens)


class OfficialImageAdapter(FolderModel):
    """c_im = linear1([CLIP tokens; vae2clip(flatten(maxpool2(E(x_A))))]) -> (B, clip_tokens, clip_width)."""

    config_class = OfficialAdapterConfig
    made_by = "convert the released checkpoints (python tools/convert_official.py)"

    def __init__(self, config: OfficialAdapterConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else OfficialAdapterConfig()
        self.vae2clip = nn.Linear((c.latent_size // 2) ** 2, c.clip_width)
        self.linear1 = nn.Linear(c.clip_tokens + c.latent_channels, c.clip_tokens)

    def forward(self, latents: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) with h = w = latent_size, clip (B, T, clip_width) -> (B, T, clip_width)."""
        c = self.config
        if tuple(latents.shape[1:]) != (c.latent_channels, c.latent_size, c.latent_size):
            raise ValueError(
                f"the released adapter reads latents of {c.latent_channels} x {c.latent_size} x {c.latent_size} "
                f"(images of {c.latent_size} x the VAE's factor px), got {tuple(latents.shape[1:])}"
            )
        channels = self.vae2clip(F.max_pool2d(latents, 2).flatten(2))  # (B, C, clip_width)
        tokens = torch.cat([clip, channels], dim=1)  # (B, T + C, clip_width)
        return self.linear1(tokens.transpose(1, 2)).transpose(1, 2)
