"""The resumable checkpoint of a running latent-fit stage (rank-local: each process fits its own items).

Each item's outputs, curves and records are written by the job (facelab/fit/stages.py) once a stage's fit
returns, from the module's final state."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl


class ChunkCheckpoint(pl.Callback):
    """Every `every_n_steps` optimiser steps, `<default_root_dir>/chunk.ckpt` (latents, per-item state,
    optimiser state, curves so far), replaced atomically so that a kill never leaves a torn file to resume
    from. 0 turns it off."""

    def __init__(self, every_n_steps: int = 0):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or step >= trainer.max_steps:
            return  # the last step's state is the result itself, recorded by the job
        path = Path(trainer.default_root_dir) / "chunk.ckpt"
        temp = path.with_name(f".chunk.ckpt.{os.getpid()}.tmp")
        trainer.save_checkpoint(temp)
        os.replace(temp, path)
