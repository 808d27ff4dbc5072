import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from portrait_edit.cli import PortraitCLI, checkpoint_differences
from portrait_edit.data.shard_reader import iter_samples, resolve_shards

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_four_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "portrait_edit", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "usage: portrait-edit" in out
    for sub in ("fit", "validate", "test", "predict"):
        assert f"    {sub} " in out


@pytest.mark.parametrize("seed", ["true", "false"])  # null is refused by the parser itself
def test_seed_everything_must_be_an_explicit_integer(seed):
    args = ["predict", "--config", str(ROOT / "configs/mini/world_pairs.yaml"), f"--seed_everything={seed}"]
    with pytest.raises(ValueError, match="explicit integer"):
        PortraitCLI(args=args)


def test_predict_smoke_writes_world_pair_shards(tmp_path):
    """The predict subcommand end to end on CPU: 12 pairs in shards of 5 (5 + 5 + 2)."""
    out = tmp_path / "pairs"
    args = [
        "predict",
        "--config",
        str(ROOT / "configs/mini/world_pairs.yaml"),
        "--seed_everything=7",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.callbacks.init_args.output_dir={out}",
        "--data.init_args.num_samples=12",
        "--data.init_args.shard_size=5",
        "--data.init_args.batch_size=4",
    ]
    cli = PortraitCLI(args=args)
    assert type(cli.model).__name__ == "WorldPairsSystem"
    assert sorted(p.name for p in out.glob("*.tar")) == [f"pairs-000-00000{k}.tar" for k in range(3)]
    keys = [s["__key__"] for s in iter_samples(resolve_shards(str(out)))]
    assert keys == [f"{i:09d}" for i in range(12)]


def test_checkpoint_differences_names_what_the_config_changes():
    saved = {"_class_path": "a.B", "lr": 1e-4, "export_dir": "data/mini/mcdm", "sizes": (1, 2), "seed": 0}
    given = {"lr": 1e-4, "export_dir": "/elsewhere", "sizes": [1, 2], "seed": 0, "conditioning": {"x": 1}}
    assert checkpoint_differences(saved, given) == {"export_dir": ("data/mini/mcdm", "/elsewhere")}


def tiny_fit_args(tmp_path: Path, shards: Path, export: Path, steps: int, ckpt_path: str) -> list[str]:
    """`fit` of configs/mini/base_unet.yaml on the tiny preset, keeping last.ckpt in tmp_path/checkpoints."""
    small = tmp_path / "small.yaml"
    small.write_text(
        "trainer:\n  logger: false\n  enable_progress_bar: false\n  num_sanity_val_steps: 0\n"
        "  limit_val_batches: 0\n  callbacks: []\n"
        f"  default_root_dir: {tmp_path}\n"
        "checkpoint:\n  every_n_train_steps: 1\n"
    )
    return [
        "fit",
        "--config",
        str(ROOT / "configs/mini/base_unet.yaml"),
        "--config",
        str(small),
        f"--ckpt_path={ckpt_path}",
        f"--trainer.max_steps={steps}",
        "--model.init_args.base=tiny",
        f"--model.init_args.export_dir={export}",
        f"--data.init_args.shards={shards}",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=4",
        "--data.init_args.val_samples=1",
        "--data.init_args.num_workers=0",
    ]


def test_resuming_from_a_checkpoint_file_keeps_the_configs_model_settings(tmp_path, caplog):
    """Lightning's CLI would replace model settings by the checkpoint's: the resumed run would have
    exported into the first run's folder."""
    shards = tmp_path / "pairs"
    PortraitCLI(
        args=[
            "predict",
            "--config",
            str(ROOT / "configs/mini/world_pairs.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.callbacks.init_args.output_dir={shards}",
            "--data.init_args.num_samples=6",
            "--data.init_args.shard_size=6",
        ]
    )
    first, second = tmp_path / "first", tmp_path / "second"
    PortraitCLI(args=tiny_fit_args(tmp_path, shards, first, 1, "null"))
    assert (first / "unet").is_dir() and not second.exists()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    stamp = (first / "unet").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="portrait_edit.cli"):
        cli = PortraitCLI(args=tiny_fit_args(tmp_path, shards, second, 2, str(ckpt)))
    assert cli.trainer.global_step == 2  # resumed at step 1
    assert cli.model.hparams.export_dir == str(second)
    assert (second / "unet").is_dir() and (first / "unet").stat().st_mtime_ns == stamp
    assert f"model.init_args.export_dir is '{second}' here, '{first}' in the checkpoint" in caplog.text
    # A finished run asked again (no step left) still writes its export where the config says.
    third = tmp_path / "third"
    cli = PortraitCLI(args=tiny_fit_args(tmp_path, shards, third, 2, str(ckpt)))
    assert cli.trainer.global_step == 2 and (third / "unet").is_dir()


def test_a_checkpoint_of_another_system_is_refused(tmp_path):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "portrait_edit.systems.mcdm.MCDMSystem"}}, ckpt)
    args = ["predict", "--config", str(ROOT / "configs/mini/world_pairs.yaml"), f"--ckpt_path={ckpt}"]
    with pytest.raises(ValueError, match="was saved by portrait_edit.systems.mcdm.MCDMSystem"):
        PortraitCLI(args=args)
