"""Shared test setup: offline from the first import, plus tiny real SD components.

huggingface_hub reads HF_HUB_OFFLINE once, at import, so these lines must run before anything imports it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd():
    """Every part of the `tiny` preset (seed 0), built once per session. Read-only: copy before changing."""
    from portrait_edit.loading.components import load_components

    return load_components("tiny", seed=0)


@pytest.fixture(scope="session")
def clip_tokenizer():
    """The offline CLIP tokenizer shipped in portrait_edit/loading/presets/tokenizer/."""
    from portrait_edit.loading.components import load_tokenizer

    return load_tokenizer("tiny")


def predict_shards(out, config: str, *overrides: str):
    """`portrait-edit predict --config configs/<config>` writing its shards into `out`."""
    from pathlib import Path

    from portrait_edit.cli import PortraitCLI

    root = Path(__file__).resolve().parents[1]
    args = ["predict", "--config", str(root / "configs" / config), f"--trainer.default_root_dir={out}",
            f"--trainer.callbacks.init_args.output_dir={out}", *overrides]  # fmt: skip
    PortraitCLI(args=args)
    return out


@pytest.fixture(scope="session")
def world_shards(tmp_path_factory):
    """8 mini-world pairs at 32 x 32 in one shard, written by `predict` on configs/mini/world_pairs.yaml."""
    return predict_shards(
        tmp_path_factory.mktemp("pairs"), "mini/world_pairs.yaml", "--model.init_args.size=32",
        "--data.init_args.num_samples=8", "--data.init_args.shard_size=8",
    )  # fmt: skip


@pytest.fixture(scope="session")
def mini_pairs(tmp_path_factory):
    """The first 6 training pairs of the mini world, made by the generate stage itself (`predict` on
    configs/mini/generate.yaml with the shipped mini base) into one shard."""
    return predict_shards(
        tmp_path_factory.mktemp("mini_pairs"), "mini/generate.yaml", "--trainer.enable_progress_bar=false",
        "--data.init_args.num_samples=6",
    )  # fmt: skip
