"""slurm/fit_array.sbatch on the local one-node Slurm (`make slurm-up`): a job array over a manifest with one
task SIGKILLed mid-item and submitted again alone, and one task requeued by the preemption signal; every item
ends up fitted exactly once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from facelab.fit.records import FitRecords, chunk_key
from tests.slurm_helpers import (
    CPU_ONLY,
    REPO_ROOT,
    job_env,
    require_slurm,
    sbatch,
    start_requeued_job_now,
    wait_for,
    wait_for_job,
)
from tests.test_fit_items import make_faces
from tests.test_fit_job import event_counts, snapshot

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = str(REPO_ROOT / "slurm" / "fit_array.sbatch")
STEPS = 3000


def _submit(folder: Path, array: str, *overrides: str) -> str:
    """An array over `folder`/faces into `folder`/out, one item per chunk, checkpointed every 20 steps."""
    job = [f"manifest={folder / 'faces'}", f"output_dir={folder / 'out'}", "batch_size=1"]
    job += ["checkpoint_every_n_steps=20", "extras.print_config=false"]
    resources = [*CPU_ONLY, "--time=00:10:00", f"--output={folder}/slurm-%A_%a.out", f"--array={array}"]
    return sbatch([*resources, SCRIPT, *job, *overrides], env=job_env(), cwd=folder)


def stage_record(out: Path, item_id: str) -> dict:
    return json.loads((out / "stages" / item_id / "coarse.json").read_text())


def _logs(folder: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("slurm-*.out")))


def test_array_task_killed_mid_item_and_resubmitted_fits_every_item_exactly_once(tmp_path):
    require_slurm()
    make_faces(tmp_path / "faces", 6)
    out = tmp_path / "out"
    array_job = _submit(tmp_path, "0-2", "fit.module.stages.coarse.steps=300")  # 3 shards of 2 items
    task_1_first_item = (
        out / "partial" / chunk_key(["face1"], "coarse") / "chunk.ckpt"
    )  # rank 1 of 3: face1, face4
    wait_for(task_1_first_item.exists, 600, "task 1's first checkpoint")
    subprocess.run(["scancel", "--signal=KILL", f"{array_job}_1"], check=True)
    wait_for_job(array_job)
    assert FitRecords(out).done_ids() == {"face0", "face2", "face3", "face5"}, _logs(tmp_path)
    before = snapshot(out)

    rerun_job = _submit(
        tmp_path, "1", "fit.module.stages.coarse.steps=300", "shard.world=3"
    )  # task 1 alone, still 1 of 3
    wait_for_job(rerun_job)
    logs = _logs(tmp_path)

    ids = [f"face{index}" for index in range(6)]
    assert FitRecords(out).done_ids() == set(ids), logs
    after = snapshot(out)
    assert {name: after[name] for name in before} == before  # the other tasks' items were not redone
    assert event_counts(out, "done") == dict.fromkeys(ids, 1), logs  # each item recorded once
    starts = event_counts(out, "start", "coarse")
    assert starts == {**dict.fromkeys(ids, 1), "face1": 2}  # only the killed one twice
    killed = FitRecords(out).read_record("face1")
    assert (
        killed["slurm_array_task_id"] == "1" and killed["attempt"] == 2 and killed["steps"]["coarse"] == 300
    )
    assert Path(stage_record(out, "face1")["resumed_from"]).name == "chunk.ckpt"
    job_of = {item_id: FitRecords(out).read_record(item_id)["slurm_array_job_id"] for item_id in ids}
    assert job_of == {**dict.fromkeys(ids, array_job), "face1": rerun_job, "face4": rerun_job}
    assert list(out.glob("partial/*")) == []


def test_preemption_signal_requeues_the_task_which_resumes_its_chunk(tmp_path):
    require_slurm()
    make_faces(tmp_path / "faces", 4)
    out = tmp_path / "out"
    # A long item (seconds even on an idle machine): the signal lands inside its fit, not after it.
    array_job = _submit(tmp_path, "0-1", f"fit.module.stages.coarse.steps={STEPS}")
    wait_for(
        (out / "partial" / chunk_key(["face0"], "coarse") / "chunk.ckpt").exists,
        600,
        "task 0's first checkpoint",
    )
    # what `#SBATCH --signal=SIGUSR1@90` sends before the time limit
    subprocess.run(["scancel", "--signal=USR1", f"{array_job}_0"], check=True)
    start_requeued_job_now(f"{array_job}_0")
    wait_for_job(array_job)
    logs = _logs(tmp_path)

    ids = ["face0", "face1", "face2", "face3"]
    assert FitRecords(out).done_ids() == set(ids), logs
    assert event_counts(out, "done") == dict.fromkeys(ids, 1), logs
    assert event_counts(out, "start", "coarse") == {**dict.fromkeys(ids, 1), "face0": 2}, logs
    preempted = FitRecords(out).read_record("face0")
    assert preempted["slurm_restart_count"] == "1" and preempted["slurm_array_job_id"] == array_job, logs
    assert Path(stage_record(out, "face0")["resumed_from"]).name.startswith("hpc_ckpt_"), logs
    assert preempted["steps"]["coarse"] == STEPS, logs
    assert "requeueing Slurm job" in logs
