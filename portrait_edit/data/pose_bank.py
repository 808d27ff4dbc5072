"""The pose bank of pair generation: OpenPose COCO-18 body keypoints, one pose drawn twice per pair.

The paper picks poses from 1000 candidates detected on SD images of "a person, head shot". A bank is a
JSON file (`tools/make_pose_bank.py` writes it):

    {"format": "openpose-coco18", "source": "...", "command": "...",
     "poses": [{"id": 0, "keypoints": [[x, y, visible] x 18], "world_pose": {...}}, ...]}

with x, y as fractions of the image width and height (pixel centres at (i + 0.5) / side, the world's
convention) and visible 0 / 1; `world_pose` (mini world only) is the world `Pose` the keypoints came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import constants as hub_constants

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.world import pose_keypoints, sample_pose
from portrait_edit.world.pose import KEYPOINT_NAMES

FORMAT = "openpose-coco18"


@dataclass
class PoseBank:
    """Keypoints float32 (N, 18, 3) in fractions of the image sides, plus where they came from."""

    keypoints: np.ndarray
    source: str = ""
    command: str = ""
    world_poses: list[dict] | None = field(default=None)

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, np.float32)
        if self.keypoints.ndim != 3 or self.keypoints.shape[1:] != (len(KEYPOINT_NAMES), 3) or not len(self):
            raise ValueError(f"a pose bank needs keypoints (N >= 1, 18, 3); got {self.keypoints.shape}")

    def __len__(self) -> int:
        return len(self.keypoints)

    def pixels(self, index: int, height: int, width: int) -> np.ndarray:
        """Pose `index` in pixels of a height x width image: float32 (18, 3) (x, y, visible)."""
        out = self.keypoints[index].copy()
        out[:, 0] *= width
        out[:, 1] *= height
        return out

    def save(self, path: str | Path) -> None:
        """One pose per line, each keypoint value as the shortest decimal that reads back as the same
        float32 (so a saved bank loads bit-identical)."""
        header = {"format": FORMAT, "source": self.source, "command": self.command}
        lines = [json.dumps(header, sort_keys=True)[:-1] + ', "poses": [']
        for i, k in enumerate(self.keypoints):
            pose = {"id": i, "keypoints": [[_shortest(v) for v in row] for row in k]}
            if self.world_poses:
                pose["world_pose"] = self.world_poses[i]
            lines.append(json.dumps(pose, sort_keys=True, separators=(",", ":")) + ",")
        lines[-1] = lines[-1][:-1]
        atomic_write_bytes(path, ("\n".join([*lines, "]}"]) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> PoseBank:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"cannot read pose bank {path}: {exc}; remake it with tools/make_pose_bank.py"
            ) from exc
        if data.get("format") != FORMAT or not data.get("poses"):
            raise ValueError(
                f"{path} is not a {FORMAT} pose bank with poses; remake it with tools/make_pose_bank.py"
            )
        poses = data["poses"]
        world = [p["world_pose"] for p in poses] if all("world_pose" in p for p in poses) else None
        return cls(
            np.array([p["keypoints"] for p in poses]), data.get("source", ""), data.get("command", ""), world
        )


def _shortest(value: np.float32) -> float:
    """The shortest decimal that float32 reads back as `value`."""
    return float(np.format_float_positional(np.float32(value), unique=True))


def world_pose_bank(count: int, seed: int, size: int = 64) -> PoseBank:
    """`count` mini-world head-shot poses (`sample_pose` on the stream [seed, i]) as a bank."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    poses = [sample_pose(np.random.default_rng([seed, i])) for i in range(count)]
    keypoints = np.stack([pose_keypoints(p, size) for p in poses])
    keypoints[..., :2] /= size
    return PoseBank(
        keypoints, source=f"mini world, sample_pose seed {seed}", world_poses=[p.to_dict() for p in poses]
    )


ANNOTATOR_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")  # what OpenposeDetector reads


def load_openpose_detector(source: str, local_files_only: bool | None = None) -> Any:
    """controlnet_aux's OpenposeDetector from a local folder or a hub repo (lllyasviel/Annotators) holding
    ANNOTATOR_FILES, all three checked first so that a missing one is a ValueError naming every file and
    where to put it (the detector itself dies in a bare hub error on the first it lacks)."""
    from huggingface_hub import hf_hub_download

    offline = hub_constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only
    folder = Path(source).expanduser()
    if folder.is_dir():
        missing = [name for name in ANNOTATOR_FILES if not (folder / name).is_file()]
    else:
        missing = []
        for name in ANNOTATOR_FILES:
            try:
                hf_hub_download(source, name, local_files_only=offline)
            except (OSError, ValueError):  # not cached offline, no such repo or file, no network
                missing.append(name)
    if missing:
        where = (
            f"the folder {folder}"
            if folder.is_dir()
            else f"{source!r} ({'local hub cache, offline' if offline else 'hub'})"
        )
        raise ValueError(
            f"the OpenPose annotator weights {', '.join(missing)} are not in {where}. Download them on a connected "
            f"machine (`huggingface-cli download lllyasviel/Annotators {' '.join(ANNOTATOR_FILES)} --local-dir "
            "annotators`) and pass --detector annotators"
        )
    from controlnet_aux import OpenposeDetector  # imports every detector: only when one is needed

    return OpenposeDetector.from_pretrained(
        str(folder) if folder.is_dir() else source, local_files_only=offline
    )
