"""DDP on 2 CPU processes from the real entry point (a subprocess: DDP re-launches its command line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_two_process_ddp_fit_writes_one_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if o != "trainer.enable_progress_bar=false"]
    result = subprocess.run(
        [str(BIN / "facelab-train"), "trainer=ddp_sim", f"hydra.run.dir={run_dir}", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 8 training faces, batch 4, 2 processes: one batch per process per epoch, 4 optimizer steps each.
    assert checkpoint["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], (
        "every rank writes into the one run directory"
    )
    assert (run_dir / "val_history.csv").exists()
