"""tools/make_mini_base.py: stages run in one process, so each must close its W&B run; a remade stage
outdates the stages trained on it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import make_mini_base  # noqa: E402
from make_mini_base import (  # noqa: E402
    finish_wandb_run,
    inputs_of,
    outdated,
    prepare_output_dir,
    prepare_run_dir,
)


def test_a_remade_vae_outdates_the_unet_and_the_controlnet_follows():
    manifest = {"stages": {
        "pairs": {"date": "2026-01-01T00:00:00+0000"}, "clip": {"date": "2026-01-02T00:00:00+0000"},
        "vae": {"date": "2026-01-05T00:00:00+0000"},
        "unet": {"date": "2026-01-03T00:00:00+0000"},  # no recorded inputs: compared by date
    }}  # fmt: skip
    unet_inputs = inputs_of(manifest, "unet")
    assert unet_inputs == {
        "pairs": "2026-01-01T00:00:00+0000", "vae": "2026-01-05T00:00:00+0000", "clip": "2026-01-02T00:00:00+0000"
    }  # fmt: skip
    assert outdated(manifest["stages"]["unet"], unet_inputs) == ["vae"]
    assert outdated({}, unet_inputs) == []  # never trained: it simply runs
    manifest["stages"]["unet"] = {"date": "2026-01-06T00:00:00+0000", "inputs": unet_inputs}
    assert outdated(manifest["stages"]["unet"], inputs_of(manifest, "unet")) == []
    controlnet = {
        "date": "2026-01-04T00:00:00+0000",
        "inputs": {"pairs": manifest["stages"]["pairs"]["date"], "unet": "2026-01-03T00:00:00+0000"},
    }
    assert outdated(controlnet, inputs_of(manifest, "controlnet")) == ["unet"]


def test_outdated_stage_starts_fresh_but_its_interrupted_retraining_resumes(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    monkeypatch.setattr(make_mini_base, "checkpoint_dir", lambda config: folder)
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"old inputs")
    new = {"vae": "2026-01-05T00:00:00+0000"}
    prepare_run_dir("unet.yaml", new, force=False, stale=True)
    assert not (folder / "last.ckpt").exists()  # set aside, kept next to it
    assert [p.name.startswith("checkpoints.old-") for p in tmp_path.iterdir()].count(True) == 1
    (folder / "last.ckpt").write_bytes(b"interrupted retraining")
    prepare_run_dir("unet.yaml", new, force=False, stale=True)
    assert (folder / "last.ckpt").read_bytes() == b"interrupted retraining"
    prepare_run_dir("unet.yaml", new, force=False, stale=False)  # a changed config: resumes
    assert (folder / "last.ckpt").is_file()
    prepare_run_dir("unet.yaml", new, force=True, stale=False)  # --force: always from scratch
    assert not (folder / "last.ckpt").exists()
    assert sorted((p / "last.ckpt").read_bytes() for p in tmp_path.glob("checkpoints.old-*")) == [
        b"interrupted retraining",
        b"old inputs",
    ]


def test_predict_stage_resumes_only_shards_of_its_own_config_and_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(make_mini_base, "REPO_ROOT", tmp_path)
    config = tmp_path / "generate.yaml"
    write = lambda guidance: config.write_text(  # noqa: E731
        "trainer:\n  callbacks:\n    - class_path: portrait_edit.data.shard_writer.ShardWriter\n"
        f"      init_args:\n        output_dir: pairs\n        prefix: pairs\nmodel:\n  guidance: {guidance}\n"
    )
    write(4.0)
    folder, inputs = tmp_path / "pairs", {"unet": "2026-01-03T00:00:00+0000"}
    folder.mkdir()
    (folder / "pairs-000-000000.tar").write_bytes(b"unknown origin")
    prepare_output_dir("generate.yaml", inputs, force=False)
    assert not any(p.suffix == ".tar" for p in folder.iterdir())  # set aside: nothing says what made it
    (folder / "pairs-000-000000.tar").write_bytes(b"interrupted run")
    prepare_output_dir("generate.yaml", inputs, force=False)  # same config, same inputs: resumes
    assert (folder / "pairs-000-000000.tar").read_bytes() == b"interrupted run"
    write(7.5)  # a changed setting
    prepare_output_dir("generate.yaml", inputs, force=False)
    assert not (folder / "pairs-000-000000.tar").exists()
    (folder / "pairs-000-000000.tar").write_bytes(b"guidance 7.5")
    prepare_output_dir("generate.yaml", {"unet": "2026-02-01T00:00:00+0000"}, force=False)  # a new UNet
    assert not (folder / "pairs-000-000000.tar").exists()
    old = sorted((p / "pairs-000-000000.tar").read_bytes() for p in tmp_path.glob("pairs.old-*"))
    assert old == [b"guidance 7.5", b"interrupted run", b"unknown origin"]


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


def test_stage_entries_from_two_runs_are_both_kept(tmp_path):
    from make_mini_base import read_manifest, record_stage

    path = tmp_path / "manifest.json"
    first_run = read_manifest(path)  # a long run read the manifest at its start
    record_stage(path, "classifier", {"steps": 1800})  # another run records its stage meanwhile
    first_run = record_stage(path, "unet", {"steps": 4800})
    assert first_run["stages"] == {"classifier": {"steps": 1800}, "unet": {"steps": 4800}}
    assert read_manifest(path) == first_run


def test_comment_edits_leave_a_config_unchanged(tmp_path, monkeypatch):
    from make_mini_base import config_digest, config_unchanged, file_sha256

    monkeypatch.setattr(make_mini_base, "REPO_ROOT", tmp_path)
    config = tmp_path / "stage.yaml"
    config.write_text("# measured: 1.0 s/step\nmodel:\n  lr: 0.001\n")
    legacy = {"config_sha256": file_sha256(config)}  # an entry from before content digests
    current = {"config_digest": config_digest(config)}
    config.write_text("# measured: 0.9 s/step on idle cores\nmodel:\n  lr: 0.001  # the peak\n")
    assert config_unchanged(current, "stage.yaml") and not config_unchanged(legacy, "stage.yaml")
    config.write_text("model:\n  lr: 0.002\n")
    assert not config_unchanged(current, "stage.yaml")


def test_a_finished_stage_asked_again_keeps_its_entry_and_records_the_new_export(tmp_path, monkeypatch):
    """A config edit that trains nothing (the checkpoint is at max_steps) keeps the weights' entry and
    date, so the stages built on them stay up to date, and says the export was written again."""
    from types import SimpleNamespace

    monkeypatch.setattr(make_mini_base, "REPO_ROOT", tmp_path)
    (tmp_path / "stage.yaml").write_text("model:\n  mask_at: 0.15\n")
    monkeypatch.setattr(make_mini_base, "last_checkpoint_step", lambda config: 6500)
    monkeypatch.setattr(make_mini_base, "git_revision", lambda: "abc123")
    ran = []

    def fake_cli(args):
        ran.append(args)
        return SimpleNamespace(trainer=SimpleNamespace(global_step=6500))

    monkeypatch.setattr(make_mini_base, "PortraitCLI", fake_cli)
    previous = {"date": "2026-11-24T01:48:37+0000", "steps": 6500, "revision": "old", "config_digest": "x"}
    entry = make_mini_base.run_stage("mcdm", "fit", "stage.yaml", [], previous)
    assert ran and ran[0][-1] == "--ckpt_path=last"
    assert {k: entry[k] for k in ("date", "steps", "revision")} == {
        k: previous[k] for k in ("date", "steps", "revision")
    }
    assert entry["config_digest"] != "x" and entry["exported_again"]["revision"] == "abc123"
