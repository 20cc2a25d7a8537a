"""slurm/train.sbatch on the local Slurm (slurm/local/up.sh): 2-task DDP on CPU from the real entry point,
and a job preempted with SIGUSR1 mid-epoch that requeues itself and finishes bit-identical to an
uninterrupted job of the same config."""

from __future__ import annotations

import random
import subprocess

import pytest
import torch

from tests.conftest import TINY
from tests.slurm_helpers import (
    CPU_ONLY,
    REPO_ROOT,
    require_slurm,
    sbatch,
    start_requeued_job_now,
    wait_for,
    wait_for_job,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 32 faces, batch 4, 2 ranks: 4 batches per rank per epoch, 2 epochs, 4 optimizer steps per batch.
BATCHES_PER_EPOCH = 4
OVERRIDES = [
    *[o for o in TINY if not o.startswith("trainer.max_epochs")],
    "data.faces.train_length=32",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
]


def _submit_training(log_dir, *extra: str) -> str:
    return sbatch(
        [
            *CPU_ONLY,
            "--ntasks-per-node=2",
            f"--output={log_dir}/slurm-%j.out",
            "slurm/train.sbatch",
            f"paths.log_dir={log_dir}",
            *OVERRIDES,
            *extra,
        ]
    )


def _run_dir(log_dir, job_id):
    return log_dir / "train" / "runs" / job_id


def _last(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One plain 2-task DDP job: the reference every other job here is compared with."""
    require_slurm()
    log_dir = tmp_path_factory.mktemp("uninterrupted")
    job_id = _submit_training(log_dir)
    state = wait_for_job(job_id)
    output = (log_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", output[-4000:]
    return job_id, _run_dir(log_dir, job_id), output


def test_two_task_ddp_job_writes_checkpoints_and_metrics(uninterrupted):
    job_id, run_dir, output = uninterrupted
    assert "2 node(s) x" not in output and "1 node(s) x 2 task(s)" in output
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output, "Lightning saw two ranks from srun"
    checkpoint = _last(run_dir)
    assert checkpoint["global_step"] == 2 * BATCHES_PER_EPOCH * 4, "each rank trained its half of the data"
    history = (run_dir / "val_history.csv").read_text().splitlines()
    assert len(history) == 1 + 2, "one validation row per epoch"
    assert (run_dir / "final_metrics.json").exists()
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [job_id], (
        "one run directory, keyed on the job id"
    )


def test_sigusr1_mid_epoch_requeues_and_resumes_exactly(uninterrupted, tmp_path):
    _, reference_dir, _ = uninterrupted
    epoch, batch = random.randrange(2), random.randrange(BATCHES_PER_EPOCH - 1)  # never the last: mid-epoch
    progress = tmp_path / "progress.txt"
    job_id = _submit_training(
        tmp_path,
        "+callbacks.progress._target_=tests.signal_helpers.ReportProgress",
        f"+callbacks.progress.path={progress}",
        "+callbacks.progress.delay=1.5",
    )
    target = f"{epoch} {batch}"
    wait_for(
        lambda: progress.exists() and target in progress.read_text().splitlines(), 300, f"batch {target}"
    )
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    start_requeued_job_now(job_id)
    state = wait_for_job(job_id)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", output[-4000:]

    run_dir = _run_dir(tmp_path, job_id)
    assert "restart 1" in output, "the job was requeued and ran again under the same id"
    (saved,) = run_dir.glob("hpc_ckpt_*.ckpt")
    position = torch.load(saved, map_location="cpu", weights_only=False)["InpaintingDataModule"]
    assert position == {"epoch": epoch, "batches_done": batch + 1}, f"saved after batch {target}, mid-epoch"
    seen = progress.read_text().splitlines()
    assert seen.count(target) == 1 and seen[-1] == f"1 {BATCHES_PER_EPOCH - 1}", (
        "no batch repeated or skipped"
    )
    assert len(seen) == 2 * BATCHES_PER_EPOCH

    expected, got = _last(reference_dir), _last(run_dir)
    assert got["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs from the uninterrupted job"
    assert (run_dir / "final_metrics.json").exists()
    assert not (REPO_ROOT / "logs" / "train" / "runs" / job_id).exists()
