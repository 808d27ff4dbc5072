"""tools/slurm/fit.sbatch under a simulated SLURM (srun and scontrol stand-ins, SLURM's environment): the
shipped real-scale config on the tiny preset gets SIGUSR1, Lightning saves an hpc checkpoint into the run
dir and asks for a requeue; the job is killed as SLURM would, and the requeued script resumes that
checkpoint (`ckpt_path: last` finds it) under the same W&B run id."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_run_dir import costume_fit

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_sigusr1_requeue_resumes_the_hpc_checkpoint_with_the_same_wandb_run(tmp_path, world_shards):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    run = tmp_path / "run"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PORTRAIT_EDIT_PYTHON": sys.executable,
        "WANDB_MODE": "offline", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "portrait-edit",
        "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
        "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    }  # fmt: skip
    # No periodic checkpoint before the signal: the hpc one is what a requeue has to find.
    overrides = costume_fit(run, world_shards, 400)[3:] + [
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--checkpoint.every_n_train_steps=100000",
    ]
    command = ["bash", str(ROOT / "tools/slurm/fit.sbatch"), "configs/costume/mcdm.yaml", *overrides]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (run / "config.yaml").is_file(), "the run to start")
        time.sleep(2.0)
        worker = int(subprocess.check_output(["pgrep", "-P", str(first.pid)], text=True).split()[0])
        os.kill(worker, signal.SIGUSR1)  # SLURM's --signal=SIGUSR1@90
        wait_for(lambda: (tmp_path / "scontrol.log").is_file(), "the requeue request")
        wait_for(lambda: list(run.glob("hpc_ckpt_*.ckpt")), "the hpc checkpoint")
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(first.pid)])  # the time limit: killed, no clean exit
        first.kill()
        first.communicate()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = next(run.glob("hpc_ckpt_*.ckpt"))
    hpc_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    env["SLURM_RESTART_COUNT"] = "1"
    overrides = [
        o.replace("--trainer.max_steps=400", f"--trainer.max_steps={hpc_step + 2}") for o in overrides
    ]
    command = ["bash", str(ROOT / "tools/slurm/fit.sbatch"), "configs/costume/mcdm.yaml", *overrides]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {hpc}" in again.stdout + again.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == hpc_step + 2
    run_id = (run / "wandb_id").read_text().strip()
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)
