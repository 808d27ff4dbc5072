"""Pair generation on the tiny preset: one batched model call per evaluation, per-seed determinism, shards."""

import numpy as np
import pytest
import torch

from portrait_edit.data.pair_jobs import PairJobsDataModule
from portrait_edit.data.pose_bank import world_pose_bank
from portrait_edit.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig
from portrait_edit.systems.pair_generation import PairGenerationSystem

SIZE = 32  # tiny preset: x2 VAE -> a 16 x 32 canvas latent


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    world_pose_bank(16, seed=0).save(root / "bank.json")
    torch.manual_seed(0)
    config = IdentityEncoderConfig(clip_width=32, word_width=32, num_heads=4, mlp_hidden=64, image_size=32,
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)  # fmt: skip
    IdentityEncoder(config).save_pretrained(root / "identity_encoder")
    return root


def system(assets, **kw):
    args = dict(base="tiny", pose_bank=str(assets / "bank.json"), identity_encoder=str(assets / "identity_encoder"),
                image_size=SIZE, steps=3)  # fmt: skip
    return PairGenerationSystem(**(args | kw))


def jobs(assets, n, **kw):
    dm = PairJobsDataModule(
        num_samples=n, pose_bank=str(assets / "bank.json"), identities=5, shard_size=n, batch_size=n, **kw
    )
    return [dm.make_job(i) | {"index": i, "key": f"{i:09d}", "shard": 0, "shard_len": n} for i in range(n)]


def test_every_evaluation_is_one_batched_unet_and_controlnet_call(assets):
    s = system(assets)
    calls = {"unet": [], "controlnet": []}
    s.generator.unet.register_forward_hook(lambda m, args, out: calls["unet"].append(args[0].shape[0]))
    s.generator.controlnet.register_forward_hook(
        lambda m, args, out: calls["controlnet"].append(args[0].shape[0])
    )
    out = s.predict_step(jobs(assets, 2), 0)
    # 3 Heun steps = 5 evaluations (no correction on the last), each ONE call over 4 branches x 2 pairs.
    assert calls == {"unet": [8] * 5, "controlnet": [8] * 5}
    assert out[0]["src.png"].shape == (SIZE, SIZE, 3) and out[0]["tgt.png"].shape == (SIZE, SIZE, 3)
    assert out[0]["json"]["p"].startswith("the same ") and out[0]["json"]["ablations"] == {
        "pose": True,
        "identity": True,
    }


def test_a_pair_depends_on_its_seed_not_its_batch(assets):
    s = system(assets)
    batch = jobs(assets, 3)
    together = s.predict_step(batch, 0)
    again = s.predict_step(batch, 0)
    alone = s.predict_step(batch[1:2], 0)
    for field in ("src.png", "tgt.png"):
        assert np.array_equal(together[1][field], again[1][field])  # the same batch: the same bytes
        # Alone: the same noise and churn; only the kernels' float rounding differs with the batch size.
        diff = np.abs(together[1][field].astype(int) - alone[0][field].astype(int))
        assert diff.max() <= 2, diff.max()
    assert np.abs(together[0]["src.png"].astype(int) - together[1]["src.png"].astype(int)).mean() > 5


def test_ablation_switches_drop_the_controlnet_and_the_identity(assets):
    s = system(assets, use_pose=False, use_identity=False)
    assert s.generator.controlnet is None and s.generator.identity_encoder is None
    out = s.predict_step(jobs(assets, 1), 0)
    assert "pose.png" not in out[0] and out[0]["json"]["ablations"] == {"pose": False, "identity": False}


def test_jobs_come_from_the_global_index(assets):
    a, b = jobs(assets, 6), jobs(assets, 6)
    assert a == b
    assert [j["direction"] for j in a[:2]] == ["flower", "sheep"]
    assert all(j["identity_source"].startswith("world:") and j["gender"] in ("man", "woman") for j in a)
    with pytest.raises(ValueError, match="not directions of task"):
        PairJobsDataModule(
            num_samples=1, pose_bank=str(assets / "bank.json"), task="costume", directions=["angry"]
        )
