"""Pose bank: world bank = the world's own keypoints, JSON round trip, and detector results -> keypoints."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from controlnet_aux.open_pose import PoseResult
from controlnet_aux.open_pose.body import BodyResult, Keypoint

from portrait_edit.data.pose_bank import PoseBank, world_pose_bank
from portrait_edit.world import pose_keypoints, sample_pose

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from make_pose_bank import keypoints_of  # noqa: E402


def test_world_bank_holds_the_world_keypoints_and_round_trips(tmp_path):
    bank = world_pose_bank(5, seed=3)
    pose = sample_pose(np.random.default_rng([3, 2]))
    assert bank.world_poses[2] == pose.to_dict()
    np.testing.assert_allclose(bank.pixels(2, 64, 64), pose_keypoints(pose, 64), atol=1e-4)
    # A 64 x 128 half keeps the pose's proportions in x and y separately.
    np.testing.assert_allclose(bank.pixels(2, 64, 128)[:, 0], pose_keypoints(pose, 64)[:, 0] * 2, atol=1e-3)
    bank.save(tmp_path / "bank.json")
    loaded = PoseBank.load(tmp_path / "bank.json")
    np.testing.assert_allclose(loaded.keypoints, bank.keypoints, atol=1e-6)
    assert loaded.world_poses == bank.world_poses and len(loaded) == 5


def test_bad_bank_files_name_the_fix(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other", "poses": []}))
    with pytest.raises(ValueError, match="make_pose_bank"):
        PoseBank.load(tmp_path / "bad.json")


def test_detections_keep_the_person_with_most_keypoints():
    few = [Keypoint(0.5, 0.5)] + [None] * 17
    many = [Keypoint(0.25, 0.5), Keypoint(0.25, 0.75)] + [None] * 16
    results = [
        PoseResult(BodyResult(few, 1.0, 1), None, None, None),
        PoseResult(BodyResult(many, 2.0, 2), None, None, None),
    ]
    out = keypoints_of(results)
    assert out.shape == (18, 3)
    assert out[:2].tolist() == [[0.25, 0.5, 1.0], [0.25, 0.75, 1.0]] and out[2:].sum() == 0
    assert keypoints_of([]) is None


def test_world_bank_command_line(tmp_path):
    out = tmp_path / "bank.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools/make_pose_bank.py"), "--world", "--count", "7", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert len(data["poses"]) == 7 and data["command"].endswith("--world --count 7 --out " + str(out))


def test_missing_annotator_weights_are_named_with_where_to_put_them(tmp_path, monkeypatch):
    from portrait_edit.data.pose_bank import load_openpose_detector

    (tmp_path / "annotators").mkdir()
    (tmp_path / "annotators" / "body_pose_model.pth").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"weights hand_pose_model.pth, facenet.pth are not in the folder .*annotators"
    ):
        load_openpose_detector(str(tmp_path / "annotators"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # an offline machine's empty hub cache
    with pytest.raises(ValueError, match=r"body_pose_model.pth, hand_pose_model.pth, facenet.pth are not in "
                       r"'lllyasviel/Annotators' \(local hub cache, offline\).*huggingface-cli download"):  # fmt: skip
        load_openpose_detector("lllyasviel/Annotators", local_files_only=True)
