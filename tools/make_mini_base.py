"""Train and ship the mini world's base models (`make mini-base`): the stand-ins for the pretrained Stable
Diffusion, CLIP and OpenPose ControlNet of the paper, trained by the project's own configs.

Stages, in order (each a `portrait-edit` command you can also run by hand; each `fit` config writes its
trained part into data/mini/ at the end of fit through its system's `export_dir`):
 1. pairs       predict configs/mini/base_pairs.yaml        the training images (world pairs -> shards)
 2. vae         fit configs/mini/base_vae.yaml              -> data/mini/vae/
 3. clip        fit configs/mini/base_clip.yaml             -> data/mini/{text_encoder,image_encoder,tokenizer}/
 4. classifier  fit configs/mini/base_classifier.yaml       -> data/mini/classifier/
 5. probe       fit configs/mini/base_probe.yaml            -> data/mini/probe/  (nose position reader)
 6. unet        fit configs/mini/base_unet.yaml             -> data/mini/unet/  (uses the VAE and text encoder)
 7. controlnet  fit configs/mini/base_controlnet.yaml       -> data/mini/controlnet/  (uses the UNet)
 8. identity    fit configs/mini/identity.yaml              -> data/mini/identity_encoder/  (stage 1)
 9. generate    predict configs/mini/generate.yaml          -> data/mini/pairs/  (stage 2: 2000 pairs)
Then the scheduler config is copied and `data/mini/manifest.json` records, per stage, the command, the
config and its sha256, the git revision, steps, wall time and final metrics.

Resumable: a stage whose manifest entry matches its config's content (comments do not count) is skipped; a `fit` whose config changed
or that was interrupted resumes from its `last.ckpt` (fixed run directory: more steps continue where the
last run ended). `--force STAGE` retrains one stage from scratch (its old checkpoints are moved aside), as
a change of architecture needs. A stage whose inputs were remade (USES: a new VAE or text encoder means a
new UNet, a new UNet a new ControlNet) is retrained from scratch too; an interruption of that retraining
resumes (its checkpoint folder records the inputs it started from). A `predict` stage resumes only shards
made by the same config from the same inputs (its output folder records them); otherwise its old shards are
moved aside and it starts over.

    python tools/make_mini_base.py [--force unet] [--only vae clip]
    python tools/make_mini_base.py --fit-args "--trainer.accelerator=gpu --trainer.precision=bf16-mixed"
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from portrait_edit import run_dir
from portrait_edit.atomic import atomic_write_json
from portrait_edit.cli import PortraitCLI
from portrait_edit.paths import DATA_DIR, PRESETS_DIR, REPO_ROOT
from portrait_edit.revision import git_revision

STAGES = (
    ("pairs", "predict", "configs/mini/base_pairs.yaml"),
    ("vae", "fit", "configs/mini/base_vae.yaml"),
    ("clip", "fit", "configs/mini/base_clip.yaml"),
    ("classifier", "fit", "configs/mini/base_classifier.yaml"),
    ("probe", "fit", "configs/mini/base_probe.yaml"),
    ("unet", "fit", "configs/mini/base_unet.yaml"),
    ("controlnet", "fit", "configs/mini/base_controlnet.yaml"),
    ("identity", "fit", "configs/mini/identity.yaml"),  # stage 1's identity encoder, over all of the above
    ("generate", "predict", "configs/mini/generate.yaml"),  # stage 2: the MCDM's 2000 training pairs
    ("generate_val", "predict", "configs/mini/generate_val.yaml"),  # its 1000 validation pairs (outputs/)
    ("mcdm", "fit", "configs/mini/mcdm.yaml"),  # stage 3: the MCDM, exported to data/mini/mcdm/
)


# What each stage's models are trained on: a stage remade outdates the stages that use it.
USES = {
    "vae": ("pairs",), "clip": ("pairs",), "classifier": ("pairs", "vae"), "probe": ("pairs",),
    "unet": ("pairs", "vae", "clip"), "controlnet": ("pairs", "unet"),
    "identity": ("vae", "clip", "unet", "controlnet"),
    "generate": ("vae", "clip", "unet", "controlnet", "identity"),
    "generate_val": ("vae", "clip", "unet", "controlnet", "identity"),
    "mcdm": ("vae", "clip", "unet", "generate"),  # the validation pairs only feed val/ logs, not the weights
}  # fmt: skip


def config_digest(path: Path) -> str:
    """sha256 of a YAML config's parsed content (canonical JSON): comments and layout do not count."""
    data = yaml.safe_load(path.read_text())
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def config_unchanged(done: dict, config: str) -> bool:
    """Whether a stage entry was made with this config's content (older entries: the file's bytes)."""
    path = REPO_ROOT / config
    if "config_digest" in done:
        return done["config_digest"] == config_digest(path)
    return done.get("config_sha256") == file_sha256(path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metrics_of(trainer) -> dict[str, float]:
    """The last logged scalar metrics (validation figures included) as plain floats."""
    return {k: round(float(v), 6) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}


def finish_wandb_run() -> None:
    """Close the W&B run a stage's WandbLogger opened. Lightning leaves it open after fit, and wandb.init
    in the same process then hands back that run: every later stage would log into the first one's."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def callback_folder(config: str, callback: str, argument: str) -> Path | None:
    """The folder argument `argument` of the config's first trainer callback named `callback`, or None."""
    data = yaml.safe_load((REPO_ROOT / config).read_text())
    for entry in (data.get("trainer") or {}).get("callbacks") or []:
        if entry.get("class_path", "").endswith(callback):
            return REPO_ROOT / entry["init_args"][argument]
    return None


def checkpoint_dir(config: str) -> Path | None:
    """Where a fit config's checkpoints go (`<trainer.default_root_dir>/checkpoints`, where
    `--ckpt_path=last` looks), or None for a config without a run dir."""
    root = (yaml.safe_load((REPO_ROOT / config).read_text()).get("trainer") or {}).get("default_root_dir")
    return run_dir.checkpoint_dir(REPO_ROOT / root) if root else None


def last_checkpoint_step(config: str) -> int | None:
    """The global step of the `last.ckpt` a fit config resumes from, or None."""
    folder = checkpoint_dir(config)
    if folder is None or not (folder / "last.ckpt").is_file():
        return None
    return int(torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])


