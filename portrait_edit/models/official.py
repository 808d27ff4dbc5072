"""The paper's released MCDMs (hub repo ByteDance/feature-preserve-portrait-editing,
`portrait_editing_models/{outfit,cartoon}/checkpoint-200000/{unet.pth,adapter.pth}`) converted into our
export format, so that our editor runs them with the method as published: the model-made mask, Eq. 3 and
the kept source, which the release's own demo never uses.

What a conversion writes (`convert_official`):
- `unet/`: the base's UNet architecture with conv_in widened 4 -> 8 (z_t + c_s), holding `unet.pth`;
- `image_adapter/`: `OfficialImageAdapter` holding `adapter.pth` (models/official_adapter.py);
- the base's VAE, text encoder and tokenizer (the release's demo loads them from
  stablediffusionapi/realistic-vision-v13), CLIP ViT-B/32 as the image encoder (224 px, OpenAI's mean and
  std, the last hidden state's 50 tokens), a UniPC scheduler on the base's schedule;
- `mcdm.json` with the release's conditioning: adapter "official", spatial null an all-zero latent, image
  null the adapter over CLIP and VAE of an all-black image, text null "" (its guidance's nulls); the
  paper's scales 3 / 3 / 5 (used) and the demo's 3 / 2 / 4 (`demo_scales`); the paper's mask at the 10th
  of 20 steps.
Two differences from the release's code, both deterministic choices of ours: E(x_A) and the null's latent
are the VAE posterior mean (the release samples them), and CLIP sees x_A resized by our bicubic view
(the release's CLIPProcessor resizes and centre-crops; a square x_A gives the same crop).
"""

from __future__ import annotations

from pathlib import Path

import torch

from portrait_edit.loading.components import load_components, load_scheduler
from portrait_edit.loading.networks import load_differences
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.models.mcdm_export import MCDMExportSettings, save_mcdm_export
from portrait_edit.models.official_adapter import KIND, OfficialAdapterConfig

RELEASE_REPO = "ByteDance/feature-preserve-portrait-editing"
RELEASED = ("outfit", "cartoon")  # portrait_editing_models/<name>/checkpoint-200000
RELEASE_BASE = "stablediffusionapi/realistic-vision-v13"
RELEASE_IMAGE_ENCODER = "openai/clip-vit-base-patch32"
PAPER_SCALES = {"image": 3.0, "spatial": 3.0, "text": 5.0}
DEMO_SCALES = {"image": 3.0, "spatial": 2.0, "text": 4.0}


def read_release_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A released .pth state dict (saved from a DistributedDataParallel module) with its `module.`
    prefixes stripped; read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: download the release's checkpoint folder (huggingface-cli download "
            f"{RELEASE_REPO} --include 'portrait_editing_models/outfit/checkpoint-200000/*' --local-dir released)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (a released unet.pth / adapter.pth)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        _, first = load_differences(exc)
        raise ValueError(
            f"{path} does not fit the base's {type(module).__name__} (first difference: {first}); convert with "
            f"the base it was trained on (--base {RELEASE_BASE})"
        ) from exc


def convert_official(
    checkpoint: str | Path,
    out: str | Path,
    base: str = RELEASE_BASE,
    vae: str | None = None,
    image_encoder: str = RELEASE_IMAGE_ENCODER,
    single_file_config: str | None = None,
    local_files_only: bool | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Convert a released checkpoint folder (unet.pth, adapter.pth) into an MCDM export at `out`.

    Args:
        checkpoint: the folder, e.g. released/portrait_editing_models/outfit/checkpoint-200000.
        out: the export folder to write (swapped in part by part).
        base: the SD 1.5-family model it was fine-tuned from (its UNet architecture, VAE, text encoder,
            tokenizer and schedule): a hub id, a folder or a single file.
        vae: another VAE source (None: the base's).
        image_encoder: the CLIP image encoder the adapter reads (the release: ViT-B/32).
        single_file_config, local_files_only: as in load_components.
        dtype: dtype of the stored weights.
    """
    checkpoint = Path(checkpoint)
    unet_state = read_release_state(checkpoint / "unet.pth")
    adapter_state = read_release_state(checkpoint / "adapter.pth")
    common = {"local_files_only": local_files_only, "single_file_config": single_file_config}
    components = load_components(
        base, vae=vae, parts=("vae", "unet", "text_encoder", "tokenizer"), torch_dtype=torch.float32, **common
    )
    sizes = OfficialAdapterConfig.from_state_dict(adapter_state, components.vae.config.latent_channels)
    conditioning = MCDMConditioning(
        p_drop=0.0, image_encoder=image_encoder, clip_layer=-1, clip_image_size=224, adapter_kind=KIND,
        spatial_null="zeros", num_image_tokens=sizes.clip_tokens,
    )  # fmt: skip
    conditioning.bind(components)  # widens the base UNet's conv_in to 4 + 4 channels
    _load_strict(components.unet, unet_state, checkpoint / "unet.pth")
    _load_strict(conditioning.adapter, adapter_state, checkpoint / "adapter.pth")
    schedule = load_scheduler(base, "UniPCMultistepScheduler", **common).config
    settings = MCDMExportSettings.of(
        conditioning, base=base, vae=vae, scales=PAPER_SCALES, demo_scales=DEMO_SCALES, mask_at=0.5,
        converted_from=f"{RELEASE_REPO}: {checkpoint}",
    )  # fmt: skip
    return save_mcdm_export(
        out, components.unet, conditioning.adapter, conditioning, dict(schedule), settings, dtype
    )
