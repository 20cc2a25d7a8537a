"""Submitting to the local Slurm (slurm/local/up.sh) and waiting for jobs, for the `slurm` tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The sbatch templates ask for GPUs; on the local CPU-only Slurm the tests ask for none, one CPU per task.
CPU_ONLY = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=3G"]
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def require_slurm() -> None:
    """`make test` starts the local Slurm when it can (root + apt); without sbatch these tests cannot run."""
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.skip("no Slurm here: start one with `make slurm-up` (needs root and apt)")


def job_env(**extra: str) -> dict:
    """The submitting environment (sbatch exports it): the repo's venv first, tests importable, 1 thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), WANDB_MODE="disabled", **extra)
    env["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}:{env['PATH']}"
    env.pop("SLURM_JOB_ID", None)
    return env


def sbatch(args: list[str], env: dict | None = None, cwd: Path = REPO_ROOT) -> str:
    result = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, env=env or job_env(), cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_field(job_id: str, field: str) -> str | None:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", shown)
    return match.group(1) if match else None


def wait_for_job(job_id: str, timeout: float = 600) -> str:
    """Wait until the job (or every task of an array) has finished; returns the last state seen. squeue
    must answer and show nothing twice in a row: a loaded slurmctld can time out (no output), and a
    requeued task passes through states between its runs."""
    deadline, empty_answers = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        answer = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
        empty_answers = empty_answers + 1 if answer.returncode == 0 and not answer.stdout.split() else 0
        if empty_answers == 2:
            return job_field(job_id, "JobState") or "GONE"
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise TimeoutError(f"Slurm job {job_id} did not finish within {timeout} s")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def start_requeued_job_now(job_id: str, timeout: float = 120) -> None:
    """Slurm holds a requeued job (PENDING, reason BeginTime) for about two minutes; start it after a few
    seconds instead, so the tests do not wait. Not at once: slurmd rejects a launch credential issued in
    the same second as the previous run's revoked one ("Job credential revoked"), which fails the job."""

    def pending() -> bool:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
        return "PENDING" in state.stdout

    wait_for(pending, timeout, f"{job_id} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+5"], check=True)
