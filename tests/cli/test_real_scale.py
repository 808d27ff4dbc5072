"""Every real-scale config of both tasks, end to end, as a new user runs them: offline (HF_HUB_OFFLINE=1)
over a Hugging Face cache of tiny stand-ins with the real repos' layout (tests/hub_standins.py), an
FFHQ-layout face folder and a folder of mixed photos, each stage a `portrait-edit` (or tool) process in a
fresh working directory, so the configs' own relative paths (outputs/<task>/..., runs/<task>/...) connect
the stages. The only overrides are paths, sizes and step counts, plus the shipped CPU trainer pieces
(configs/trainer/cpu.yaml, ddp_cpu.yaml) in place of the GPU.

Stages: identity fit (stage 1, zero-shot genders of FFHQ), the pose bank (world poses), training pairs
(2 processes for one task, 1 for the other) and validation pairs, condition caching, the MCDM fit in
bf16-mixed killed with SIGKILL and rerun, its export, the edit job over the photo folder with zero-shot
gender, and `validate` (LPIPS and FID marked unavailable). The expression task runs on the paper's base,
RealisticVision (configs/bases/: the noVAE repo + sd-vae-ft-mse, and its single original-layout file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hub_standins as hub
import numpy as np
import pytest
import torch
from PIL import Image

from portrait_edit.data.shard_pipeline import read_shard_samples, resolve_shards

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
pytestmark = pytest.mark.slow


class World:
    """The stand-in world and a runner of `portrait-edit` processes in its working directory."""

    def __init__(self, root: Path) -> None:
        self.root, self.work = root, root / "work"
        self.work.mkdir(parents=True)
        self.snapshots = hub.build_hub_cache(root / "hf_home")
        self.ffhq = hub.ffhq_folder(root / "ffhq", 12)
        self.photos, self.good_photos, self.broken_photos = hub.photo_folder(root / "photos")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HF_"))} | {
            "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0",
        }  # fmt: skip

    def command(self, *args: str | Path, tool: str | None = None) -> list[str]:
        entry = [str(ROOT / "tools" / f"{tool}.py")] if tool else ["-m", "portrait_edit"]
        return [sys.executable, *entry, *map(str, args)]

    def run(self, *args: str | Path, tool: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            self.command(*args, tool=tool),
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if ok:
            assert done.returncode == 0, f"{args}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        return done


def configs(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", str(CONFIGS / name))]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """The stand-ins, stage 1 (shared by both tasks) and the pose bank."""
    w = World(tmp_path_factory.mktemp("real_scale"))
    w.run("fit", *configs("costume/identity_ffhq.yaml", "trainer/cpu.yaml"), f"--data.init_args.root={w.ffhq}",
          "--data.init_args.image_size=64", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
          "--trainer.max_steps=3", "--trainer.val_check_interval=3")  # fmt: skip
    assert (w.work / "outputs/costume/identity/identity_encoder/config.json").is_file()
    genders = json.loads((w.work / "outputs/costume/ffhq_genders.json").read_text())
    assert len(genders) == 12 and set(genders.values()) <= {"man", "woman"}
    w.run("--world", "--count", "16", "--out", "outputs/pose_bank.json", tool="make_pose_bank")
    return w


def check_pairs(folder: Path, count: int) -> None:
    samples = {}
    for url in resolve_shards(str(folder)):
        samples.update(read_shard_samples(url))
    assert len(samples) == count
    for fields in samples.values():
        assert {"src.png", "tgt.png", "json", "pose.png"} <= set(fields)


def pair_stages(w: World, task: str, base: list[str], processes: int) -> None:
    """Training pairs (on `processes` CPU processes) and validation pairs (1), each checked."""
    trainer = "trainer/ddp_cpu.yaml" if processes == 2 else "trainer/cpu.yaml"
    sizes = [
        f"--data.init_args.faces={w.ffhq}",
        "--model.init_args.image_size=64",
        "--model.init_args.steps=2",
    ]
    w.run("predict", *configs(f"{task}/generate.yaml", *base, trainer), *sizes, "--data.init_args.num_samples=8",
          "--data.init_args.shard_size=2", "--data.init_args.batch_size=2")  # fmt: skip
    check_pairs(w.work / f"outputs/{task}/pairs", 8)
    w.run("predict", *configs(f"{task}/generate.yaml", f"{task}/generate_val.yaml", *base, "trainer/cpu.yaml"),
          *sizes, "--data.init_args.num_samples=6", "--data.init_args.identity_samples=2",
          "--data.init_args.shard_size=3", "--data.init_args.batch_size=3")  # fmt: skip
    check_pairs(w.work / f"outputs/{task}/pairs_val", 6)


def cache_stage(w: World, task: str, mcdm: list[str]) -> None:
    for split in ("pairs", "pairs_val"):
        w.run(f"outputs/{task}/{split}", *mcdm, tool="cache_conditions")
        for fields in read_shard_samples(resolve_shards(str(w.work / f"outputs/{task}/{split}"))[0]).values():
            assert {"src.latent.npy", "tgt.latent.npy", "src.clip.npy"} <= set(fields)


def mcdm_stage(w: World, task: str, mcdm: list[str]) -> None:
    """The MCDM fit (bf16-mixed, clipping, fused AdamW as configured), SIGKILLed after its first checkpoint
    and rerun with the same command: it resumes, finishes and exports."""
    fit = ["fit", *mcdm, "--trainer.max_steps=6", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1",
           "--checkpoint.every_n_train_steps=2", "--data.init_args.batch_size=2", "--data.init_args.num_workers=1",
           "--data.init_args.shuffle_buffer=4"]  # fmt: skip
    ckpt = w.work / f"runs/{task}/mcdm/checkpoints/last.ckpt"
    first = subprocess.Popen(w.command(*fit), cwd=w.work, env=w.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)  # fmt: skip
    end = time.monotonic() + 300
    while not ckpt.is_file() and first.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert ckpt.is_file(), first.stderr.read()[-4000:]
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert killed_at < 6 and not (w.work / f"outputs/{task}/mcdm/mcdm.json").exists()
    again = w.run(*fit)
    assert f"Restoring states from the checkpoint path at {ckpt}" in again.stdout + again.stderr
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and state["hyper_parameters"]["export_dir"] == f"outputs/{task}/mcdm"
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    progress = again.stdout + again.stderr
    assert "train/loss=" in progress and "nan" not in progress.split("train/loss=")[-1][:8]
    export = w.work / f"outputs/{task}/mcdm"
    settings = json.loads((export / "mcdm.json").read_text())
    assert settings["scales"] == {"image": 3.0, "spatial": 3.0, "text": 5.0}
    images = list(
        (w.work / f"runs/{task}/mcdm/wandb").glob("offline-run-*/files/media/images/val/edits_*.png")
    )
    assert images, "the validation edits are in the W&B run folder"


def edit_stage(w: World, task: str, directions: list[str]) -> None:
    """The edit job over the photo folder, no genders file: CLIP zero-shot, every good photo edited in every
    direction, every broken one listed with its reason."""
    w.run("predict", *configs(f"{task}/edit.yaml", "trainer/cpu.yaml"), f"--data.init_args.root={w.photos}",
          "--data.init_args.image_size=64", "--data.init_args.num_workers=0", "--model.init_args.steps=2",
          "--model.init_args.mask_seeds=2")  # fmt: skip
    out = w.work / f"outputs/{task}/edits"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == w.good_photos
    for name in w.good_photos:
        for direction in directions:
            edit = np.asarray(Image.open(out / name / f"{direction}.png"))
            assert edit.shape == (64, 64, 3)
        assert json.loads((out / name / "edit.json").read_text())["gender"] in ("man", "woman")
    report = json.loads((out / "report-r0.json").read_text())
    assert sorted(f["name"] for f in report["failed"]) == w.broken_photos and all(
        f["reason"] for f in report["failed"]
    )


def eval_stage(w: World, task: str, base: list[str]) -> None:
    w.run(
        "validate", *configs(f"{task}/eval.yaml", *base, "trainer/cpu.yaml"), "--data.init_args.num_workers=0"
    )
    table = json.loads((w.work / f"outputs/{task}/eval/table.json").read_text())
    assert [r["method"] for r in table["rows"]] == [
        "SDEdit 0.5",
        "SDEdit 0.8",
        "DiffEdit",
        "Ours w/o Mask",
        "Ours",
    ]
    assert {"lpips", "fid"} <= set(table["unavailable"]) and "caveats" in table
    assert all(np.isfinite(r["ssim"]) and r.get("lpips") is None for r in table["rows"])
    assert "LPIPS: unavailable" in (w.work / f"outputs/{task}/eval/table.md").read_text()


def test_costume_end_to_end_on_sd15(world):
    mcdm = configs("costume/mcdm.yaml", "trainer/cpu.yaml")
    pair_stages(world, "costume", [], processes=2)
    cache_stage(world, "costume", mcdm)
    mcdm_stage(world, "costume", mcdm)
    edit_stage(world, "costume", ["santa", "royal", "flower", "sheep"])
    eval_stage(world, "costume", [])
    run_dir_errors(world)


def test_expression_end_to_end_on_realistic_vision(world):
    """The paper's base: pairs and baselines from the noVAE repo with sd-vae-ft-mse; the MCDM from the same
    weights as ONE original-layout .safetensors file."""
    rv = ["bases/realistic_vision.yaml"]
    pair_stages(world, "expression", rv, processes=1)
    single = world.root / "Realistic_Vision_V4.0.safetensors"
    world.run(world.snapshots[hub.REALISTIC_VISION], single, tool="export_single_file")
    mcdm = [*configs("expression/mcdm.yaml", "bases/realistic_vision_file.yaml", "trainer/cpu.yaml"),
            f"--model.init_args.base={single}",
            f"--model.init_args.single_file_config={world.snapshots[hub.REALISTIC_VISION]}"]  # fmt: skip
    cache_stage(world, "expression", mcdm)
    mcdm_stage(world, "expression", mcdm)
    edit_stage(world, "expression", ["angry", "shocked", "laughing", "crying"])
    eval_stage(world, "expression", rv)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a failed command ends with; no traceback before it."""
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-4000:]
    return done.stderr.strip().splitlines()[-1]


