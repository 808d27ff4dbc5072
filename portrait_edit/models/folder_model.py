"""The project's own small models stored as one folder: `config.json` (a dataclass) + `model.safetensors`.

`FolderModel` gives a module whose architecture is one dataclass `save_pretrained` / `from_pretrained`
in the diffusers spirit, with atomic writes: each file goes to a temporary name first and is renamed, the
weights before the config, so a `config.json` beside the weights means both are complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class FolderModel(nn.Module):
    """Base of a model built from `config_class(**config.json)`; subclasses set the two class attributes."""

    #: the dataclass holding the architecture (the constructor's only argument).
    config_class: ClassVar[type]
    #: how to make such a folder, for the error a missing one raises.
    made_by: ClassVar[str] = "export one there first"

    config: Any

    # As diffusers and transformers models have them (a DiffusionPipeline reads them off its modules).
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def save_pretrained(
        self, folder: str | Path, dtype: torch.dtype | None = None, safe_serialization: bool = True
    ) -> Path:
        """Write `config.json` and `model.safetensors` (weights cast to `dtype` when given) into `folder`.

        `safe_serialization` is there for callers written for diffusers models; only safetensors is written.
        """
        if not safe_serialization:
            raise ValueError(f"{type(self).__name__} is only stored as safetensors")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
            for k, v in self.state_dict().items()
        }
        save_file(state, folder / f".{WEIGHTS_NAME}.tmp")
        config = {"_class_name": type(self).__name__, **asdict(self.config)}
        (folder / f".{CONFIG_NAME}.tmp").write_text(json.dumps(config, indent=2) + "\n")
        os.replace(folder / f".{WEIGHTS_NAME}.tmp", folder / WEIGHTS_NAME)
        os.replace(folder / f".{CONFIG_NAME}.tmp", folder / CONFIG_NAME)
        return folder

    @classmethod
    def load_config(cls, folder: str | Path) -> Any:
        """The architecture stored in `folder/config.json`."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file() or not (Path(folder) / WEIGHTS_NAME).is_file():
            raise ValueError(f"{folder} holds no {CONFIG_NAME} + {WEIGHTS_NAME}; {cls.made_by}")
        raw = json.loads(path.read_text())
        if raw.pop("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"{path} does not describe a {cls.__name__}")
        return cls.config_class(**raw)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> FolderModel:
        """Load a folder written by `save_pretrained`; weights as `dtype`, in eval mode."""
        model = cls(cls.load_config(folder))
        model.load_state_dict(load_file(Path(folder) / WEIGHTS_NAME))
        return model.to(dtype).eval()
