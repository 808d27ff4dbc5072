"""tools/eval_pairs.py: the per-pair figures by hand, the shipped-judge wiring on tiny real models with
known answers, and the ablation sheet."""

import numpy as np
import pytest
import torch
from tool_loader import load_tool

from portrait_edit.evaluation.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.evaluation.world_probe import WorldProbe, WorldProbeConfig
from portrait_edit.loading.components import load_image_encoder, load_tokenizer
from portrait_edit.metrics.image import ssim
from portrait_edit.models.clip_pair import build_clip, export_clip
from portrait_edit.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig
from portrait_edit.world import make_pair
from portrait_edit.world.faces import make_face

SIZE = 32


def _tool():
    return load_tool("eval_pairs")


def test_pair_figures_by_hand():
    tool = _tool()
    labels = torch.tensor([3, 5])  # santa, angry
    attr = torch.zeros(2, 6)
    white = torch.ones(2, 6)
    values = tool.pair_figures(
        read_left=torch.tensor([0, 3]),
        read_right=torch.tensor([3, 5]),
        labels=labels,
        cid_left=torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
        cid_right=torch.tensor([[2.0, 0.0], [1.0, 1.0]]),
        attr_left=attr,
        attr_right=torch.stack([attr[0], white[1]]),
        attr_face=torch.stack([attr[0], 2 * white[1]]),
        halves_ssim=torch.tensor([0.9, 0.5]),
        exact_ssim=(torch.tensor([0.8, float("nan")]), torch.tensor([0.7, float("nan")])),
    )
    assert values["left_source"].tolist() == [1.0, 0.0]
    assert values["right_target"].tolist() == [1.0, 1.0]
    assert values["both"].tolist() == [1.0, 0.0]
    assert values["cid_cosine"].tolist() == pytest.approx([1.0, 2**-0.5])
    assert values["attr_distance"].tolist() == pytest.approx([0.0, 6**0.5])
    assert values["source_distance"].tolist() == pytest.approx([0.0, 24**0.5])
    assert tool.summary(values, np.array([False, True]))["both"] == 0.0
    assert tool.summary(values)["left_source"] == 0.5
    assert tool.summary(values)["halves_ssim"] == pytest.approx(0.7)
    # The exact-target figures average over the pairs that have one; none: None (the table's n/a).
    assert tool.summary(values)["right_exact_ssim"] == pytest.approx(0.8)
    assert tool.summary(values, np.array([False, True]))["left_exact_ssim"] is None


def test_exact_target_figures_only_for_pairs_drawn_beside_a_world_portrait():
    """A world-sourced pair whose right half is the world's exact target scores 1, its left half (the
    unedited portrait) what the portrait itself scores; a pair of drawn halves has no exact target."""
    tool = _tool()
    seed = 1234
    pair = make_pair(seed, "santa", size=SIZE)
    left = tool.to_float(np.stack([pair.src, pair.src]))
    right = tool.to_float(np.stack([pair.gt, pair.gt]))
    meta = [{"seed": seed, "direction": "santa", "scales": {"world_sources": True}},
            {"seed": seed, "direction": "santa", "scales": {"world_sources": False}}]  # fmt: skip
    right_ssim, left_ssim = tool.exact_ssim(left, right, meta)
    assert right_ssim[0].item() == pytest.approx(1.0, abs=1e-5)
    gt = tool.to_float(pair.gt[None])
    assert left_ssim[0].item() == pytest.approx(ssim(tool.to_float(pair.src[None]), gt).item())
    assert left_ssim[0].item() < 0.95  # santa changes clothes, hat and beard
    assert torch.isnan(right_ssim[1]) and torch.isnan(left_ssim[1])


def test_judges_read_pairs_from_a_model_folder(tmp_path):
    """Tiny real models with known answers: the classifier always says "source", the attribute reader
    always reads the same colours, so only c_id depends on the image."""
    tool = _tool()
    torch.manual_seed(0)
    export_clip(build_clip("tiny", "tiny"), load_tokenizer("tiny"), tmp_path)
    classifier = DirectionClassifier(DirectionClassifierConfig(channels=[8, 16], image_size=SIZE, groups=4))
    head = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(0), 9).float())
    classifier.save_pretrained(tmp_path / "classifier")
    probe = WorldProbe(
        WorldProbeConfig(
            channels=[8, 16], image_size=SIZE, groups=4, hidden=16, targets={"skin_rgb": 3, "hair_rgb": 3}
        )
    )
    torch.nn.init.zeros_(probe.head.weight)
    probe.save_pretrained(tmp_path / "probe")
    width = load_image_encoder(str(tmp_path)).config.hidden_size
    IdentityEncoder(
        IdentityEncoderConfig(clip_width=width, word_width=16, num_heads=2, mlp_hidden=16, image_size=SIZE)
    ).save_pretrained(tmp_path / "identity_encoder")
    face = make_face(7, 0, size=SIZE).image
    other = make_face(8, 1, size=SIZE).image
    pairs = {
        "keys": ["a", "b"],
        "left": np.stack([face, face]),
        "right": np.stack([face, other]),
        "meta": [{"direction": "santa", "identity_source": "world:7"}] * 2,
    }
    values = tool.per_pair(pairs, tool.Judges(tmp_path))
    assert values["left_source"].tolist() == [1.0, 1.0] and values["right_target"].tolist() == [0.0, 0.0]
    assert values["cid_cosine"][0] == pytest.approx(1.0) and values["cid_cosine"][1] < 1.0 - 1e-6
    assert values["attr_distance"].tolist() == [0.0, 0.0] and values["source_distance"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="not a world person"):
        tool.source_face("faces/0001.png", SIZE)


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
