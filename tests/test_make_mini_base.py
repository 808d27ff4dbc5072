"""tools/make_mini_base.py: stages run in one process, so each must close its W&B run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_mini_base import finish_wandb_run  # noqa: E402


def test_each_in_process_stage_gets_its_own_wandb_run(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    ids = []
    for name in ("stage_a", "stage_b"):
        logger = WandbLogger(project="portrait_edit", name=name, save_dir=str(tmp_path / name), offline=True)
        ids.append(logger.experiment.id)
        finish_wandb_run()
    assert ids[0] != ids[1]
    assert (tmp_path / "stage_b" / "wandb").is_dir()  # the second stage logs under its own run dir
