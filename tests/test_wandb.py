"""logger=wandb without an API key: an offline run from the real config, and its continuation on resume."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import wandb

from facelab.cli.train import WANDB_RUN_ID_FILE, _prepare_wandb, run_train
from facelab.io.run_id import persistent_run_id
from tests.conftest import compose_config


@pytest.fixture
def offline_wandb():
    """As on a cluster node: no WANDB_API_KEY and no WANDB_MODE. The whole environment is restored after,
    because WandbLogger(offline=True) sets WANDB_MODE process-wide and wandb adds WANDB_SERVICE."""
    if wandb.run is not None:
        wandb.finish()  # a run another test left open would be reused by WandbLogger
    saved = dict(os.environ)
    os.environ.pop("WANDB_API_KEY", None)
    os.environ.pop("WANDB_MODE", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_offline_without_an_api_key_prints_the_sync_command_and_keeps_the_run_id(
    tmp_path, offline_wandb, caplog
):
    run_dir, save_dir = tmp_path / "run", tmp_path / "tracking"
    cfg = compose_config("train", run_dir, ["logger=wandb", f"logger.wandb.save_dir={save_dir}"])
    with caplog.at_level(logging.WARNING, logger="facelab"):
        _prepare_wandb(cfg.logger, run_dir)
    run_id = (run_dir / WANDB_RUN_ID_FILE).read_text()
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.mode == "offline"
    assert cfg.logger.wandb.id == run_id
    assert f"`wandb sync {save_dir}/wandb/offline-run-*`" in caplog.text
    assert save_dir.is_dir(), "save_dir must exist before wandb starts, or wandb writes to /tmp"

    restarted = compose_config("train", run_dir, ["logger=wandb"])  # a requeue lands in the same dir
    _prepare_wandb(restarted.logger, run_dir)
    assert restarted.logger.wandb.id == run_id

    explicit = compose_config("train", tmp_path / "other", ["logger=wandb", "logger.wandb.id=abc123"])
    _prepare_wandb(explicit.logger, tmp_path / "other")
    assert explicit.logger.wandb.id == "abc123"
    assert (tmp_path / "other" / WANDB_RUN_ID_FILE).read_text() == "abc123", "kept for later restarts"

    os.environ["WANDB_API_KEY"] = "x" * 40
    online = compose_config("train", tmp_path / "online", ["logger=wandb"])
    _prepare_wandb(online.logger, tmp_path / "online")
    assert online.logger.wandb.offline is False


def test_the_first_stored_run_id_wins(tmp_path):
    path = tmp_path / "run" / WANDB_RUN_ID_FILE
    first = persistent_run_id(path)
    assert len(first) == 8 and first.isalnum()
    assert persistent_run_id(path, proposed="other") == first, "a later rank or restart reads it back"
    assert [p.name for p in path.parent.iterdir()] == [WANDB_RUN_ID_FILE], "no temp files left behind"


def _offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def _transaction_log(offline_run, run_id: str, needles: list[bytes], timeout_s: float = 60.0) -> bytes:
    """The run's `.wandb` file (what `wandb sync` uploads) once it holds every needle, or as it is at the
    timeout. wandb.finish() only asks wandb's service process to close the run: it writes the file out
    a moment later. Offline, config and history go only into this file (files/config.yaml and
    wandb-summary.json appear when synced); their keys and JSON values are plain bytes in it."""
    path = offline_run / f"run-{run_id}.wandb"
    deadline = time.monotonic() + timeout_s
    while not all(needle in path.read_bytes() for needle in needles) and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.read_bytes()


@pytest.mark.slow
def test_offline_run_records_scalars_images_tables_config_and_resume_continues_it(
    tiny_train_config, tmp_path, offline_wandb
):
    run_dir = tmp_path / "run"
    run_train(tiny_train_config("logger=wandb", output_dir=run_dir))
    run_id = (run_dir / WANDB_RUN_ID_FILE).read_text()
    (first,) = _offline_runs(run_dir)
    assert first.name.endswith(f"-{run_id}")
    resolved_config = [  # a resolved interpolation, and a group the module's hparams do not hold
        f'"dirpath":"{run_dir}/samples"'.encode(),
        b'"_target_":"callbacks.image_grid.ImageGrid"',
    ]
    scalars = [b"train/g_total", b"train/inpaint_g_l1_step", b"val/psnr", b"val/metrics/ssim"]
    transaction_log = _transaction_log(first, run_id, resolved_config + scalars)
    for needle in resolved_config + scalars:
        assert needle in transaction_log, needle

    (image,) = (first / "files" / "media" / "images").rglob("*.png")
    (grid,) = (run_dir / "samples").glob("val_epoch000_*.png")
    assert image.read_bytes() == grid.read_bytes(), "the image grid callback's sample grid"
    (table_file,) = (first / "files" / "media" / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert {"group", "count", "psnr", "ssim", "l1"} <= set(table["columns"])
    assert table["data"][0][:1] == ["overall"] and table["data"][0][table["columns"].index("count")] == 8

    run_train(tiny_train_config("logger=wandb", "trainer.max_epochs=2", "ckpt_path=last", output_dir=run_dir))
    runs = _offline_runs(run_dir)
    # Each start is a folder holding run-<id>.wandb (wandb adds "-1" to the folder name when both start in
    # the same second); the same id in both is the same run, continued.
    assert len(runs) == 2, "one offline folder per start"
    assert all((r / f"run-{run_id}.wandb").exists() for r in runs), "the same run, continued"
    assert (run_dir / WANDB_RUN_ID_FILE).read_text() == run_id
    assert b"val/psnr" in _transaction_log(runs[1], run_id, [b"val/psnr"])
    (image,) = (runs[1] / "files" / "media" / "images").rglob("*.png")
    (grid,) = (run_dir / "samples").glob("val_epoch001_*.png")
    assert image.read_bytes() == grid.read_bytes(), "the resumed fit's epoch 1 grid, logged to the same run"
