"""`facelab-train -m hydra/launcher=slurm ...` on the local Slurm: one job per value through submitit, all
finish, and the launching command writes one summary table of the runs' final metrics."""

from __future__ import annotations

import csv
import subprocess

import pytest

from tests.conftest import TINY
from tests.slurm_helpers import REPO_ROOT, job_env, require_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_submitit_multirun_runs_one_job_per_value_and_writes_one_summary(tmp_path):
    require_slurm()
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [
            str(REPO_ROOT / ".venv" / "bin" / "facelab-train"),
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=3",
            "hydra.launcher.timeout_min=20",
            f"hydra.sweep.dir={sweep_dir}",
            "model/guide=hog,none",
            "trainer.accelerator=cpu",
            *TINY,
        ],
        capture_output=True,
        text=True,
        env=job_env(),
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    job_logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    job_ids = {log.parent.name for log in job_logs}
    assert len(job_ids) == 2, f"one Slurm job per value, got {job_ids}"
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [row["model/guide"] for row in rows] == ["hog", "none"]
    assert all(row["status"] == "done" for row in rows)
    for row in rows:
        assert 0 < float(row["val/psnr"]) < 100, row
    assert "model/guide" in (sweep_dir / "summary.md").read_text().splitlines()[0]
