"""Load one neural part of a Stable Diffusion model (VAE, UNet, CLIP text or image encoder, OpenPose
ControlNet) from a preset, a local diffusers folder, a single SD checkpoint or a hub id.

Source resolution (`sources.resolve_source`), the same for every part and for the tokenizer and scheduler
loaders in `components.py`:
1. a preset name (`tiny`, `mini`, `sd15`: folders under portrait_edit/loading/presets/) -> random weights
   built from the shipped config, seeded (`mini` loads the shipped weights from DATA_DIR/mini/ when present);
2. an existing `.safetensors` / `.ckpt` file -> an original-layout (LDM) SD checkpoint, read with a LOCAL
   diffusers config (`single_file_config`, default the `sd15` preset), so nothing is ever fetched;
3. an existing folder -> `from_pretrained`; the part may sit in its pipeline subfolder (`vae/`, `unet/`...)
   or be the folder itself (e.g. lllyasviel/control_v11p_sd15_openpose, openai/clip-vit-large-patch14);
4. anything else -> a hub id, honouring `local_files_only` (default: HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.utils import is_accelerate_available
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from portrait_edit import paths
from portrait_edit.loading.sources import (
    config_root,
    from_hub,
    locate,
    offline,
    read_checkpoint,
    resolve_source,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Part:
    """How one model part is stored and built."""

    cls: type
    subfolder: str
    config_cls: type | None = None  # transformers config class; None for diffusers models
    ldm_prefixes: tuple[str, ...] = ()  # key prefixes in an original SD checkpoint; () = not in one
    standalone: bool = False  # usually its own hub repo (root first), not a pipeline subfolder
    example: str = ""


MODEL_PARTS: dict[str, _Part] = {
    "vae": _Part(AutoencoderKL, "vae", ldm_prefixes=("first_stage_model.", "vae.")),
    "unet": _Part(UNet2DConditionModel, "unet", ldm_prefixes=("model.diffusion_model.",)),
    # A bare ControlNet file (control_v11p_*.pth converted) has no prefix at all.
    "controlnet": _Part(
        ControlNetModel,
        "controlnet",
        ldm_prefixes=("control_model.", ""),
        standalone=True,
        example="lllyasviel/control_v11p_sd15_openpose",
    ),
    "text_encoder": _Part(
        CLIPTextModel, "text_encoder", CLIPTextConfig, ldm_prefixes=("cond_stage_model.transformer.",)
    ),
    "image_encoder": _Part(
        CLIPVisionModelWithProjection,
        "image_encoder",
        CLIPVisionConfig,
        standalone=True,
        example="openai/clip-vit-large-patch14",
    ),
}


# Files whose presence marks a folder as holding the part.
def _check_class(folder: Path, cls: type) -> None:
    """Refuse a diffusers folder whose config names another class (e.g. a UNet folder passed as the VAE)."""
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name and name != cls.__name__:
        raise ValueError(
            f"{folder} holds a {name}, not a {cls.__name__}; point this part at the right folder"
        )


def _seeded(build: Any, seed: int) -> Any:
    """Build random weights from `seed` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _from_config(part: _Part, folder: Path, seed: int) -> torch.nn.Module:
    if part.config_cls is None:
        return _seeded(lambda: part.cls.from_config(part.cls.load_config(folder)), seed)
    config = part.config_cls.from_pretrained(folder)
    return _seeded(lambda: part.cls(config), seed)


