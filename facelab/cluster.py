"""Slurm facts the entry points and callbacks share: job identity, requeue, and which checkpoint a restarted
run continues from. Pure Python (no Lightning), so `facelab.cli` can use it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")  # Lightning's name, which its Slurm auto-resume scans


class Preempted(Exception):
    """The fit saved its state on a preemption signal and stopped; a requeued or restarted run resumes."""

    def __init__(self, checkpoint: Path, requeued: bool):
        self.checkpoint, self.requeued = checkpoint, requeued
        then = "Slurm requeued the job" if requeued else "restart with ckpt_path=last to continue"
        super().__init__(f"Preempted: saved {checkpoint}; {then}.")


def process_rank() -> int:
    """This process's global rank as the launcher set it (Lightning's DDP workers, srun tasks); 0 alone."""
    for variable in ("RANK", "SLURM_PROCID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> None:
    """Put the job back in the queue (same job id, hence the same run directory)."""
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`scontrol requeue {job_id}` failed ({result.stderr.strip()}); the state is saved, resubmit the "
            "job with the same run directory (hydra.run.dir=...) and ckpt_path=last."
        )


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """The preemption checkpoints in a run directory, oldest first."""
    numbered = [(HPC_CHECKPOINT.match(p.name), p) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt")]
    return [path for _, path in sorted((int(match.group(1)), path) for match, path in numbered if match)]


def next_hpc_checkpoint(run_dir: Path) -> Path:
    existing = hpc_checkpoints(run_dir)
    number = int(HPC_CHECKPOINT.match(existing[-1].name).group(1)) + 1 if existing else 1
    return Path(run_dir) / f"hpc_ckpt_{number}.ckpt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """What `ckpt_path=last` continues from: the newer of checkpoints/last.ckpt (end of an epoch) and the
    newest preemption checkpoint (mid-epoch), by modification time."""
    newest_hpc = hpc_checkpoints(run_dir)[-1:]
    candidates = [p for p in [Path(run_dir) / "checkpoints" / "last.ckpt", *newest_hpc] if p.exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None
