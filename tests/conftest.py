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
    from portrait_edit.models.components import load_components

    return load_components("tiny", seed=0)


@pytest.fixture(scope="session")
def clip_tokenizer():
    """The offline CLIP tokenizer shipped in portrait_edit/models/presets/tokenizer/."""
    from portrait_edit.models.components import load_tokenizer

    return load_tokenizer("tiny")