def output_dir(config: str) -> Path | None:
    """The ShardWriter output_dir of a predict config (where its shards go), or None."""
    return callback_folder(config, "ShardWriter", "output_dir")


def set_aside(folder: Path | None, what: str) -> None:
    """Move a folder to `<folder>.old-<time>` so its stage starts from scratch (kept, not deleted, in case
    it is wanted)."""
    if folder is not None and folder.is_dir():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = folder.with_name(f"{folder.name}.old-{stamp}")
        for n in range(2, 1000):  # two set-asides within a second get distinct names
            if not target.exists():
                break
            target = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
        folder.rename(target)
        print(f"=== moved the old {what} to {target}", flush=True)


@contextlib.contextmanager
def manifest_lock(path: Path):
    """An exclusive lock beside the manifest: two runs of different stages (e.g. `--only classifier` while
    the UNet trains) may both record their stage."""
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def record_stage(path: Path, name: str, entry: dict) -> dict:
    """Write one stage's entry into the manifest on disk (re-read under the lock, so entries that other
    runs wrote meanwhile are kept); returns the manifest as written."""
    with manifest_lock(path):
        manifest = read_manifest(path)
        manifest["stages"][name] = entry
        atomic_write_json(path, manifest)
    return manifest


def inputs_of(manifest: dict, name: str) -> dict[str, str | None]:
    """The manifest dates of the stages `name` is trained on (USES): what its models were made from."""
    return {used: manifest["stages"].get(used, {}).get("date") for used in USES.get(name, ())}


def outdated(done: dict, inputs: dict[str, str | None]) -> list[str]:
    """The stages among `inputs` that were remade after the stage entry `done` was trained ([] when it has
    no entry). Entries record their inputs; older ones without them are compared by date."""
    if not done:
        return []
    recorded = done.get("inputs")
    if recorded is not None:
        return [used for used, date in inputs.items() if recorded.get(used) != date]
    return [used for used, date in inputs.items() if date and date > done.get("date", "")]


def prepare_run_dir(config: str, inputs: dict[str, str | None], force: bool, stale: bool) -> None:
    """Get a fit stage's checkpoint folder ready: a --force'd stage starts from scratch (old checkpoints set
    aside); an outdated one too, unless its checkpoints were started from these same inputs (an interrupted
    retraining, which resumes). The inputs are recorded next to the checkpoints (`inputs.json`)."""
    folder = checkpoint_dir(config)
    if folder is None:
        return
    marker = folder / "inputs.json"
    same = marker.is_file() and json.loads(marker.read_text()) == inputs
    if force or (stale and not same):
        set_aside(folder, "checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, inputs)


def prepare_output_dir(config: str, inputs: dict[str, str | None], force: bool) -> None:
    """Get a predict stage's shard folder ready. The writer skips complete shards (an interrupted run
    resumes), so shards made by another config or from other inputs must not stay: the folder records what
    its shards were made from (`.made_from.json`: the config's digest and the inputs), and a folder made
    from anything else, or of unknown origin, or a --force'd stage's, is set aside first."""
    folder = output_dir(config)
    if folder is None:
        return
    made_from = {"config_digest": config_digest(REPO_ROOT / config), "inputs": inputs}
    marker = folder / ".made_from.json"
    same = marker.is_file() and json.loads(marker.read_text()) == made_from
    if folder.is_dir() and any(folder.iterdir()) and (force or not same):
        set_aside(folder, "shards")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, made_from)


