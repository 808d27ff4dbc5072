"""Pluggable conditioning of a diffusion UNet: what a training batch turns into for the UNet call.

`DiffusionSystem` trains every denoiser of the project with one loop; what differs between stages is only
how a batch becomes the UNet's keyword arguments, and which weights learn. A `Conditioning`:
1. `bind(components)`: takes the frozen parts it needs from the loaded SD components (text encoder,
   tokenizer, the UNet to initialise a ControlNet from) and builds its own trainable modules;
2. `forward(batch, noisy_latents, timesteps, generator)` -> the UNet call's kwargs: `sample` (default:
   the noisy latents; the MCDM will concatenate its spatial condition on the channel axis),
   `encoder_hidden_states`, and for ControlNet `down_block_additional_residuals` /
   `mid_block_additional_residual`;
3. `trainable_modules()`: {diffusers subfolder name: module} of what it trains (exported and EMA'd).

Later stages add subclasses without touching the system: the identity encoder overrides
`TextConditioning.encode_tokens` to splice 2 learned word embeddings into the token embeddings; the MCDM
appends image tokens to `encoder_hidden_states`, widens `sample` and drops conditions.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel
from torch import nn

from portrait_edit.loading.components import SDComponents
from portrait_edit.loading.networks import load_model

Batch = dict[str, Any]


@torch.no_grad()
def scaled_latents(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents (posterior mean x scaling_factor) of images (B, 3, H, W) in [-1, 1], float32 (the
    mean, so cached latents give the same loss; float32 even under autocast)."""
    latent = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return (latent * vae.config.scaling_factor).float()


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class Conditioning(nn.Module):
    """Base class: the UNet is fed the noisy latents alone (unconditional denoising)."""

    #: SD parts `bind` needs besides the VAE and UNet (the system loads them).
    parts: tuple[str, ...] = ()

    def bind(self, components: SDComponents) -> None:
        """Take the frozen parts this conditioning needs; build trainable ones (called once, in the system's
        __init__, so the state dict is complete before a checkpoint is loaded)."""

    def forward(
        self,
        batch: Batch,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of `unet(timestep=timesteps, **kwargs)`.

        Args:
            batch: the training batch (see DiffusionSystem).
            noisy_latents: x_t (B, C, h, w).
            timesteps: int64 (B,).
            generator: CPU generator for condition dropout (training only); None: no dropout.
        """
        return {"sample": noisy_latents}

    def trainable_modules(self) -> dict[str, nn.Module]:
        """{name: module} trained by this conditioning; the name is the diffusers export subfolder."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules().values() for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> Conditioning:
        # Frozen parts stay in eval mode (no dropout) even while the system trains.
        super().train(False)
        for module in self.trainable_modules().values():
            module.train(mode)
        self.training = mode
        return self


class TextConditioning(Conditioning):
    """Frozen CLIP text encoder states of the batch's captions, with caption dropout for guidance.

    Args:
        caption_dropout: probability that a training caption is replaced by the null text (classifier-free
            guidance learns the unconditional branch from these).
    """

    parts = ("text_encoder", "tokenizer")

    def __init__(self, caption_dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        self.caption_dropout = caption_dropout
        self.text_encoder: nn.Module | None = None
        self.tokenizer = None

    def bind(self, components: SDComponents) -> None:
        if components.text_encoder is None or components.tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs the text_encoder and tokenizer parts")
        self.text_encoder = _freeze(components.text_encoder)
        self.tokenizer = components.tokenizer

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids (B, 77), padded and truncated exactly as diffusers' pipelines do at inference."""
        return self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 77) ids -> (B, 77, D) last hidden states (the identity encoder overrides this)."""
        with torch.no_grad():
            return self.text_encoder(input_ids.to(self.text_encoder.device))[0]

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> text-encoder states (B, 77, D)."""
        return self.encode_tokens(self.tokenize(list(captions)))

    def null_text_states(self, batch_size: int = 1) -> torch.Tensor:
        """The null text: the encoder output of the empty prompt "" (B, 77, D); the ONE definition used by
        training dropout and by guidance at inference (diffusers encodes negative_prompt="" the same way)."""
        return self.encode_text([""]).expand(batch_size, -1, -1)

    def drop_mask(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """bool (B,): True where the caption is replaced by the null text (never without a generator or
        outside training)."""
        if generator is None or not self.training or self.caption_dropout == 0.0:
            return torch.zeros(batch_size, dtype=torch.bool)
        return (
            torch.rand(batch_size, generator=generator, device=generator.device).cpu() < self.caption_dropout
        )

    def dropped(self, states: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Text states (B, 77, D) with the rows `drop_mask` picks replaced by the null text."""
        drop = self.drop_mask(len(states), generator)
        if drop.any():
            drop = drop.to(states.device)[:, None, None]  # (B, 1, 1): broadcast over tokens and width
            states = torch.where(drop, self.null_text_states(len(states)).to(states), states)
        return states

    def text_states(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor:
        """The batch's captions encoded, dropped rows replaced by the null text: (B, 77, D)."""
        return self.dropped(self.encode_text(list(batch["caption"])), generator)

    def forward(
        self,
        batch: Batch,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        states = self.text_states(batch, generator).to(noisy_latents.dtype)
        return {"sample": noisy_latents, "encoder_hidden_states": states}


class PoseControlConditioning(TextConditioning):
    """Text plus a trainable OpenPose ControlNet fed the batch's pose drawing (B, 3, H, W) in [-1, 1].

    The ControlNet sees the pose in [0, 1], as diffusers' ControlNet pipelines feed their control image,
    so a trained model drops into StableDiffusionControlNetPipeline (and a pretrained OpenPose ControlNet
    fine-tunes here unchanged).

    Args:
        caption_dropout: as in TextConditioning; the pose is kept when the caption is dropped.
        controlnet: source of an existing ControlNet (preset, folder, hub id, single file); None:
            initialise from the UNet's encoder, as diffusers' ControlNetModel.from_unet does.
        embedding_channels: channels of the pose-embedding convs when initialising from the UNet; their
            count sets the pose image's downscale, 2 ** (len - 1), which must equal the VAE's. None: SD's
            (16, 32, 96, 256) cut to the VAE's depth (4 blocks: 8x, as SD; mini's 3 blocks: 4x).
    """

    def __init__(
        self,
        caption_dropout: float = 0.1,
        controlnet: str | None = None,
        embedding_channels: list[int] | None = None,
    ) -> None:
        super().__init__(caption_dropout=caption_dropout)
        self.controlnet_source = controlnet
        self.embedding_channels = embedding_channels
        self.controlnet: ControlNetModel | None = None

    def bind(self, components: SDComponents) -> None:
        super().bind(components)
        vae_depth = len(components.vae.config.block_out_channels)
        if self.controlnet_source is None:
            channels = self.embedding_channels or [16, 32, 96, 256][:vae_depth]
            if len(channels) != vae_depth:
                raise ValueError(
                    f"embedding_channels {channels} downscale the pose by {2 ** (len(channels) - 1)} but the "
                    f"VAE by {2 ** (vae_depth - 1)}; give {vae_depth} channel counts"
                )
            controlnet = ControlNetModel.from_unet(
                components.unet, conditioning_embedding_out_channels=channels
            )
        else:
            controlnet = load_model("controlnet", self.controlnet_source, torch_dtype=torch.float32)
        self.controlnet = controlnet.train().requires_grad_(True)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"controlnet": self.controlnet}

    def forward(
        self,
        batch: Batch,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        kwargs = super().forward(batch, noisy_latents, timesteps, generator)
        return {**kwargs, **pose_residuals(self.controlnet, kwargs, timesteps, batch["pose"])}


def pose_residuals(
    controlnet: ControlNetModel, unet_kwargs: dict[str, Any], timesteps: torch.Tensor, pose: torch.Tensor
) -> dict[str, Any]:
    """The ControlNet's residuals for the UNet call `unet_kwargs` (its sample and text states) under the
    pose drawings float (B, 3, H, W) in [-1, 1], shown to the ControlNet in [0, 1]."""
    noisy_latents = unet_kwargs["sample"]
    down, mid = controlnet(
        noisy_latents,
        timesteps,
        encoder_hidden_states=unet_kwargs["encoder_hidden_states"],
        controlnet_cond=(pose.to(noisy_latents) + 1.0) / 2.0,
        return_dict=False,
    )
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