def load_differences(exc: RuntimeError) -> tuple[int, str]:
    """How many differences a failed `load_state_dict` lists (torch writes one a line) and the first, so
    that the error a user sees is one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    differences = [line for line in lines[1:] if "mismatch" in line or "key" in line.lower()] or lines
    return len(differences), differences[0]


def _from_single_file(
    name: str, part: _Part, path: Path, single_file_config: str | None, seed: int
) -> torch.nn.Module:
    if not part.ldm_prefixes:
        raise ValueError(f"an SD checkpoint holds no {name}; pass a hub id or folder, e.g. {part.example!r}")
    root = config_root(single_file_config)
    folder = locate(root, part.subfolder, ("config.json",))
    state = read_checkpoint(path)
    # A bare file (prefix "") is recognised by the ControlNet hint block, its one unmistakable key.
    prefix = next(
        (
            p
            for p in part.ldm_prefixes
            if (any(k.startswith(p) for k in state) if p else "input_hint_block.0.weight" in state)
        ),
        None,
    )
    if prefix is None:
        raise ValueError(f"{path} holds no {name} weights (no key starts with {part.ldm_prefixes})")
    try:
        if part.config_cls is None:
            model = part.cls.from_single_file(
                state, config=str(folder), local_files_only=True
            )  # never online
        else:  # diffusers' from_single_file covers diffusers models only; the CLIP text keys just lose a prefix
            model = _from_config(part, folder, seed)
            # SD files say `text_model.` (old ones not even that); transformers 5 dropped that level.
            level = "text_model." if next(iter(model.state_dict())).startswith("text_model.") else ""
            tensors = {
                level + k[len(prefix) :].removeprefix("text_model."): v
                for k, v in state.items()
                if k.startswith(prefix) and not k.endswith("position_ids")
            }
            model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # shape or key mismatch
        count, first = load_differences(exc)
        raise ValueError(
            f"{path} does not match the {name} config in {root} ({count} differences, first: {first}); set "
            "single_file_config to the matching diffusers folder or preset"
        ) from exc
    # diffusers loads with strict=False: a config larger than the file would leave weights random.
    n_file = sum(k.startswith(prefix) and not k.endswith("position_ids") for k in state)
    n_model = sum(not k.endswith("position_ids") for k in model.state_dict())
    if n_file < n_model:
        raise ValueError(
            f"{path} has {n_file} {name} tensors but the config in {root} needs {n_model}; "
            "set single_file_config to the matching diffusers folder or preset"
        )
    return model


class _OnlyUnexpectedKeys(logging.Filter):
    """Drops transformers' load report when every key it lists is UNEXPECTED: the image encoder read from a
    whole CLIPModel repo (openai/clip-vit-large-patch14) leaves its text tower out, a 25-line table of
    nothing wrong. A report with MISSING or MISMATCH keys (weights left random) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "LOAD REPORT" not in text or "MISSING" in text or "MISMATCH" in text


_TRANSFORMERS_LOADER = logging.getLogger("transformers.modeling_utils")
_TRANSFORMERS_LOADER.addFilter(_OnlyUnexpectedKeys())


def load_model(
    name: str,
    source: str,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    single_file_config: str | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """Load one model part; the source rules are in the module docstring.

    Args:
        name: the part: vae, unet, text_encoder, image_encoder or controlnet.
        source: preset name, `.safetensors`/`.ckpt` SD checkpoint, local diffusers folder or hub id.
        torch_dtype: dtype of the returned weights (None: as built or as stored).
        local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
        single_file_config: preset name or local diffusers folder giving a checkpoint's architecture
            (None: the `sd15` preset).
        seed: seed of the random weights built for a preset.
    """
    if name not in MODEL_PARTS:
        raise ValueError(f"unknown model part {name!r}; choose from {sorted(MODEL_PARTS)}")
    part = MODEL_PARTS[name]
    kind, where = resolve_source(source)
    # diffusers calls it torch_dtype, transformers 5 dtype; without accelerate, diffusers warns on every load
    # that it falls back to low_cpu_mem_usage=False, so ask for that directly.
    diffusers_model = part.config_cls is None
    load_kw: dict[str, Any] = {"low_cpu_mem_usage": is_accelerate_available()} if diffusers_model else {}
    if kind == "preset" and torch_dtype is None:
        # The mini weights are shipped in fp16 to stay small; transformers would keep them in fp16 and
        # diffusers would not, so a preset always comes in one dtype: float32 unless asked.
        torch_dtype = torch.float32
    if torch_dtype is not None:
        load_kw["torch_dtype" if diffusers_model else "dtype"] = torch_dtype
    if kind == "preset":
        shipped = paths.DATA_DIR / where / name
        if where == "mini" and (shipped / "config.json").is_file():
            model = part.cls.from_pretrained(shipped, local_files_only=True, **load_kw)
        else:
            if where == "mini":
                logger.warning(
                    "no trained mini %s at %s: using RANDOM weights from the preset config (seed %d)",
                    name,
                    shipped,
                    seed,
                )
            model = _from_config(part, paths.PRESETS_DIR / where / name, seed)
    elif kind == "single_file":
        model = _from_single_file(name, part, where, single_file_config, seed)
    elif kind == "folder":
        folder = locate(where, part.subfolder, ("config.json",))
        if diffusers_model:
            _check_class(folder, part.cls)
        model = part.cls.from_pretrained(folder, local_files_only=True, **load_kw)
    else:
        order = [None, part.subfolder] if part.standalone else [part.subfolder, None]
        model = from_hub(
            lambda *a, **k: part.cls.from_pretrained(*a, **k, **load_kw),
            where,
            order,
            offline(local_files_only),
            name,
        )
    if torch_dtype is not None and model.dtype != torch_dtype:
        # nn.Module.to: diffusers 0.42's ModelMixin.to warns about fp32 modules on every dtype cast, even for
        # classes that keep none in fp32 (UNet, VAE, ControlNet).
        model = torch.nn.Module.to(model, torch_dtype)
    return model.eval()  # like from_pretrained, whatever the source
