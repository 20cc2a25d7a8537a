"""DDP on 2 CPU processes from the real entry point (a subprocess: DDP re-launches its command line), with
subprocess-launched workers (`trainer=ddp_sim`) and spawned ones (`trainer=ddp_spawn`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY

BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp_sim", "ddp_spawn trainer.accelerator=cpu"])
def test_two_process_ddp_fit_writes_one_run_directory_with_identical_replicas(tmp_path, trainer):
    run_dir, replicas = tmp_path / "run", tmp_path / "replicas"
    replicas.mkdir()
    overrides = [o for o in TINY if o != "trainer.enable_progress_bar=false"]
    save_replicas = [
        "+callbacks.replicas._target_=tests.signal_helpers.SaveRankWeights",
        f"+callbacks.replicas.directory={replicas}",
    ]
    result = subprocess.run(
        [
            str(BIN / "facelab-train"),
            f"trainer={trainer.split()[0]}",
            *trainer.split()[1:],
            f"hydra.run.dir={run_dir}",
            *overrides,
            *save_replicas,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 8 training faces, batch 4, 2 processes: one batch per process per epoch, 4 optimizer steps each.
    assert checkpoint["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replicas", "run"], (
        "every rank writes into the one run directory"
    )
    assert (run_dir / "val_history.csv").exists()
    rank0, rank1 = (torch.load(replicas / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), f"DDP replicas diverged at {key}"
    trained = {k: v for k, v in checkpoint["state_dict"].items() if k in rank0}
    assert all(torch.equal(v, rank0[k]) for k, v in trained.items()), (
        "the checkpoint holds the replicas' weights"
    )
