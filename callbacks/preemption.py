"""Save-and-requeue on a preemption signal, at a batch boundary every rank agrees on.

Slurm sends SIGUSR1 before a time limit or preemption (`#SBATCH --signal=SIGUSR1@90`), and a user can send it
with `scancel --signal=USR1 <job>`. Lightning's own Slurm handler saves from inside the signal handler, i.e.
possibly between this GAN's D and G updates and with DDP ranks at different batches. Here the handler only
raises a flag; after the current batch the ranks agree (any rank flagged = all stop), save
`<run dir>/hpc_ckpt_N.ckpt` (the name Lightning's Slurm auto-resume looks for), requeue the job under Slurm
and leave the fit with `facelab.cluster.Preempted`. With the datamodule's position in the checkpoint, the
requeued fit continues with the very next batch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytorch_lightning as pl

from facelab.cluster import Preempted, hpc_checkpoints, next_hpc_checkpoint, requeue_slurm_job, slurm_job_id

log = logging.getLogger("facelab")


class SaveOnPreemption(pl.Callback):
    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, keep_last: int = 1):
        self.signum = signal.Signals[signal_name]
        self.requeue, self.keep_last = requeue, keep_last
        self._signalled = False
        self._previous_handler = None

    def _on_signal(self, signum, frame) -> None:
        self._signalled = True  # act at the next batch boundary, never inside an optimiser step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Registered after Lightning's own handlers (set up before this hook), so this one is in charge.
        if threading.current_thread() is threading.main_thread():
            self._signalled = False
            self._previous_handler = signal.signal(self.signum, self._on_signal)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        run_dir = trainer.default_root_dir
        path = next_hpc_checkpoint(run_dir)  # every rank names it before rank 0 adds the file
        staging = path.with_name("preemption-save.partial")  # no "hpc_ckpt_" in it: never resumed from
        trainer.save_checkpoint(staging)
        if trainer.is_global_zero:
            os.replace(staging, path)
            for old in hpc_checkpoints(run_dir)[: -self.keep_last]:
                old.unlink(missing_ok=True)
        # Requeue only once every rank is past the save: Slurm then terminates the job's tasks at once.
        trainer.strategy.barrier("preemption-save")
        job_id = slurm_job_id() if self.requeue else None
        if job_id is not None and trainer.is_global_zero:
            log.warning("Preemption signal: saved %s, requeueing Slurm job %s.", path, job_id)
            requeue_slurm_job(job_id)
        elif job_id is None and trainer.is_global_zero:
            log.warning("Preemption signal: saved %s and stopped (ckpt_path=last continues).", path)
        raise Preempted(path, requeued=job_id is not None)
