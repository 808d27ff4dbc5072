import subprocess
import sys
from pathlib import Path

import pytest

from portrait_edit.cli import PortraitCLI
from portrait_edit.data.shard_reader import iter_samples, resolve_shards

ROOT = Path(__file__).resolve().parents[1]


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