def run_stage(name: str, subcommand: str, config: str, extra: list[str], previous: dict) -> dict:
    """Run one stage in-process (with `extra` command-line overrides); returns its manifest entry.

    A fit that resumes from its run dir's last.ckpt (an interrupted run, or more steps asked of a finished
    one) records the step it resumed from, and adds the previous entry's wall time to its own in
    `wall_time_total_s` (the previous entry's time counts only when it made that checkpoint)."""
    resumed = last_checkpoint_step(config) if subcommand == "fit" else None
    args = [subcommand, "--config", str(REPO_ROOT / config), *extra]
    if subcommand == "fit":
        args.append("--ckpt_path=last")  # resume from the fixed run dir's last.ckpt if there is one
    print(f"\n=== {name}: portrait-edit {' '.join(args)}", flush=True)
    start = time.time()
    try:
        cli = PortraitCLI(args=args)
    finally:
        finish_wandb_run()
    wall = time.time() - start
    if subcommand == "fit" and resumed is not None and cli.trainer.global_step == resumed and previous:
        # Nothing was trained (the checkpoint was already at max_steps, e.g. after a comment edit): the
        # weights are the previous entry's, so is its date (stages built on them stay up to date). The
        # export was written again (with the config's export settings): when and by which revision.
        return {
            **previous,
            "config_sha256": file_sha256(REPO_ROOT / config),
            "config_digest": config_digest(REPO_ROOT / config),
            "exported_again": {"revision": git_revision(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        }
    entry = {
        "command": "portrait-edit " + " ".join(args).replace(str(REPO_ROOT) + os.sep, ""),
        "config": config,
        "config_sha256": file_sha256(REPO_ROOT / config),
        "config_digest": config_digest(REPO_ROOT / config),
        "revision": git_revision(),
        "wall_time_s": round(wall, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if subcommand == "fit":
        entry.update(steps=cli.trainer.global_step, metrics=metrics_of(cli.trainer))
    before = previous.get("wall_time_total_s", previous.get("wall_time_s", 0.0)) if resumed else 0.0
    if resumed is not None and previous.get("steps") != resumed:
        before = None  # the checkpoint came from a run the manifest does not describe: its time is unknown
    entry.update(resumed_from_step=resumed, wall_time_before_s=before)
    entry["wall_time_total_s"] = round(wall + before, 1) if before is not None else None
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(DATA_DIR / "mini"), help="where the models go (default data/mini)"
    )
    parser.add_argument(
        "--force", nargs="*", default=[], help="stages to redo even if their manifest matches"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these stages")
    parser.add_argument("--fit-args", default="", help="overrides for every fit stage, e.g. the accelerator")
    parser.add_argument("--predict-args", default="", help="overrides for the predict stage(s)")
    args = parser.parse_args(argv)
    names = [s[0] for s in STAGES]
    for given in (*args.force, *(args.only or [])):
        if given not in names:
            raise SystemExit(f"unknown stage {given!r}; stages are {names}")
    out = DATA_DIR / "mini"
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = read_manifest(manifest_path)
    extra = {"fit": shlex.split(args.fit_args), "predict": shlex.split(args.predict_args)}
    total = time.time()
    for name, subcommand, config in STAGES:
        if args.only is not None and name not in args.only:
            continue
        done = manifest["stages"].get(name, {})
        inputs = inputs_of(manifest, name)
        stale = outdated(done, inputs)
        if stale:
            print(f"=== {name}: {', '.join(stale)} changed since it was trained; retraining it")
        elif name not in args.force and config_unchanged(done, config):
            if "config_digest" not in done:  # an older entry: record the content digest of its config
                manifest = record_stage(
                    manifest_path, name, {**done, "config_digest": config_digest(REPO_ROOT / config)}
                )
            print(f"=== {name}: up to date ({done.get('revision', '?')}), skipped; --force {name} to redo")
            continue
        if subcommand == "fit":
            prepare_run_dir(config, inputs, force=name in args.force, stale=bool(stale))
        else:
            prepare_output_dir(config, inputs, force=name in args.force)
        entry = {**run_stage(name, subcommand, config, extra[subcommand], done), "inputs": inputs}
        manifest = record_stage(
            manifest_path, name, entry
        )  # after every stage: an interruption loses nothing
    shutil.copytree(PRESETS_DIR / "mini" / "scheduler", out / "scheduler", dirs_exist_ok=True)
    with manifest_lock(manifest_path):
        manifest = read_manifest(manifest_path)
        manifest.update(
            made_by="make mini-base (tools/make_mini_base.py)",
            torch=torch.__version__,
            total_wall_time_s=round(
                sum(
                    s.get("wall_time_total_s") or s.get("wall_time_s", 0) for s in manifest["stages"].values()
                ),
                1,
            ),
        )
        atomic_write_json(manifest_path, manifest)
    print(f"\nmini base models in {out} ({time.time() - total:.0f} s this run); manifest: {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
