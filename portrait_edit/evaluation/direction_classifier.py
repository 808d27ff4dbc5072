"""A small CNN that tells which edit a mini-world portrait shows: 0 source, 1..8 the DIRECTIONS in order.

Later stages use it as the edit-fidelity metric (`predict_directions` on edited images). Stored as
`config.json` + `model.safetensors` in one folder (`FolderModel.save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from portrait_edit.models.folder_model import FolderModel
from portrait_edit.tasks import DIRECTIONS


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


class DirectionClassifier(FolderModel):
    """images float (B, 3, H, W) in [-1, 1] -> logits (B, len(labels))."""

    config_class = DirectionClassifierConfig
    made_by = "train one (portrait-edit fit --config configs/mini/base_classifier.yaml)"

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
