"""Test-only callbacks: signal a fit at a chosen batch, report progress, save each rank's weights."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SendSignalAt(pl.Callback):
    def __init__(self, epoch: int, batch: int, signal_name: str = "SIGUSR1"):
        self.epoch, self.batch, self.signum = epoch, batch, signal.Signals[signal_name]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


class ReportProgress(pl.Callback):
    """Rank 0 writes `<epoch> <batch>` to a file as each batch starts; every rank then waits `delay` seconds,
    so a test watching the file can signal a job in the middle of a chosen batch."""

    def __init__(self, path: str, delay: float = 1.0):
        self.path, self.delay = path, delay

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        import time

        if trainer.global_rank == 0:
            with open(self.path, "a") as file:
                file.write(f"{trainer.current_epoch} {batch_idx}\n")
        time.sleep(self.delay)


class SaveRankWeights(pl.Callback):
    """At the end of training every rank saves its own copy of the weights to `<dir>/rank<r>.pt`, so a test
    can check that DDP kept the replicas identical."""

    def __init__(self, directory: str):
        self.directory = directory

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        torch.save(pl_module.state_dict(), f"{self.directory}/rank{trainer.global_rank}.pt")
