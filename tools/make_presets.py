"""Write the preset configs and the offline CLIP tokenizer into portrait_edit/loading/presets/.

Re-runnable; the output is deterministic, so a rerun on an unchanged tree leaves git clean.

    python tools/make_presets.py            # write everything
    python tools/make_presets.py --check    # exit 1 if a written file would change

Each preset is a diffusers-style folder tree (`<preset>/<component>/config.json`), so it serves both as the
architecture for random weights and as the local `config=` of `from_single_file`. The tokenizer is written
once into `presets/tokenizer/` and shared by every preset (it is the OpenAI CLIP BPE, 49,408 entries).

Architectures:
- `tiny`: diffusers' own dummy components (tests/pipelines/controlnet/test_controlnet.py), with the real CLIP
  vocabulary and 77 positions so the shared tokenizer works; seconds on a CPU.
- `mini`: the mini world (64x64 RGB): VAE x4 down to 16x16x8 latents, a 3-level UNet with cross-attention at
  text width 64, a 4-layer CLIP pair, and a ControlNet whose conditioning embedding also downsamples x4.
- `sd15`: Stable Diffusion 1.5 as published (UNet 859.5M, VAE 83.7M, CLIP ViT-L/14 text 123.1M and vision
  303.9M, OpenPose ControlNet 361.3M).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTextConfig, CLIPVisionConfig

from portrait_edit.paths import PRESETS_DIR

# CLIP special tokens: the open_clip BPE calls them <start_of_text>/<end_of_text>; transformers and every SD
# checkpoint use the OpenAI names below. Ids 49406/49407 are the same in both.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE, MAX_LENGTH = 49408, 77
# bos/eos/pad consistent with the tokenizer: SD pads with <|endoftext|>; eos_token_id=49407 makes transformers
# pool the text states at the first EOS (its legacy eos_token_id=2 path takes argmax of the ids instead).
TEXT_IDS = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}

# SD 1.5's published scheduler config (PNDM in the original repo); keys valid for the DDPM/DDIM/UniPC family.
SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"


def _unet(channels, layers, cross_dim, heads, groups, sample, down, up, latent=4):
    return dict(
        block_out_channels=channels,
        layers_per_block=layers,
        cross_attention_dim=cross_dim,
        attention_head_dim=heads,
        norm_num_groups=groups,
        sample_size=sample,
        in_channels=latent,
        out_channels=latent,
        down_block_types=down,
        up_block_types=up,
    )


def _controlnet(unet: dict[str, Any], cond_channels) -> dict[str, Any]:
    keep = (
        "block_out_channels",
        "layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "norm_num_groups",
        "in_channels",
        "down_block_types",
    )
    return {**{k: unet[k] for k in keep}, "conditioning_embedding_out_channels": cond_channels}


def _vae(channels, layers, groups, sample, latent=4):
    n = len(channels)
    return dict(
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=groups,
        sample_size=sample,
        latent_channels=latent,
        in_channels=3,
        out_channels=3,
        scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
    )


def _text(hidden, inter, layers, heads, proj):
    return dict(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_LENGTH,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=proj,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        **TEXT_IDS,
    )


def _vision(image, patch, hidden, inter, layers, heads, proj):
    return dict(
        image_size=image,
        patch_size=patch,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=proj,
        num_channels=3,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


_TINY_UNET = _unet((4, 8), 2, 32, 8, 1, 32, (PLAIN_DOWN, CROSS_DOWN), (CROSS_UP, PLAIN_UP))
# 8 latent channels (not SD's 4): at a x4 downscale the 4-channel VAE blurred the faces' few-pixel features
# (eyes, mouth, glasses), 26.9 dB after its training budget; 8 channels train faster for the same cost.
_MINI_UNET = _unet(
    (32, 64, 128),
    1,
    64,
    4,
    8,
    16,
    (PLAIN_DOWN, CROSS_DOWN, CROSS_DOWN),
    (CROSS_UP, CROSS_UP, PLAIN_UP),
    latent=8,
)
_SD15_UNET = _unet(
    (320, 640, 1280, 1280),
    2,
    768,
    8,
    32,
    64,
    (CROSS_DOWN,) * 3 + (PLAIN_DOWN,),
    (PLAIN_UP,) + (CROSS_UP,) * 3,
)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vae": _vae((4, 8), 1, 2, 32),
        "unet": _TINY_UNET,
        # Two conditioning channels = one stride-2 conv: x2, the tiny VAE's downscale.
        "controlnet": _controlnet(_TINY_UNET, (16, 32)),
        "text_encoder": _text(32, 37, 5, 4, 32),
        "image_encoder": _vision(32, 2, 32, 37, 5, 4, 32),
    },
    "mini": {
        "vae": _vae((32, 64, 64), 1, 16, 64, latent=8),  # 64x64x3 -> 16x16x8
        "unet": _MINI_UNET,
        "controlnet": _controlnet(_MINI_UNET, (16, 32, 64)),  # x4, the mini VAE's downscale
        "text_encoder": _text(64, 256, 4, 4, 64),
        "image_encoder": _vision(64, 8, 64, 256, 4, 4, 64),
    },
    "sd15": {
        "vae": _vae((128, 256, 512, 512), 2, 32, 512),
        "unet": _SD15_UNET,
        # lllyasviel/sd-controlnet-openpose: hint embedding 16-32-96-256, x8 like the SD VAE.
        "controlnet": _controlnet(_SD15_UNET, (16, 32, 96, 256)),
        "text_encoder": _text(768, 3072, 12, 12, 768),  # CLIP ViT-L/14 text tower
        "image_encoder": _vision(224, 14, 1024, 4096, 24, 16, 768),  # CLIP ViT-L/14 vision tower
    },
}

_DIFFUSERS = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "controlnet": ControlNetModel}
_TRANSFORMERS = {"text_encoder": CLIPTextConfig, "image_encoder": CLIPVisionConfig}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _full_config(component: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return the complete config (library defaults filled in) without the library's version stamps.

    The version stamps are dropped so that the files do not change when a library is upgraded.
    """
    if component in _DIFFUSERS:
        with torch.device("meta"):  # only the config is wanted: no memory, no init time
            model = _DIFFUSERS[component](**kwargs)
        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        config["_class_name"] = _DIFFUSERS[component].__name__
    else:
        config = _TRANSFORMERS[component](**kwargs).to_dict()
        config.pop("transformers_version", None)
    return json.loads(json.dumps(config))  # tuples -> lists, like the libraries write them


