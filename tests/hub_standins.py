"""Tiny random-weight stand-ins of the hub repos the real-scale configs name, written into a Hugging Face
cache exactly as `huggingface-cli download` leaves one (`models--org--name/` with `blobs/`,
`snapshots/<commit>/` of links into them and `refs/main`), plus an FFHQ-layout face folder and a folder of
mixed photos. Architectures are SD 1.5's in shape (a VAE and a ControlNet hint that downscale by 8, a
77-token CLIP text encoder with the 49,408-entry vocabulary, a two-tower CLIPModel with its preprocessor at
224 px) at widths of 4-32, so every stage runs on a CPU in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel

from portrait_edit import paths
from portrait_edit.world import make_pair

TINY = paths.PRESETS_DIR / "tiny"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REALISTIC_VISION = "SG161222/Realistic_Vision_V4.0_noVAE"
VAE_FT_MSE = "stabilityai/sd-vae-ft-mse"
OPENPOSE = "lllyasviel/control_v11p_sd15_openpose"
CLIP_L = "openai/clip-vit-large-patch14"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _config(part: str, **changes) -> dict:
    config = json.loads((TINY / part / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")} | changes


def vae(seed: int) -> AutoencoderKL:
    """SD's VAE layout (4 levels: 8x down) at widths 4-8."""
    torch.manual_seed(seed)
    return AutoencoderKL(**_config(
        "vae", block_out_channels=[4, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64,
    ))  # fmt: skip


def unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**_config("unet", sample_size=8))


def controlnet(seed: int) -> ControlNetModel:
    """The OpenPose ControlNet's layout: a hint embedding that downscales by 8, like SD's VAE."""
    torch.manual_seed(seed)
    return ControlNetModel(**_config("controlnet", conditioning_embedding_out_channels=[4, 8, 8, 16]))


def text_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))


def clip_model(seed: int) -> CLIPModel:
    """openai/clip-vit-large-patch14's layout (both towers, 224 px, 14 -> 32 px patches) at width 32."""
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 32},
        vision_config={**tower, "image_size": 224, "patch_size": 32, "projection_dim": 32},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def _tokenizer_files(folder: Path) -> None:
    """OpenAI CLIP's tokenizer files as the SD 1.5 and CLIP repos hold them (vocab.json, merges.txt, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (paths.PRESETS_DIR / "tokenizer").iterdir():
        shutil.copyfile(path, folder / path.name)


def _write_repo(hub: Path, repo_id: str, folder: Path) -> Path:
    """Move the files of `folder` into `hub` as the cached snapshot of `repo_id`; returns the snapshot."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.move(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.rmtree(folder)
    return snapshot


def _sd_pipeline_folder(out: Path, seed: int) -> Path:
    """A diffusers StableDiffusionPipeline folder as the SD 1.5 repo holds it (safety checker included)."""
    vae(seed).save_pretrained(out / "vae")
    unet(seed + 1).save_pretrained(out / "unet")
    text_encoder(seed + 2).save_pretrained(out / "text_encoder")
    _tokenizer_files(out / "tokenizer")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    ).save_pretrained(out / "scheduler")  # fmt: skip
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(out / "feature_extractor")
    config = clip_model(seed).config
    config._attn_implementation = "eager"  # the safety checker has no SDPA path
    torch.manual_seed(seed + 3)
    StableDiffusionSafetyChecker(config).save_pretrained(out / "safety_checker")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "requires_safety_checker": True,
    }, indent=2))  # fmt: skip
    return out


def build_hub_cache(hf_home: Path) -> dict[str, Path]:
    """Every repo the real-scale configs and base pieces name, cached under `hf_home`/hub; returns their
    snapshot folders by repo id."""
    hub, work = hf_home / "hub", hf_home / "work"
    snapshots = {}
    for repo_id, seed in ((SD15, 10), (REALISTIC_VISION, 20)):
        snapshots[repo_id] = _write_repo(hub, repo_id, _sd_pipeline_folder(work / str(seed), seed))
    vae(30).save_pretrained(work / "vae")
    snapshots[VAE_FT_MSE] = _write_repo(hub, VAE_FT_MSE, work / "vae")
    controlnet(40).save_pretrained(work / "controlnet")
    snapshots[OPENPOSE] = _write_repo(hub, OPENPOSE, work / "controlnet")
    clip = work / "clip"
    clip_model(50).save_pretrained(clip)
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(clip)
    _tokenizer_files(clip)
    snapshots[CLIP_L] = _write_repo(hub, CLIP_L, clip)
    shutil.rmtree(work, ignore_errors=True)
    return snapshots


def ffhq_folder(root: Path, count: int) -> Path:
    """FFHQ's layout: images1024x1024/<thousands>/<index>.png, 1024 x 1024 faces (mini-world portraits
    scaled up, so that the PNGs stay small)."""
    for i in range(count):
        path = root / "images1024x1024" / f"{i // 1000 * 1000:05d}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        face = Image.fromarray(make_pair(1000 + i, "santa", size=64).src).resize((1024, 1024), Image.NEAREST)
        face.save(path)
    return root


def photo_folder(root: Path) -> tuple[Path, list[str], list[str]]:
    """Photos as users bring them: sizes, shapes and modes of every kind, plus files that are no photo.
    Returns the folder, the names of the good photos and the names of the broken ones."""
    root.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(make_pair(2000 + k, "angry", size=64).src) for k in range(5)]
    pictures[0].resize((640, 480)).save(root / "wide.jpg", quality=90)  # not square
    pictures[1].resize((300, 400)).convert("L").save(root / "grey.png")  # greyscale, portrait format
    pictures[2].convert("RGBA").save(root / "alpha.png")  # with an alpha channel
    pictures[3].resize((96, 96)).save(root / "small.webp")
    nested = root / "holiday"
    nested.mkdir()
    pictures[4].resize((2000, 2000)).save(nested / "big.jpg", quality=80)  # large, in a subfolder
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    (root / "notes.png").write_text("a text file named .png")
    return root, ["alpha", "big", "grey", "small", "wide"], ["broken", "notes"]
