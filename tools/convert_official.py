"""Convert the paper's released MCDMs (ByteDance/feature-preserve-portrait-editing) into MCDM exports that
`portrait-edit predict --config configs/<task>/edit.yaml --model.init_args.model=<out>` and evaluation
load like our own (portrait_edit/models/official.py says what is converted and how):

    huggingface-cli download ByteDance/feature-preserve-portrait-editing --local-dir released \
        --include "portrait_editing_models/outfit/checkpoint-200000/*"
    python tools/convert_official.py released/portrait_editing_models/outfit/checkpoint-200000 --out outputs/official/outfit
"""

from __future__ import annotations

import argparse
import sys

import torch

from portrait_edit.models.official import RELEASE_BASE, RELEASE_IMAGE_ENCODER, convert_official


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a released checkpoint folder (unet.pth, adapter.pth)")
    parser.add_argument("--out", required=True, help="the export folder to write")
    parser.add_argument(
        "--base", default=RELEASE_BASE, help="the base it was trained on (hub id, folder, file)"
    )
    parser.add_argument("--vae", default=None, help="another VAE source (default: the base's)")
    parser.add_argument("--image-encoder", default=RELEASE_IMAGE_ENCODER, help="the CLIP its adapter reads")
    parser.add_argument("--single-file-config", default=None, help="a single-file base's architecture")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    args = parser.parse_args(argv)
    try:
        out = convert_official(
            args.checkpoint, args.out, args.base, args.vae, args.image_encoder, args.single_file_config,
            dtype=getattr(torch, args.dtype),
        )  # fmt: skip
    except ValueError as exc:
        raise SystemExit(f"convert_official: error: {exc}") from None
    print(f"wrote the converted MCDM to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
