"""The typed loaders of a Stable Diffusion model's parts and the bundle of them (`load_components`).

The neural parts go through `networks.load_model`, whose docstring gives the source rules (preset, single SD
checkpoint, local folder, hub id); the tokenizer and the scheduler follow the same rules here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, ControlNetModel, SchedulerMixin, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from portrait_edit import paths
from portrait_edit.loading.clip_tokenizer import CLIPPromptTokenizer
from portrait_edit.loading.networks import MODEL_PARTS, load_model
from portrait_edit.loading.sources import config_root, from_hub, locate, offline, resolve_source

logger = logging.getLogger(__name__)

PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "image_encoder", "controlnet")
MAX_TOKENS = 77  # CLIP's context length; every SD 1.x text encoder has 77 positions
# Files whose presence marks a folder as holding the part.
_MARKERS = {"tokenizer": ("vocab.json", "tokenizer.json"), "scheduler": ("scheduler_config.json",)}


def load_vae(
    source: str,
    *,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
    seed: int = 0,
) -> AutoencoderKL:
    """Load the VAE (AutoencoderKL); arguments as in `load_model`."""
    return load_model("vae", source, torch_dtype, local_files_only, single_file_config, seed)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Image pixels per latent cell along each side (8 for SD's VAE, 4 for the mini one)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def vae_roundtrip(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """decode(encode mean) of images (B, 3, H, W) in [-1, 1], clamped to [-1, 1], in the images' dtype."""
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return vae.decode(latents).sample.clamp(-1, 1).to(images)


def load_unet(
    source: str,
    *,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
    seed: int = 0,
) -> UNet2DConditionModel:
    """Load the denoising UNet (UNet2DConditionModel); arguments as in `load_model`."""
    return load_model("unet", source, torch_dtype, local_files_only, single_file_config, seed)


def load_text_encoder(
    source: str,
    *,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
    seed: int = 0,
) -> CLIPTextModel:
    """Load the CLIP text encoder (CLIPTextModel); arguments as in `load_model`."""
    return load_model("text_encoder", source, torch_dtype, local_files_only, single_file_config, seed)


def load_image_encoder(
    source: str,
    *,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    seed: int = 0,
) -> CLIPVisionModelWithProjection:
    """Load the CLIP image encoder (CLIPVisionModelWithProjection); arguments as in `load_model`."""
    return load_model("image_encoder", source, torch_dtype, local_files_only, None, seed)


def load_controlnet(
    source: str,
    *,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
    seed: int = 0,
) -> ControlNetModel:
    """Load the OpenPose ControlNet (ControlNetModel); arguments as in `load_model`."""
    return load_model("controlnet", source, torch_dtype, local_files_only, single_file_config, seed)


def _clip_tokenizer(path: str | Path, **kwargs: Any) -> CLIPPromptTokenizer:
    """CLIPPromptTokenizer.from_pretrained (OpenAI CLIP's prompt cleaning), except that a missing
    vocabulary raises OSError.

    transformers 5 returns a 2-token tokenizer (every word -> <|endoftext|>) for a folder or repo id
    without tokenizer files, instead of failing.
    """
    tokenizer = CLIPPromptTokenizer.from_pretrained(path, **kwargs)
    if len(tokenizer) <= 256:  # a byte-level BPE has at least the 256 byte symbols
        raise OSError(
            f"no CLIP tokenizer files (vocab.json + merges.txt or tokenizer.json) in {path} {kwargs}"
        )
    return tokenizer


