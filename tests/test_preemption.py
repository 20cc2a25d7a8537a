"""Preemption without Slurm: SIGUSR1 mid-epoch saves at the batch boundary, and a restart with ckpt_path=last
continues so exactly that the final weights equal an uninterrupted fit's."""

from __future__ import annotations

import pytest
import torch

from facelab.cli.train import run_train
from facelab.cluster import hpc_checkpoints, latest_checkpoint

# 16 training faces in batches of 4: 4 batches per epoch, 4 optimizer steps per batch.
TWO_EPOCHS = ["data.faces.train_length=16", "trainer.max_epochs=2"]


def _fit(make_config, run_dir, *overrides):
    return run_train(make_config(*TWO_EPOCHS, *overrides, output_dir=run_dir))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize(("epoch", "batch"), [(0, 1), (1, 2)])
def test_signal_mid_epoch_then_restart_equals_an_uninterrupted_fit(tiny_train_config, tmp_path, epoch, batch):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _fit(tiny_train_config, straight)
    signal_at = [
        "+callbacks.signal._target_=tests.signal_helpers.SendSignalAt",
        f"+callbacks.signal.epoch={epoch}",
        f"+callbacks.signal.batch={batch}",
    ]
    assert _fit(tiny_train_config, interrupted, *signal_at) is None, "a preempted fit reports no metric"
    (saved,) = hpc_checkpoints(interrupted)
    assert latest_checkpoint(interrupted) == saved
    state = _weights(saved)
    assert state["global_step"] == (epoch * 4 + batch + 1) * 4, "saved after the signalled batch, not later"
    assert state["InpaintingDataModule"] == {"epoch": epoch, "batches_done": batch + 1}
    assert not (interrupted / "final_metrics.json").exists(), "a preempted fit is not a finished one"

    _fit(tiny_train_config, interrupted, "ckpt_path=last")
    expected, got = (
        _weights(straight / "checkpoints" / "last.ckpt"),
        _weights(interrupted / "checkpoints" / "last.ckpt"),
    )
    assert got["global_step"] == expected["global_step"] == 2 * 4 * 4
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs after the mid-epoch resume"
    assert (interrupted / "final_metrics.json").exists()


def test_latest_checkpoint_prefers_the_newest_file(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"epoch end")
    assert latest_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_2.ckpt"
    hpc.write_bytes(b"mid epoch")
    (tmp_path / "preemption-save.partial").write_bytes(b"torn write")
    assert latest_checkpoint(tmp_path) == hpc
    last.write_bytes(b"a later epoch end")
    import os

    os.utime(last, ns=(hpc.stat().st_mtime_ns + 10**9,) * 2)
    assert latest_checkpoint(tmp_path) == last
    assert hpc_checkpoints(tmp_path) == [hpc]
