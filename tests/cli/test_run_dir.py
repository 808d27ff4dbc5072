"""A real-scale fit config (configs/costume/mcdm.yaml) as shipped, on the tiny preset: bf16-mixed with
gradient clipping and the fused AdamW, the run dir owning its checkpoints and W&B run, and another run's
checkpoint refused with one readable message."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from portrait_edit.cli import PortraitCLI, main
from portrait_edit.run_dir import WANDB_ID_FILE, wandb_run_id

ROOT = Path(__file__).resolve().parents[2]


def costume_fit(run: Path, shards: Path, steps: int, *extra: str) -> list[str]:
    """configs/costume/mcdm.yaml with path, size and step-count overrides only (plus a CPU trainer)."""
    return [
        "fit", "--config", str(ROOT / "configs/costume/mcdm.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={run}", "--trainer.limit_val_batches=0",
        "--checkpoint.every_n_train_steps=1",
        "--model.init_args.base=tiny", "--model.init_args.conditioning.init_args.image_encoder=tiny",
        "--model.init_args.conditioning.init_args.clip_image_size=32", f"--model.init_args.export_dir={run}/export",
        f"--data.init_args.train_shards={shards}", "--data.init_args.val_shards=null",
        "--data.init_args.num_workers=0", "--data.init_args.batch_size=2", "--data.init_args.shuffle_buffer=4",
        *extra,
    ]  # fmt: skip


def test_bf16_mixed_fit_with_gradient_clipping_and_the_fused_adamw_trains(
    tmp_path, world_shards, monkeypatch
):
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda p, v, **k: clipped.append(v) or real_clip(p, v, **k)
    )
    cli = PortraitCLI(args=costume_fit(tmp_path / "run", world_shards, 3))
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.gradient_clip_val == 1.0
    assert cli.trainer.optimizers[0].defaults["fused"] is True
    assert cli.trainer.global_step == 3 and clipped == [1.0] * 3
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_two_run_dirs_never_share_a_checkpoint(tmp_path, world_shards):
    PortraitCLI(args=costume_fit(tmp_path / "main", world_shards, 2))
    main_ckpt = tmp_path / "main" / "checkpoints" / "last.ckpt"
    stamp = main_ckpt.stat().st_mtime_ns
    cli = PortraitCLI(args=costume_fit(tmp_path / "ablation", world_shards, 1))
    assert cli.trainer.global_step == 1  # started from scratch: the main run's step-2 state was not resumed
    assert cli.trainer.ckpt_path is None
    assert (tmp_path / "ablation" / "checkpoints" / "last.ckpt").is_file()
    assert main_ckpt.stat().st_mtime_ns == stamp
    # The same run dir resumes its own last.ckpt.
    cli = PortraitCLI(args=costume_fit(tmp_path / "main", world_shards, 3))
    assert cli.trainer.global_step == 3 and Path(cli.trainer.ckpt_path) == main_ckpt


def test_another_runs_checkpoint_is_one_readable_error(tmp_path, world_shards, capsys):
    PortraitCLI(args=costume_fit(tmp_path / "run", world_shards, 1))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    with pytest.raises(SystemExit) as stop:
        main(
            costume_fit(
                tmp_path / "run",
                world_shards,
                2,
                "--model.init_args.conditioning.init_args.use_spatial=false",
            )
        )
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"portrait-edit: error: {ckpt} holds another run's checkpoint")
    assert "conv_in.weight" in message and "default_root_dir" in message
    assert ckpt.stat().st_mtime_ns == stamp  # not overwritten by an exception checkpoint


def test_wandb_run_id_is_the_run_dirs_own(tmp_path):
    first = wandb_run_id(tmp_path / "a")
    assert wandb_run_id(tmp_path / "a") == first == (tmp_path / "a" / WANDB_ID_FILE).read_text().strip()
    assert wandb_run_id(tmp_path / "b") != first


def test_wandb_offline_run_holds_the_full_config_and_a_rerun_continues_it(tmp_path, world_shards):
    import yaml

    run = tmp_path / "run"
    # A new process, as a user reruns it: none of this process's W&B service settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"WANDB_MODE": "offline"}
    for steps in (1, 2):  # a local rerun (a new process) resumes the same run dir
        args = [sys.executable, "-m", "portrait_edit", *costume_fit(run, world_shards, steps)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        time.sleep(1.1)  # W&B names offline run folders by the second
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)
    config = yaml.safe_load((folders[-1] / "files" / "run_config.yaml").read_text())
    # ... and the run's own config record (the dashboard's) holds it too.
    assert str(world_shards).encode() in next(folders[-1].glob("*.wandb")).read_bytes()
    assert config["trainer"]["precision"] == "bf16-mixed" and config["checkpoint"]["every_n_train_steps"] == 1
    assert config["model"]["init_args"]["conditioning"]["init_args"]["image_encoder"] == "tiny"
    assert config["data"]["init_args"]["train_shards"] == str(world_shards)


def test_checkpointing_off_leaves_the_run_dir_without_checkpoints(tmp_path, world_shards):
    cli = PortraitCLI(
        args=costume_fit(tmp_path / "run", world_shards, 1, "--trainer.enable_checkpointing=false")
    )
    assert cli.trainer.global_step == 1 and not (tmp_path / "run" / "checkpoints").exists()
