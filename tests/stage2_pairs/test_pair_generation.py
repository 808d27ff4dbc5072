"""Pair generation on the tiny preset: one batched model call per evaluation, per-seed determinism, shards."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from portrait_edit.data.pair_jobs import PairJobsDataModule
from portrait_edit.data.pose_bank import world_pose_bank
from portrait_edit.data.world_pairs import WorldPairsDataModule
from portrait_edit.diffusion.composable import composable_eps, source_alone_eps
from portrait_edit.diffusion.edm import edm_sample, eps_denoiser, karras_sigmas
from portrait_edit.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig
from portrait_edit.models.pair_generator import edit_mask_blend
from portrait_edit.systems.pair_generation import PairGenerationSystem
from portrait_edit.world import make_pair
from portrait_edit.world.openpose import draw_pose_pair

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


@pytest.mark.parametrize("source_alone", [False, True])
def test_without_the_whole_canvas_prompt_its_branch_is_not_evaluated_and_eq2_is_unchanged(
    assets, source_alone
):
    s = system(assets, s_d=0.0, s_b=1.0, source_alone=source_alone)
    gen, batch = s.generator, jobs(assets, 2)
    rows: list[int] = []
    gen.unet.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    identity = gen.identity(torch.stack([s.face(j["identity_source"]) for j in batch]))
    states = gen.text_states({k: [j[k] for j in batch] for k in ("p", "p_a", "p_b")}, identity)
    drawn = np.stack([draw_pose_pair(s.bank.pixels(j["pose_id"], SIZE, SIZE), SIZE, SIZE) for j in batch])
    pose = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 255.0
    x = torch.randn(
        2, gen.unet.config.in_channels, SIZE // 2, SIZE, generator=torch.Generator().manual_seed(1)
    )
    t, g = torch.tensor([700.0, 300.0]), gen.settings["guidance"]
    with torch.no_grad():
        eps = gen.branch_eps(x, t, states, pose)
        calls = list(rows)
        # Reference: every branch evaluated, one call per branch, combined by Eq. 2 with its s_d = 0 term.
        half = SIZE // 2
        e = {k: gen.unet_branches(x, t, states, pose, (k,))[k] for k in ("null", "p", "p_a", "p_b")}
        if source_alone:
            left = {
                k: gen.unet_branches(x[..., :half], t, states, pose[..., :SIZE], (k,))[k]
                for k in ("null", "p_a")
            }
            expected = source_alone_eps(e["null"], e["p"], e["p_b"], left["null"], left["p_a"], g, 0.0, 1.0)
        else:
            expected = composable_eps(e["null"], e["p"], e["p_a"], e["p_b"], g, 0.0, gen.settings["s_a"], 1.0)
    assert calls == ([4, 4] if source_alone else [6])  # null + p_b (+ the left half's null + p_a); no p
    torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)


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


def test_twin_noise_starts_both_halves_from_the_left_halfs_noise(assets):
    starts = {}
    for twin in (True, False):
        s = system(assets, twin_noise=twin)
        seen: list[torch.Tensor] = []
        s.generator.unet.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0]))
        out = s.predict_step(jobs(assets, 1), 0)
        assert out[0]["json"]["scales"]["twin_noise"] is twin
        starts[twin] = seen[0][0]  # the first evaluation's input: z_T with its first churn (null branch row)
    half = starts[True].shape[-1] // 2
    assert torch.equal(starts[True][..., :half], starts[True][..., half:])
    assert torch.equal(starts[True][..., :half], starts[False][..., :half])  # the left half's own noise
    assert not torch.allclose(starts[False][..., :half], starts[False][..., half:])


@pytest.mark.parametrize("switch", ["pose", "identity"])
def test_ablation_switches_make_the_pairs_ignore_what_they_drop(assets, switch):
    """With use_pose / use_identity off, a pair no longer depends on the job's pose / identity face (the
    same bytes for another one); with it on, it does."""
    job = jobs(assets, 1)[0]
    if switch == "pose":
        other = {**job, "pose_id": (job["pose_id"] + 5) % 16}
    else:
        other = {**job, "identity_source": "world:12345"}
    for used in (True, False):
        s = system(assets, **{f"use_{switch}": used})
        net = s.generator.controlnet
        if net is not None:  # a fresh ControlNet's zero convolutions ignore the pose: wake them
            zero_convs = [
                *net.controlnet_down_blocks,
                net.controlnet_mid_block,
                net.controlnet_cond_embedding.conv_out,
            ]
            with torch.no_grad():
                for conv in zero_convs:
                    conv.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        a, b = s.predict_step([job], 0)[0], s.predict_step([other], 0)[0]
        same = all(np.array_equal(a[f], b[f]) for f in ("src.png", "tgt.png"))
        assert same is not used, (switch, used)
        assert a["json"]["ablations"][switch] is used and ("pose.png" in a) is (switch != "pose" or used)
    off = system(assets, use_pose=False, use_identity=False).generator
    assert off.controlnet is None and off.identity_encoder is None


def test_jobs_come_from_the_global_index(assets):
    a, b = jobs(assets, 6), jobs(assets, 6)
    assert a == b
    assert [j["direction"] for j in a[:2]] == ["flower", "sheep"]
    assert all(j["identity_source"].startswith("world:") and j["gender"] in ("man", "woman") for j in a)
    with pytest.raises(ValueError, match="not directions of task"):
        PairJobsDataModule(
            num_samples=1, pose_bank=str(assets / "bank.json"), task="costume", directions=["angry"]
        )


def generate_with_cli(assets, out, devices):
    from portrait_edit.cli import PortraitCLI

    root = Path(__file__).resolve().parents[2]
    PortraitCLI(
        args=[
            "predict",
            "--config",
            str(root / "configs/mini/generate.yaml"),
            f"--trainer.default_root_dir={out}",
            f"--trainer.devices={devices}",
            *(["--trainer.strategy=ddp_spawn"] if devices > 1 else []),
            "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks.init_args.output_dir={out}",
            "--model.init_args.base=tiny",
            f"--model.init_args.pose_bank={assets / 'bank.json'}",
            f"--model.init_args.identity_encoder={assets / 'identity_encoder'}",
            f"--model.init_args.image_size={SIZE}",
            "--model.init_args.steps=2",
            f"--data.init_args.pose_bank={assets / 'bank.json'}",
            "--data.init_args.num_samples=8",
            "--data.init_args.shard_size=2",
            "--data.init_args.batch_size=2",
        ]
    )


@pytest.mark.slow
def test_two_process_ddp_generation_equals_one_process(assets, tmp_path):
    """Real gloo DDP (2 processes): disjoint shards whose union is the 1-process run, byte for byte."""
    from test_shards import members_by_key

    # Lightning gives each of 2 CPU processes half the cores; the reference runs with that one thread, as
    # kernels split their sums by thread count and the last bit of a float could differ otherwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        generate_with_cli(assets, tmp_path / "one", devices=1)
    finally:
        torch.set_num_threads(threads)
    generate_with_cli(assets, tmp_path / "two", devices=2)
    one, two = members_by_key(tmp_path / "one"), members_by_key(tmp_path / "two")
    assert sorted(one) == [f"{i:09d}" for i in range(8)] and one == two
    ranks = {name[:9] for name in os.listdir(tmp_path / "two") if name.endswith(".tar")}
    assert ranks == {"pairs-000", "pairs-001"}


def test_validation_mode_swaps_identity_words_for_descriptions(assets):
    batch = jobs(assets, 4, identity_samples=2)
    assert [j["with_identity"] for j in batch] == [True, True, False, False]
    assert batch[0]["description"] is None and batch[0]["p_a"] == f"a {batch[0]['gender']}, normal costume"
    described = batch[2]
    assert described["description"].startswith("with ") and described["description"] in described["p_a"]
    s = system(assets)
    gen = s.generator
    prompts = {k: [j[k] for j in batch] for k in ("p", "p_a", "p_b")}
    identity = torch.randn(4, 2, 32)
    states = gen.text_states(prompts, identity, torch.tensor([j["with_identity"] for j in batch]))
    plain = gen.text_states(prompts, None)
    spliced = gen.text_states(prompts, identity)
    for name in ("p", "p_a", "p_b"):
        torch.testing.assert_close(states[name][2:], plain[name][2:])  # described rows: as written
        torch.testing.assert_close(states[name][:2], spliced[name][:2])  # identity rows: c_id spliced
    out = s.predict_step(batch, 0)
    assert [o["json"]["with_identity"] for o in out] == [True, True, False, False]


def test_identity_filter_drops_pairs_and_the_shards_count_them(assets, tmp_path):
    from portrait_edit.data.shard_writer import ShardWriter

    batch = jobs(assets, 3)
    kept = system(assets, min_identity_similarity=-2.0).predict_step(batch, 0)
    assert all("__filtered__" not in o and -1 <= o["json"]["identity_similarity"] <= 1 for o in kept)
    dropped = system(assets, min_identity_similarity=2.0).predict_step(batch, 0)
    assert all(o["__filtered__"].startswith("identity similarity") for o in dropped)
    writer = ShardWriter(str(tmp_path))
    writer.on_predict_start(None, None)
    for sample in [kept[0], dropped[1], kept[2]]:
        sample["__shard_len__"] = 3
        writer.write_sample(sample, rank=0)
    side = json.loads((tmp_path / "pairs-000-000000.json").read_text())
    assert side["keys"] == [kept[0]["__key__"], kept[2]["__key__"]] and list(side["filtered"]) == [
        dropped[1]["__key__"]
    ]
    manifest = json.loads(Path(writer.write_manifest(0)).read_text())
    assert (manifest["num_samples"], manifest["num_filtered"]) == (2, 1)
    with pytest.raises(ValueError, match="needs use_identity"):
        system(assets, use_identity=False, min_identity_similarity=0.5)


def test_source_alone_draws_the_left_half_as_a_plain_sample_of_p_a_that_the_right_half_sees(assets):
    s = system(assets, source_alone=True, s_churn=0.0)  # deterministic Heun: the halves' noise is all of z_T
    gen, batch = s.generator, jobs(assets, 2)
    calls: list[tuple] = []
    gen.unet.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    out = s.predict_step(batch, 0)
    assert out[0]["json"]["scales"]["source_alone"] is True
    # every evaluation: the canvas's null / p / p_b rows, then the left half's null / p_a rows
    c = gen.unet.config.in_channels
    assert calls[:2] == [(6, c, SIZE // 2, SIZE), (4, c, SIZE // 2, SIZE // 2)] and len(calls) == 10

    identity = gen.identity(torch.stack([s.face(j["identity_source"]) for j in batch]))
    prompts = {k: [j[k] for j in batch] for k in ("p", "p_a", "p_b")}
    states = gen.text_states(prompts, identity)
    drawn = np.stack([draw_pose_pair(s.bank.pixels(j["pose_id"], SIZE, SIZE), SIZE, SIZE) for j in batch])
    pose = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 255.0
    noise = torch.randn(
        2, c, SIZE // 2, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    sigmas = karras_sigmas(3, float(gen.table[0]), float(gen.table[-1]))

    def sample(states, x):
        return edm_sample(eps_denoiser(lambda z, t: gen.branch_eps(z, t, states, pose), gen.table), x, sigmas)

    def left_alone(z, t):  # the base's own text-to-image step on the left half: two plain calls, CFG of p_a
        left_pose = pose[..., :SIZE]
        eps = []
        for text in (states["null"].expand(2, -1, -1), states["p_a"]):
            down, mid = gen.controlnet(
                z.float(), t.float(), encoder_hidden_states=text, controlnet_cond=left_pose, return_dict=False
            )
            eps.append(
                gen.unet(z.float(), t.float(), encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
            )  # fmt: skip
        return eps[0] + gen.settings["guidance"] * (eps[1] - eps[0])

    pair = sample(states, noise)
    reference = edm_sample(eps_denoiser(left_alone, gen.table), noise[..., : SIZE // 2], sigmas)
    torch.testing.assert_close(pair[..., : SIZE // 2], reference, rtol=1e-4, atol=1e-4)
    other_b = sample(states | {"p_b": states["p_b"].flip(0)}, noise)  # another edit: x_A stays, x_B moves
    assert torch.equal(other_b[..., : SIZE // 2], pair[..., : SIZE // 2])
    assert (other_b[..., SIZE // 2 :] - pair[..., SIZE // 2 :]).abs().mean() > 1e-3
    other_a = sample(states | {"p_a": states["p_a"].flip(0)}, noise)  # x_B sees x_A (most near the seam)
    assert (other_a[..., SIZE // 2 :] - pair[..., SIZE // 2 :]).abs().amax() > 1e-3


def test_edit_mask_blend_keeps_the_left_half_outside_the_mask_of_the_prompts_effect():
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 16, dtype=torch.float64)
    effect = 0.2 * torch.randn(2, 4, 8, 8, dtype=torch.float64)
    effect[..., 2:5, 3:6] += 3.0  # p_b changes a block of the right half most
    thresholds = torch.tensor([0.2, 0.5])
    got = edit_mask_blend(x, effect.abs().mean(dim=1), thresholds)
    # reference: torchvision's Gaussian blur (kernel 5, its default sigma) of the min-max normalised map
    diff = effect.abs().mean(dim=1)
    low, high = diff.amin(dim=(1, 2), keepdim=True), diff.amax(dim=(1, 2), keepdim=True)
    soft = gaussian_blur(((diff - low) / (high - low))[:, None].float(), [5, 5])[:, 0]
    keep = soft > thresholds[:, None, None]
    assert 0 < keep[0].sum() < 64 and keep[1].sum() < keep[0].sum()
    assert torch.equal(got[..., :8], x[..., :8])
    right = got[..., 8:].permute(0, 2, 3, 1)  # (B, h, w, C): rows picked by the (B, h, w) mask
    assert torch.equal(right[keep], x[..., 8:].permute(0, 2, 3, 1)[keep])
    assert torch.equal(right[~keep], x[..., :8].permute(0, 2, 3, 1)[~keep])


def test_edit_mask_generation_is_the_plain_pair_with_a_full_mask_and_two_equal_halves_with_none(assets):
    s = system(assets, steps=3, source_alone=True, twin_noise=True, edit_mask=0.35)
    gen, batch = s.generator, jobs(assets, 2)
    identity = gen.identity(torch.stack([s.face(j["identity_source"]) for j in batch]))
    states = gen.text_states({n: [j[n] for j in batch] for n in ("p", "p_a", "p_b")}, identity)
    c = gen.unet.config.in_channels
    noise = torch.randn(2, c, SIZE // 2, SIZE, generator=torch.Generator().manual_seed(0))
    decode = gen.vae.decode
    gen.vae.decode = lambda z: SimpleNamespace(sample=z / 500)  # latents, inside the clamp to [-1, 1]

    def draw(thresholds):
        return gen.generate(
            states, noise, [torch.Generator().manual_seed(i) for i in range(2)], None, thresholds
        )

    plain, half = draw(None), SIZE // 2
    assert torch.equal(draw(torch.tensor([-1.0, -1.0])), plain)  # M everywhere: nothing kept
    same = draw(torch.tensor([1.0, 1.0]))  # M nowhere: x_B is x_A
    assert torch.equal(same[..., :half], same[..., half:])
    assert torch.equal(same[..., :half], plain[..., :half])
    masked = draw(torch.tensor([0.35, 0.35]))
    kept = (masked[..., half:] == masked[..., :half]).all(dim=1)  # latent cells where x_B is x_A
    assert 0 < kept.float().mean() < 1
    assert torch.equal(masked[..., :half], plain[..., :half])  # x_A is drawn alone: the mask never moves it
    # blended at every step, not only at the end: inside the mask x_B moved from the plain pair's too
    edited = ~kept[:, None].expand_as(plain[..., half:])
    assert (masked[..., half:][edited] - plain[..., half:][edited]).abs().mean() > 1e-4
    gen.vae.decode = decode
    assert s.predict_step(batch, 0)[0]["json"]["scales"]["edit_mask"] == 0.35
    with pytest.raises(ValueError, match="needs twin_noise and source_alone"):
        system(assets, steps=3, source_alone=True, edit_mask=0.35)
    with pytest.raises(ValueError, match="no lambda for task"):
        s.hparams.edit_mask = {"costume": 0.2}
        s.predict_step(jobs(assets, 2, task="expression"), 0)


def world_jobs(n, seed=5):
    dm = WorldPairsDataModule(num_samples=n, shard_size=n, batch_size=n, seed=seed)
    return [dm.make_job(i) | {"index": i, "key": f"{i:09d}", "shard": 0, "shard_len": n} for i in range(n)]


def test_world_sources_keep_the_given_latent_as_x_a_and_draw_only_x_b_beside_it(assets):
    s = system(assets, source_alone=True, twin_noise=True, world_sources=True)
    gen, batch = s.generator, [s.world_job(j) for j in world_jobs(2)]
    identity = gen.identity(torch.stack([s.face(j["identity_source"]) for j in batch]))
    states = gen.text_states({n: [j[n] for j in batch] for n in ("p", "p_a", "p_b")}, identity)
    c, half = gen.unet.config.in_channels, SIZE // 2
    noise = torch.randn(2, c, half, SIZE, generator=torch.Generator().manual_seed(0))
    source = torch.randn(2, c, half, half, generator=torch.Generator().manual_seed(1))
    calls: list[tuple] = []
    hook = gen.unet.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    decode = gen.vae.decode
    gen.vae.decode = lambda z: SimpleNamespace(sample=z / 500)  # latents, inside the clamp to [-1, 1]

    def draw(states, source, thresholds=None):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return (
            gen.generate(states, noise, gens, None, thresholds, source) * 500 * gen.vae.config.scaling_factor
        )

    out = draw(states, source)
    # the last step lands on the denoiser's value, which is the source on the left: x_A is the source
    torch.testing.assert_close(out[..., :half], source, rtol=0, atol=1e-5)
    # no call on the left half alone: only the canvas's null / p / p_b rows, 3 Heun steps = 5 evaluations
    assert calls == [(6, c, half, SIZE)] * 5
    # p_a draws nothing now; x_B sees the source
    assert torch.equal(draw(states | {"p_a": states["p_a"].flip(0)}, source), out)
    assert (draw(states, source.flip(0))[..., half:] - out[..., half:]).abs().mean() > 1e-3
    same = draw(states, source, torch.tensor([1.0, 1.0]))  # a mask nowhere: x_B is the source too
    torch.testing.assert_close(same[..., half:], source, rtol=0, atol=1e-5)
    hook.remove()
    gen.vae.decode = decode

    sample = s.predict_step(world_jobs(2), 0)[1]
    pair = make_pair(world_jobs(2)[1]["seed"], "sheep", size=SIZE)  # directions cycle: index 1 is sheep
    assert np.array_equal(sample["src.png"], pair.src) and sample["json"]["direction"] == "sheep"
    assert sample["json"]["p_b"] == pair.prompts["p_b"] and sample["json"]["scales"]["world_sources"] is True
    assert sample["json"]["identity_source"] == f"world:{pair.meta['identity_seed']}"
    assert np.array_equal(sample["pose.png"], draw_pose_pair(pair.keypoints, SIZE, SIZE)[:, :SIZE])
    with pytest.raises(ValueError, match="world_sources reads jobs of .*WorldPairsDataModule"):
        s.predict_step(jobs(assets, 2), 0)
    with pytest.raises(ValueError, match="world_sources needs twin_noise and source_alone"):
        system(assets, source_alone=True, world_sources=True)


def test_a_generation_whose_pose_bank_is_not_the_jobs_is_refused(assets, tmp_path):
    from lightning.pytorch import Trainer

    world_pose_bank(16, seed=1).save(tmp_path / "other.json")
    dm = PairJobsDataModule(num_samples=2, pose_bank=str(tmp_path / "other.json"), identities=5, shard_size=2)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(
        ValueError, match=r"model.init_args.pose_bank \(.*bank.json, 16 poses\) is not the bank"
    ):
        trainer.predict(system(assets), datamodule=dm, return_predictions=False)
