"""Writing a diffusers / transformers module as a model folder, swapped in whole (atomic.replace_folder)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from portrait_edit.atomic import replace_folder


def save_module(module: nn.Module, folder: str | Path, dtype: torch.dtype) -> Path:
    """`replace_folder` with a copy of a diffusers / transformers `module` cast to `dtype` (the module itself
    is left as it is), saved as config + safetensors."""
    # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast.
    cast = nn.Module.to(copy.deepcopy(module), dtype=dtype)
    return replace_folder(folder, lambda tmp: cast.save_pretrained(tmp, safe_serialization=True))