def write_tokenizer(out: Path) -> None:
    """Write OpenAI CLIP's BPE tokenizer files, rebuilt from the vocabulary open_clip ships.

    Args:
        out: folder to write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into.
    """
    bpe = SimpleTokenizer()
    rename = {"<start_of_text>": BOS, "<end_of_text>": EOS}
    vocab = {rename.get(tok, tok): idx for tok, idx in bpe.encoder.items()}
    assert len(vocab) == VOCAB_SIZE and vocab[BOS] == 49406 and vocab[EOS] == 49407
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.__getitem__)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    _write_json(out / "special_tokens_map.json", special)
    # model_max_length must be explicit: without it transformers reports ~1e30 and diffusers pads to that.
    _write_json(
        out / "tokenizer_config.json",
        {
            **special,
            "model_max_length": MAX_LENGTH,
            "tokenizer_class": "CLIPTokenizer",
            "do_lower_case": True,
            "errors": "replace",
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
        },
    )


def write_presets(root: Path) -> None:
    """Write every preset's component configs and the shared tokenizer under `root`.

    Args:
        root: the presets folder (normally portrait_edit/loading/presets).
    """
    write_tokenizer(root / "tokenizer")
    for preset, components in PRESETS.items():
        for component, kwargs in components.items():
            _write_json(root / preset / component / "config.json", _full_config(component, kwargs))
        _write_json(
            root / preset / "scheduler" / "scheduler_config.json",
            {"_class_name": "PNDMScheduler", **SCHEDULER},
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRESETS_DIR, help="presets folder to write")
    parser.add_argument("--check", action="store_true", help="only report whether the files are up to date")
    args = parser.parse_args(argv)
    if not args.check:
        write_presets(args.out)
        print(f"wrote presets {sorted(PRESETS)} and tokenizer/ under {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_presets(Path(tmp))
        stale = []
        for fresh in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            shipped = args.out / fresh.relative_to(tmp)
            if not shipped.is_file() or not filecmp.cmp(fresh, shipped, shallow=False):
                stale.append(str(fresh.relative_to(tmp)))
    print("stale: " + ", ".join(stale) if stale else "presets up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