def load_tokenizer(
    source: str, *, local_files_only: bool | None = None, single_file_config: str | None = None
) -> CLIPPromptTokenizer:
    """Load the CLIP tokenizer (presets and single files share the offline one in presets/tokenizer/).

    Args:
        source: preset name, SD checkpoint, local diffusers folder or hub id.
        local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
        single_file_config: for a checkpoint, a local diffusers folder whose tokenizer/ to use (None or a
            preset: the shared CLIP tokenizer, which is the one of every SD 1.x model).
    """
    kind, where = resolve_source(source)
    markers = _MARKERS["tokenizer"]
    if kind == "single_file":
        root = config_root(single_file_config)
        kind, where = (
            ("folder", root) if any((root / "tokenizer" / m).is_file() for m in markers) else (kind, None)
        )
    if kind == "folder":
        tokenizer = _clip_tokenizer(locate(where, "tokenizer", markers), local_files_only=True)
    elif kind == "hub":
        tokenizer = from_hub(
            _clip_tokenizer, where, ["tokenizer", None], offline(local_files_only), "tokenizer"
        )
    else:
        tokenizer = _clip_tokenizer(paths.PRESETS_DIR / "tokenizer", local_files_only=True)
    if tokenizer.model_max_length > 10 * MAX_TOKENS:  # no tokenizer_config: transformers reports ~1e30
        logger.warning("tokenizer from %r has no model_max_length; using %d", source, MAX_TOKENS)
        tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def load_scheduler(
    source: str,
    kind: str = "DDPMScheduler",
    *,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
) -> SchedulerMixin:
    """Load the noise schedule of `source` into the scheduler class named `kind` (via `from_config`).

    Args:
        source: preset name, SD checkpoint, local diffusers folder or hub id.
        kind: a diffusers scheduler class name, e.g. DDPMScheduler, DDIMScheduler, UniPCMultistepScheduler.
        local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
        single_file_config: for a checkpoint, the preset or local folder whose scheduler/ to use (None: sd15).
    """
    cls = getattr(diffusers, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(
            f"kind={kind!r} is not a diffusers scheduler class; use e.g. DDPMScheduler, "
            "DDIMScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler"
        )
    source_kind, where = resolve_source(source)
    if source_kind == "preset":
        source_kind, where = "folder", paths.PRESETS_DIR / where
    elif source_kind == "single_file":
        source_kind, where = "folder", config_root(single_file_config)
    if source_kind == "folder":
        config = cls.load_config(locate(where, "scheduler", _MARKERS["scheduler"]))
    else:
        config = from_hub(cls.load_config, where, ["scheduler", None], offline(local_files_only), "scheduler")
    return cls.from_config(config)


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion model; a part that was not requested is None."""

    vae: AutoencoderKL | None = None
    unet: UNet2DConditionModel | None = None
    text_encoder: CLIPTextModel | None = None
    tokenizer: CLIPTokenizer | None = None
    scheduler: SchedulerMixin | None = None
    image_encoder: CLIPVisionModelWithProjection | None = None
    controlnet: ControlNetModel | None = None


def load_components(
    base: str,
    *,
    vae: str | None = None,
    image_encoder: str | None = None,
    controlnet: str | None = None,
    parts: tuple[str, ...] | list[str] = PARTS,
    scheduler_kind: str = "DDPMScheduler",
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
    seed: int = 0,
) -> SDComponents:
    """Load the requested parts of an SD model.

    Args:
        base: source of the VAE, UNet, text encoder, tokenizer and scheduler (preset, checkpoint, folder, id).
        vae: another source of the VAE (None: the base's), e.g. `stabilityai/sd-vae-ft-mse` beside
            `SG161222/Realistic_Vision_V4.0_noVAE`, whose own VAE is SD 1.5's.
        image_encoder: source of the CLIP image encoder; defaults to `base` when it is a preset or a local folder with an image_encoder/ (else required).
        controlnet: source of the OpenPose ControlNet; defaults to `base` when it is a preset or a local folder with a controlnet/ (else required).
        parts: which of PARTS to load; the others stay None.
        scheduler_kind: diffusers scheduler class built from the base's schedule.
        torch_dtype: dtype of the model weights (None: as built or as stored).
        local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
        single_file_config: architecture of a single-file `base` (preset or local diffusers folder).
        seed: seed of random preset weights.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    is_preset = resolve_source(base)[0] == "preset"
    sources = {name: base for name in PARTS}
    for name, given in (("image_encoder", image_encoder), ("controlnet", controlnet)):
        # A preset, or a local pipeline folder that has the part (an MCDM export, the mini world's data/mini).
        has_part = is_preset or (Path(base) / name / "config.json").is_file()
        if given is None and name in parts and not has_part:
            raise ValueError(
                f"base {base!r} is not a preset and has no {name}/ folder, so set {name}= explicitly (a hub id such as "
                f"{MODEL_PARTS[name].example!r} or a local folder), or leave {name!r} out of parts"
            )
        sources[name] = given or base
    sources["vae"] = vae or base
    common = {"local_files_only": local_files_only, "single_file_config": single_file_config}
    loaded: dict[str, Any] = {}
    for name in parts:
        if name == "tokenizer":
            loaded[name] = load_tokenizer(sources[name], **common)
        elif name == "scheduler":
            loaded[name] = load_scheduler(sources[name], scheduler_kind, **common)
        else:
            loaded[name] = load_model(
                name, sources[name], torch_dtype, local_files_only, single_file_config, seed
            )
    return SDComponents(**loaded)
