"""Where a model source string points: a preset, a single SD checkpoint, a local folder or a hub id.

Shared by the part loaders in `networks.py` and the tokenizer and scheduler loaders in `components.py` (the
rules are in the docstring of `networks.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file

from portrait_edit import paths

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def preset_names() -> list[str]:
    """Names of the shipped presets (folders under PRESETS_DIR with a unet/ config)."""
    return sorted(d.name for d in paths.PRESETS_DIR.iterdir() if (d / "unet" / "config.json").is_file())


def resolve_source(source: str) -> tuple[str, Any]:
    """Classify a source string as ("preset", name), ("single_file", Path), ("folder", Path) or ("hub", id)."""
    if not isinstance(source, str) or not source:
        raise ValueError(
            f"a model source must be a non-empty string (preset, path or hub id), got {source!r}"
        )
    if source in preset_names():
        return "preset", source
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ValueError(
                f"{source!r} is a file but not an SD checkpoint {SINGLE_FILE_SUFFIXES}; pass a "
                "checkpoint, a diffusers folder, a hub id or a preset"
            )
        return "single_file", path
    if path.is_dir():
        return "folder", path
    if path.suffix in SINGLE_FILE_SUFFIXES or source.startswith(("/", "./", "../", "~")):
        raise ValueError(
            f"{source!r} does not exist; give an existing file or folder, a hub id or one of the "
            f"presets {preset_names()}"
        )
    return "hub", source


def locate(root: Path, subfolder: str, markers: tuple[str, ...]) -> Path:
    """Return the folder holding the part: `root/subfolder` (a pipeline folder) or `root` itself."""
    for folder in (root / subfolder, root):
        if any((folder / m).is_file() for m in markers):
            return folder
    raise ValueError(
        f"{root} holds no {subfolder}: expected {subfolder}/{markers[0]} (a pipeline folder) or "
        f"{markers[0]} (a folder of the {subfolder} alone)"
    )


def from_hub(load: Any, repo_id: str, subfolders: list[str | None], local_files_only: bool, what: str) -> Any:
    """Call `load(repo_id, subfolder=...)` for each candidate subfolder; a ValueError saying how to fix it."""
    error: Exception | None = None
    for sub in subfolders:
        try:
            kwargs = {"subfolder": sub} if sub else {}
            return load(repo_id, local_files_only=local_files_only, **kwargs)
        except OSError as exc:  # missing repo/file (both libraries raise OSError subclasses), or network
            error = exc
    where = "in the local hub cache (offline)" if local_files_only else "on the hub"
    raise ValueError(
        f"could not load the {what} from {repo_id!r}: not found {where}. Download it on a connected machine "
        f"(`huggingface-cli download {repo_id}`) and pass that local folder, or check the id "
        f"(tried subfolders {subfolders}). Last error: {error}"
    ) from error


def offline(local_files_only: bool | None) -> bool:
    return hub_constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only


def config_root(single_file_config: str | None) -> Path:
    """The local diffusers folder that gives a single-file checkpoint its architecture."""
    name = single_file_config or "sd15"
    if name in preset_names():
        return paths.PRESETS_DIR / name
    if not Path(name).expanduser().is_dir():
        raise ValueError(
            f"single_file_config must be a preset {preset_names()} or a local diffusers folder "
            f"(never a hub id, so that nothing goes online); got {name!r}"
        )
    return Path(name).expanduser()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a single-file checkpoint's tensors (safetensors, or a pickle loaded with weights_only=True).

    Args:
        path: a `.safetensors` or `.ckpt` file; a Lightning/LDM `state_dict` wrapper is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state