def assert_one_line_errors(w: World, cases: dict[str, tuple[list[str], str]]) -> None:
    for what, (args, expected) in cases.items():
        line = error_line(w.run(*args, ok=False))
        assert line.startswith("portrait-edit: error: ") and expected in line, (what, line)


def run_dir_errors(w: World) -> None:
    """After the costume chain: its run dir and cached shards exist."""
    mcdm = [*configs("costume/mcdm.yaml", "trainer/cpu.yaml"), "--trainer.max_steps=1"]
    assert_one_line_errors(w, {
        "a run dir that holds another run's checkpoints": (
            ["fit", *mcdm, "--model.init_args.conditioning.init_args.use_spatial=false"],
            "runs/costume/mcdm/checkpoints/last.ckpt holds another run's checkpoint",
        ),
        "cached conditions made for another CLIP layer": (
            ["fit", *mcdm, "--trainer.default_root_dir=runs/costume/mcdm_layer",
             "--model.init_args.conditioning.init_args.clip_layer=-2"],
            "these shards' cached conditions were made for another model: clip_layer -1 (cached) vs -2 (this config)",
        ),
    })  # fmt: skip


def test_configuration_errors_are_one_readable_line_each(world):
    """Each a mistake a user makes at real scale; each message says what is wrong and what to do."""
    w, mcdm = world, [*configs("costume/mcdm.yaml", "trainer/cpu.yaml"), "--trainer.max_steps=1"]
    (w.root / "empty_faces").mkdir()
    single = w.root / "sd15.safetensors"
    w.run(w.snapshots[hub.SD15], single, tool="export_single_file")
    cases = {
        "a dead hub id": (
            ["fit", *mcdm, "--model.init_args.base=nobody/stable-diffusion-v1-5"],
            "could not load the vae from 'nobody/stable-diffusion-v1-5': not found in the local hub cache (offline)",
        ),
        "a folder that is not a diffusers model": (
            ["fit", *mcdm, f"--model.init_args.base={w.photos}"], f"{w.photos} holds no vae: expected vae/config.json",
        ),
        "a single file without a matching config": (
            ["fit", *mcdm, f"--model.init_args.base={single}"], "does not match the vae config in",
        ),
        "an empty face folder": (
            ["fit", *configs("costume/identity_ffhq.yaml", "trainer/cpu.yaml"), f"--data.init_args.root={w.root / 'empty_faces'}"],
            "no face images under",
        ),
        "a missing pose bank": (
            ["predict", *configs("costume/generate.yaml", "trainer/cpu.yaml"), "--model.init_args.pose_bank=nowhere.json",
             "--data.init_args.pose_bank=nowhere.json"],
            "cannot read pose bank nowhere.json",
        ),
    }  # fmt: skip
    assert_one_line_errors(w, cases)
    line = error_line(w.run("--images", w.photos, "--out", "bank.json", tool="make_pose_bank", ok=False))
    assert "body_pose_model.pth, hand_pose_model.pth, facenet.pth are not in 'lllyasviel/Annotators'" in line
