"""Load the Stable Diffusion parts (VAE, UNet, CLIP text and image encoders, tokenizer, OpenPose ControlNet,
scheduler) from a preset, a local diffusers folder, a single SD checkpoint or a hub id.

Source resolution, the same for every loader:
1. a preset name (`tiny`, `mini`, `sd15`: folders under portrait_edit/models/presets/) -> random weights
   built from the shipped config, seeded (`mini` loads the shipped weights from DATA_DIR/mini/ when present);
2. an existing `.safetensors` / `.ckpt` file -> an original-layout (LDM) SD checkpoint, read with a LOCAL
   diffusers config (`single_file_config`, default the `sd15` preset), so nothing is ever fetched;
3. an existing folder -> `from_pretrained`; the part may sit in its pipeline subfolder (`vae/`, `unet/`...)
   or be the folder itself (e.g. lllyasviel/sd-controlnet-openpose, openai/clip-vit-large-patch14);
4. anything else -> a hub id, honouring `local_files_only` (default: HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, ControlNetModel, SchedulerMixin, UNet2DConditionModel
from diffusers.utils import is_accelerate_available
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from portrait_edit import paths
from portrait_edit.models.sources import (
    config_root,
    from_hub,
    locate,
    offline,
    read_checkpoint,
    resolve_source,
)

logger = logging.getLogger(__name__)

PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "image_encoder", "controlnet")
MAX_TOKENS = 77  # CLIP's context length; every SD 1.x text encoder has 77 positions


@dataclass(frozen=True)
class _Part:
    """How one model part is stored and built."""

    cls: type
    subfolder: str
    config_cls: type | None = None  # transformers config class; None for diffusers models
    ldm_prefixes: tuple[str, ...] = ()  # key prefixes in an original SD checkpoint; () = not in one
    standalone: bool = False  # usually its own hub repo (root first), not a pipeline subfolder
    example: str = ""


_PARTS: dict[str, _Part] = {
    "vae": _Part(AutoencoderKL, "vae", ldm_prefixes=("first_stage_model.", "vae.")),
    "unet": _Part(UNet2DConditionModel, "unet", ldm_prefixes=("model.diffusion_model.",)),
    # A bare ControlNet file (control_v11p_*.pth converted) has no prefix at all.
    "controlnet": _Part(
        ControlNetModel,
        "controlnet",
        ldm_prefixes=("control_model.", ""),
        standalone=True,
        example="lllyasviel/sd-controlnet-openpose",
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
_MARKERS = {"tokenizer": ("vocab.json", "tokenizer.json"), "scheduler": ("scheduler_config.json",)}


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
        raise ValueError(
            f"{path} does not match the {name} config in {root}; set single_file_config to the "
            f"matching diffusers folder or preset. {exc}"
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
    if name not in _PARTS:
        raise ValueError(f"unknown model part {name!r}; choose from {sorted(_PARTS)}")
    part = _PARTS[name]
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


def _clip_tokenizer(path: str | Path, **kwargs: Any) -> CLIPTokenizer:
    """CLIPTokenizer.from_pretrained, except that a missing vocabulary raises OSError.

    transformers 5 returns a 2-token tokenizer (every word -> <|endoftext|>) for a folder or repo id
    without tokenizer files, instead of failing.
    """
    tokenizer = CLIPTokenizer.from_pretrained(path, **kwargs)
    if len(tokenizer) <= 256:  # a byte-level BPE has at least the 256 byte symbols
        raise OSError(
            f"no CLIP tokenizer files (vocab.json + merges.txt or tokenizer.json) in {path} {kwargs}"
        )
    return tokenizer


def load_tokenizer(
    source: str, *, local_files_only: bool | None = None, single_file_config: str | None = None
) -> CLIPTokenizer:
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
                f"{_PARTS[name].example!r} or a local folder), or leave {name!r} out of parts"
            )
        sources[name] = given or base
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
