"""A small CNN that tells which edit a mini-world portrait shows: 0 source, 1..8 the DIRECTIONS in order.

Later stages use it as the edit-fidelity metric (`predict_directions` on edited images). Stored as
`config.json` + `model.safetensors` in one folder (`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from portrait_edit.world import DIRECTIONS

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class DirectionClassifierConfig:
    """Architecture: one stride-2 stage per entry of `channels` (64 px -> 64 / 2^len), then a linear head.

    Args:
        channels: output channels of the stages (each: stride-2 conv, GroupNorm, SiLU, conv, GroupNorm, SiLU).
        labels: class names; index = label (default: source + the 8 DIRECTIONS).
        image_size: side of the input images.
        groups: GroupNorm groups (batch-size independent, unlike BatchNorm, so eval == train behaviour).
    """

    channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    labels: list[str] = field(default_factory=lambda: ["source", *DIRECTIONS])
    image_size: int = 64
    groups: int = 8

    def __post_init__(self) -> None:
        if not self.channels or any(c < 1 or c % self.groups for c in self.channels) or len(self.labels) < 2:
            raise ValueError(
                f"channels must be a non-empty list of multiples of groups={self.groups} and labels at least "
                f"2 names; got {self.channels}, {self.labels}"
            )


def _stage(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class DirectionClassifier(nn.Module):
    """images float (B, 3, H, W) in [-1, 1] -> logits (B, len(labels))."""

    def __init__(self, config: DirectionClassifierConfig | None = None) -> None:
        """
        Args:
            config: architecture; None builds the default one.
        """
        super().__init__()
        self.config = config if config is not None else DirectionClassifierConfig()
        widths = [3, *self.config.channels]
        self.features = nn.Sequential(*(_stage(a, b, self.config.groups) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], len(self.config.labels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, 3, 64, 64) -> (B, C, 4, 4) -> global average (B, C) -> (B, labels)
        return self.head(self.features(images).mean(dim=(2, 3)))

    @torch.no_grad()
    def predict_directions(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted labels, long (B,), of images float (B, 3, H, W) in [-1, 1] (0 source, 1..8 DIRECTIONS).

        Runs in eval mode on the model's device and dtype, in chunks of `batch_size`; restores the mode.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        weight = self.head.weight
        out = [
            self(chunk.to(weight.device, weight.dtype)).argmax(dim=1) for chunk in images.split(batch_size)
        ]
        self.train(was_training)
        return torch.cat(out).to(images.device)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` and `model.safetensors` (weights cast to `dtype` when given) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
            for k, v in self.state_dict().items()
        }
        save_file(state, folder / WEIGHTS_NAME)
        (folder / CONFIG_NAME).write_text(
            json.dumps({"_class_name": type(self).__name__, **asdict(self.config)}, indent=2) + "\n"
        )
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> DirectionClassifier:
        """Load a folder written by `save_pretrained`; weights as `dtype`, in eval mode."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ValueError(
                f"{folder} holds no {CONFIG_NAME} + {WEIGHTS_NAME}; export a classifier there first"
            )
        raw = json.loads((folder / CONFIG_NAME).read_text())
        raw.pop("_class_name", None)
        model = cls(DirectionClassifierConfig(**raw))
        model.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return model.to(dtype).eval()
