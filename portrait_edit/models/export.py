"""Writing model folders so that a reader never sees half of one: each goes to a hidden temporary folder
beside its final place and is swapped in (the old one renamed aside, then removed)."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def replace_folder(final: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to fill a fresh temporary folder, then put it in place of `final`; returns `final`.

    Leftovers of an interrupted earlier call (`.<name>.tmp`, `.<name>.old`) are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    write(tmp)
    _umask_modes(tmp)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _umask_modes(folder: Path) -> None:
    """Give every file the mode the user's umask asks for: safetensors writes its files 0600 whatever it is,
    so a model exported on a shared cluster disk would be unreadable to the rest of the group."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_module(module: nn.Module, folder: str | Path, dtype: torch.dtype) -> Path:
    """`replace_folder` with a copy of a diffusers / transformers `module` cast to `dtype` (the module itself
    is left as it is), saved as config + safetensors."""
    # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast.
    cast = nn.Module.to(copy.deepcopy(module), dtype=dtype)
    return replace_folder(folder, lambda tmp: cast.save_pretrained(tmp, safe_serialization=True))
