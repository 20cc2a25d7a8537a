"""Callbacks of a latent-fit chunk: its items' outputs and done records, and its resumable checkpoints.

Both are rank-local on purpose: each process fits its own items, so each writes its own files (no
`rank_zero_only`, no gathering).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl

from facelab.fit.records import FitRecords


class FitOutputs(pl.Callback):
    """At the end of a chunk's fit: each item's outputs, then its done record (final losses, steps, time)."""

    def __init__(self, output_dir: str):
        self.records = FitRecords(output_dir)
        self.started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batch = pl_module.transfer_batch_to_device(trainer.datamodule.batch, pl_module.device, 0)
        outputs, losses = pl_module.final_results(batch)
        seconds = time.perf_counter() - self.started
        item_ids = list(batch["meta"]["item_id"])
        attempts = self.records.start_counts()
        for index, item_id in enumerate(item_ids):
            files = self.records.write_outputs(
                item_id, {name: value[index] for name, value in outputs.items()}, pl_module.image_outputs
            )
            self.records.write_done(
                item_id,
                {
                    "losses": {name: float(value[index]) for name, value in losses.items()},
                    "steps": trainer.global_step,
                    "fit_seconds": round(seconds, 3),  # this attempt's time for the whole chunk
                    "chunk": item_ids,
                    "attempt": attempts[item_id],
                    "resumed_from": trainer.ckpt_path,
                    "outputs": files,
                },
            )
            self.records.log_event("done", [item_id])


class ChunkCheckpoint(pl.Callback):
    """Every `every_n_steps` optimiser steps, `<default_root_dir>/chunk.ckpt` (latents + optimiser state),
    replaced atomically so that a kill never leaves a torn file to resume from. 0 turns it off."""

    def __init__(self, every_n_steps: int = 0):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or step >= trainer.max_steps:
            return  # the last step's state is the result itself, recorded by FitOutputs
        path = Path(trainer.default_root_dir) / "chunk.ckpt"
        temp = path.with_name(f".chunk.ckpt.{os.getpid()}.tmp")
        trainer.save_checkpoint(temp)
        os.replace(temp, path)
