"""Export a UNet, VAE and CLIP text encoder into ONE original-layout (LDM) Stable Diffusion .safetensors.

This is the layout of the SD 1.x checkpoints that tools such as AUTOMATIC1111 and ComfyUI load and that
`from_single_file` reads (RealisticVision and friends): `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE) and `cond_stage_model.transformer.text_model.*` (CLIP text encoder).

    python tools/export_single_file.py mini out/mini.safetensors             # a preset or trained mini
    python tools/export_single_file.py path/to/diffusers_folder out/model.safetensors --dtype fp16

Load it back with portrait_edit.loading.components (`load_unet("out/model.safetensors",
single_file_config=<the diffusers folder or preset it came from>)`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

# diffusers resnet sub-module names -> LDM ones, per model (LDM's UNet ResBlock nests them in Sequentials).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config: dict) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers key prefix -> (LDM key prefix, renames of the first names after the prefix)."""
    lpb, n = config["layers_per_block"], len(config["block_out_channels"])
    table: dict[str, tuple[str, dict[str, str]]] = {
        "time_embedding.linear_1.": ("time_embed.0.", {}),
        "time_embedding.linear_2.": ("time_embed.2.", {}),
        "conv_in.": ("input_blocks.0.0.", {}),
        "conv_norm_out.": ("out.0.", {}),
        "conv_out.": ("out.2.", {}),
        "mid_block.resnets.0.": ("middle_block.0.", _UNET_RESNET),
        "mid_block.attentions.0.": ("middle_block.1.", {}),
        "mid_block.resnets.1.": ("middle_block.2.", _UNET_RESNET),
    }
    for b in range(n):
        # LDM numbers the encoder's layers flat: input_blocks.0 is conv_in, then lpb layers + 1 downsampler
        # per level (none after the last level).
        for j in range(lpb):
            table[f"down_blocks.{b}.resnets.{j}."] = (
                f"input_blocks.{1 + b * (lpb + 1) + j}.0.",
                _UNET_RESNET,
            )
            table[f"down_blocks.{b}.attentions.{j}."] = (f"input_blocks.{1 + b * (lpb + 1) + j}.1.", {})
        table[f"down_blocks.{b}.downsamplers.0.conv."] = (f"input_blocks.{(b + 1) * (lpb + 1)}.0.op.", {})
        # The decoder has lpb + 1 layers per level; the upsampler follows the last layer's attention, if any.
        for j in range(lpb + 1):
            table[f"up_blocks.{b}.resnets.{j}."] = (f"output_blocks.{b * (lpb + 1) + j}.0.", _UNET_RESNET)
            table[f"up_blocks.{b}.attentions.{j}."] = (f"output_blocks.{b * (lpb + 1) + j}.1.", {})
        slot = 2 if "CrossAttn" in config["up_block_types"][b] else 1
        table[f"up_blocks.{b}.upsamplers.0."] = (f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.", {})
    return table


def _vae_prefixes(config: dict) -> dict[str, tuple[str, dict[str, str]]]:
    n = len(config["block_out_channels"])
    table: dict[str, tuple[str, dict[str, str]]] = {}
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", {})
        table[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", {})
        table[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", {})
        table[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", _VAE_ATTENTION)
    for b in range(n):
        table[f"encoder.down_blocks.{b}.resnets."] = (f"encoder.down.{b}.block.", {})
        table[f"encoder.down_blocks.{b}.downsamplers.0."] = (f"encoder.down.{b}.downsample.", {})
        # LDM's decoder counts its levels from the lowest resolution up: diffusers' up_blocks.0 is up.{n-1}.
        table[f"decoder.up_blocks.{b}.resnets."] = (f"decoder.up.{n - 1 - b}.block.", {})
        table[f"decoder.up_blocks.{b}.upsamplers.0."] = (f"decoder.up.{n - 1 - b}.upsample.", {})
    return table


def _rename(
    state: dict[str, torch.Tensor], table: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, torch.Tensor]:
    """Rename by the longest matching prefix of `table`, then the first name after it."""
    out = {}
    for key, value in state.items():
        prefix = max((p for p in table if key.startswith(p)), key=len, default="")
        ldm_prefix, renames = table.get(prefix, ("", {}))
        rest = key[len(prefix) :]
        for old, new in renames.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        out[ldm_prefix + rest] = value
    return out


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights under the LDM names, prefixed `model.diffusion_model.`.

    Args:
        unet: an SD-style UNet2DConditionModel (plain `down/up_blocks`, one mid block, no class embedding).
    """
    state = _rename(unet.state_dict(), _unet_prefixes(dict(unet.config)))
    return {"model.diffusion_model." + k: v for k, v in state.items()}


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The VAE's weights under the LDM names, prefixed `first_stage_model.`.

    Args:
        vae: an SD-style AutoencoderKL.
    """
    state = _rename(vae.state_dict(), _vae_prefixes(dict(vae.config)))
    out = {}
    for key, value in state.items():
        key = key.replace(
            ".conv_shortcut.", ".nin_shortcut."
        )  # the only resnet name LDM's VAE spells otherwise
        # LDM's mid attention uses 1x1 convs where diffusers uses Linear: (out, in) -> (out, in, 1, 1).
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + key] = value
    return out


def text_encoder_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """The CLIP text encoder's weights under SD 1.x names, `cond_stage_model.transformer.text_model.*`.

    Args:
        text_encoder: a transformers CLIPTextModel (with or without its `text_model.` level, v4 / v5).
    """
    out = {
        f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
        for k, v in text_encoder.state_dict().items()
    }
    positions = text_encoder.config.max_position_embeddings
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def export_single_file(
    path: str | os.PathLike,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the models into one LDM-layout .safetensors (written to a temporary name, then renamed).

    Args:
        path: output file, ending in .safetensors.
        unet: the denoising UNet.
        vae: the autoencoder.
        text_encoder: the CLIP text encoder, or None to leave it out.
        dtype: cast floating weights to this dtype (None: keep).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the output must end in .safetensors, got {path}")
    state = {
        **unet_to_ldm(unet),
        **vae_to_ldm(vae),
        **(text_encoder_to_ldm(text_encoder) if text_encoder else {}),
    }
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in state.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from portrait_edit.loading.components import load_text_encoder, load_unet, load_vae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="preset name, local diffusers folder or hub id of the base model")
    parser.add_argument("out", type=Path, help="output .safetensors")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="cast the weights")
    parser.add_argument("--no-text-encoder", action="store_true", help="leave the text encoder out")
    args = parser.parse_args(argv)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}[args.dtype]
    text_encoder = None if args.no_text_encoder else load_text_encoder(args.source)
    out = export_single_file(args.out, load_unet(args.source), load_vae(args.source), text_encoder, dtype)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
