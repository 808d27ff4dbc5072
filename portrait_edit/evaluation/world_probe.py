"""A small CNN that reads named quantities off a mini-world portrait: the head position (`nose_xy`) and,
when trained for them, the skin and hair colour (`skin_rgb`, `hair_rgb`).

Generated images carry no keypoints, so the pose ControlNet's metric (generated head centre vs the pose's
head keypoint) needs a learned reader: `locate_head` gives the nose keypoint in pixels. Each target is a
named slice of one output vector, predicted in normalised units (positions as fractions of the image
side), so more targets (skin or hair colour) are new config entries, not a new model. Stored as
`config.json` + `model.safetensors` in one folder (`FolderModel.save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from portrait_edit.evaluation.direction_classifier import _stage
from portrait_edit.models.folder_model import FolderModel

NOSE = "nose_xy"  # the head-position target: the nose keypoint (OpenPose COCO-18 index 0)


@dataclass
class WorldProbeConfig:
    """Architecture: one stride-2 stage per entry of `channels` (64 px -> 64 / 2^len), then an MLP head on
    the flattened feature map (flattened, not averaged: averaging would discard where the head is).

    Args:
        channels: output channels of the stages (each: stride-2 conv, GroupNorm, SiLU, conv, GroupNorm, SiLU).
        targets: regression targets, name -> size, in output order ({"nose_xy": 2}: x, y / image side).
        image_size: side of the input images (the head's input width depends on it).
        groups: GroupNorm groups (batch-size independent, so eval == train behaviour).
        hidden: width of the head's hidden layer.
    """

    channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    targets: dict[str, int] = field(default_factory=lambda: {NOSE: 2})
    image_size: int = 64
    groups: int = 8
    hidden: int = 256

    def __post_init__(self) -> None:
        if not self.channels or any(c < 1 or c % self.groups for c in self.channels):
            raise ValueError(
                f"channels must be a non-empty list of multiples of groups={self.groups}; got {self.channels}"
            )
        if not self.targets or any(int(n) < 1 for n in self.targets.values()):
            raise ValueError(f"targets must map at least one name to a size >= 1; got {self.targets}")
        if self.image_size % 2 ** len(self.channels) or self.hidden < 1:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2^len(channels)={2 ** len(self.channels)} "
                f"and hidden >= 1 (got {self.hidden}); change image_size or the number of stages"
            )

    @property
    def feature_side(self) -> int:
        """Side of the last feature map: image_size / 2^len(channels)."""
        return self.image_size // 2 ** len(self.channels)


class WorldProbe(FolderModel):
    """images float (B, 3, S, S) in [-1, 1] -> {target name: float (B, size)} in normalised units."""

    config_class = WorldProbeConfig
    made_by = "train one (portrait-edit fit --config configs/mini/base_probe.yaml)"

    def __init__(self, config: WorldProbeConfig | None = None) -> None:
        """
        Args:
            config: architecture and targets; None builds the default one (nose_xy only).
        """
        super().__init__()
        self.config = config if config is not None else WorldProbeConfig()
        c = self.config
        widths = [3, *c.channels]
        self.features = nn.Sequential(*(_stage(a, b, c.groups) for a, b in zip(widths, widths[1:])))
        self.hidden = nn.Sequential(nn.Linear(widths[-1] * c.feature_side**2, c.hidden), nn.SiLU())
        self.head = nn.Linear(c.hidden, sum(c.targets.values()))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"images must be (B, 3, {size}, {size}) in [-1, 1] (the probe's image_size); got "
                f"{tuple(images.shape)}: resize the images or use a probe trained at that size"
            )
        # (B, 3, S, S) -> (B, C, S/16, S/16) -> flattened (B, C * S^2/256) -> (B, sum of target sizes)
        out = self.head(self.hidden(self.features(images).flatten(1)))
        return dict(zip(self.config.targets, out.split(list(self.config.targets.values()), dim=1)))

    @torch.no_grad()
    def locate_head(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Nose keypoint, float (B, 2): x, y in pixels of the S x S images (pixel centres at integer + 0.5,
        the world's keypoint convention), of images float (B, 3, S, S) in [-1, 1].

        Runs in eval mode on the model's device and dtype, in chunks of `batch_size`; restores the mode.
        """
        if NOSE not in self.config.targets:
            raise ValueError(f"this probe has no {NOSE!r} target (targets: {list(self.config.targets)})")
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        weight = self.head.weight
        out = [
            self(chunk.to(weight.device, weight.dtype))[NOSE].float() for chunk in images.split(batch_size)
        ]
        self.train(was_training)
        # Targets are keypoint / side, so the pixel convention of the keypoints carries over unchanged.
        return torch.cat(out).to(images.device) * self.config.image_size
