"""tools/eval_pairs.py: per-pair figures against hand-computed values, and the ablation sheet."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_edit.world.faces import make_face

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("eval_pairs", ROOT / "tools" / "eval_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MeanColourJudges:
    """Stand-in readers: the classifier reads `reads[call]`, attributes are the mean RGB (twice), c_id the
    flattened image."""

    def __init__(self, reads):
        self.reads = list(reads)
        self.classifier = self

    def predict_directions(self, images):
        return torch.tensor(self.reads.pop(0))

    def attributes(self, images):
        mean = images.mean(dim=(2, 3))
        return torch.cat([mean, mean], dim=1)

    def c_id(self, images):
        return images.flatten(1)


def test_per_pair_figures_by_hand():
    tool = _tool()
    size = 16
    face = make_face(7, 0, size=size).image
    left = np.stack([face, np.zeros_like(face)])
    right = np.stack([face, np.full_like(face, 255)])
    meta = [
        {"direction": "santa", "identity_source": "world:7"},
        {"direction": "angry", "identity_source": "world:7"},
    ]
    pairs = {"keys": ["a", "b"], "left": left, "right": right, "meta": meta}
    # Left halves read source / santa; right halves read santa (label 3) / angry (label 5).
    values = tool.per_pair(pairs, MeanColourJudges([[0, 3], [3, 5]]))
    assert values["left_source"].tolist() == [1.0, 0.0]
    assert values["right_target"].tolist() == [1.0, 1.0]
    assert values["both"].tolist() == [1.0, 0.0]
    assert values["cid_cosine"][0] == pytest.approx(1.0)
    # Pair b: black (-1) vs white (+1) halves: mean RGB differs by 2 on 6 values -> sqrt(6 * 4).
    assert values["attr_distance"].tolist() == pytest.approx([0.0, np.sqrt(24)])
    assert values["source_distance"][0] == pytest.approx(0.0)
    assert tool.summary(values, np.array([False, True]))["both"] == 0.0
    with pytest.raises(ValueError, match="not a world person"):
        tool.source_face("faces/0001.png", size)


def test_ablation_sheet_puts_each_job_in_every_variant_in_order():
    tool = _tool()
    h = 4

    def variant(value, keys):
        n = len(keys)
        return {"keys": keys, "left": np.full((n, h, h, 3), value, np.uint8),
                "right": np.full((n, h, h, 3), value + 1, np.uint8), "meta": [{}] * n}  # fmt: skip

    sheet = tool.ablation_sheet(
        {"full": variant(10, ["a", "b"]), "no_pose": variant(50, ["b", "a"])}, ["a", "b"]
    )
    assert sheet.shape == (2 * h, 2 * (2 * h) + 4, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, h, 0] == 11 and sheet[0, 2 * h, 0] == 255
    assert sheet[0, 2 * h + 4, 0] == 50 and sheet[0, -1, 0] == 51
