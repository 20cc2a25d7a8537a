"""Evaluation metrics (PSNR, SSIM, L1, LPIPS, FID, KID, ...) overall and per hole-ratio bucket, as a callback.

The callback reads the module's step outputs (`composite` scored against `image`, both `[B, 3, H, W]` in
[-1, 1]) and the batch's `mask` (`[B, 1, H, W]`, 1 = hole), converts the images to [0, 1] and feeds a
`facelab.metrics.MetricSuite`. At the end of each evaluation it writes `metrics.json`, `metrics.csv` and
`metrics.png` (test; `val_metrics.*` / `predict_metrics.*` for the other stages) into `dirpath` and logs
the numbers as `<stage>/metrics/<metric>[/hole_<lo>-<hi>]` plus a table where the logger has tables.

Distributed evaluation: every process accumulates its shard and the states are summed across processes
before `compute`, so N processes give the numbers of one. The `DistributedSampler` that Lightning inserts
pads the last round with repeats of the first samples so that every rank has the same number of batches;
those repeats are dropped here. Rank r's i-th sample is position `r + i * world_size` of the padded order,
and positions at or beyond the dataset length are exactly the padding, so the callback counts positions
instead of trusting `meta` fields (which some datasets lack). That position is also the sample's key for
KID's sample. Samplers that are not `DistributedSampler`s are taken to be unpadded.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler

from facelab.metrics.report import flatten_for_logging, markdown_table, write_report
from facelab.metrics.suite import WEIGHT_FREE_METRICS, MetricSettings, MetricSuite
from facelab.ops.color import to_unit_range

STAGES = ("val", "test", "predict")
_STAGES_OF_TRAINER_FN = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}


class ImageMetrics(pl.Callback):
    """Scores `prediction_key` against `target_key` for the configured stages; see the module docstring."""

    def __init__(
        self,
        dirpath: str,
        stages=("val", "test"),
        metrics=WEIGHT_FREE_METRICS,
        buckets="all",
        preset: str = "default",
        settings: dict | None = None,
        weights: dict | None = None,
        feature_extractor: torch.nn.Module | None = None,
        prediction_key: str = "composite",
        target_key: str = "image",
        mask_key: str = "mask",
        every_n_epochs: int = 1,
    ):
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"Metric stages {sorted(unknown)}: choose from {STAGES}.")
        self.dirpath, self.stages = Path(dirpath), tuple(stages)
        self.metrics, self.buckets = tuple(metrics), buckets
        self.settings = MetricSettings.preset(preset, **dict(settings or {}))
        self.weights, self.feature_extractor = dict(weights or {}), feature_extractor
        self.prediction_key, self.target_key, self.mask_key = prediction_key, target_key, mask_key
        self.every_n_epochs = every_n_epochs
        self.suite: MetricSuite | None = None
        self.results: dict[str, list[dict]] = {}  # stage -> rows of its latest evaluation
        self._positions: dict[int, int] = {}
        self._active = False

    # ----------------------------------------------------------------- start-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Build (and load every weight file) now, so a missing file stops the run before the first batch.
        if _STAGES_OF_TRAINER_FN.get(stage) in self.stages and self.suite is None:
            self.suite = MetricSuite(
                self.metrics, self.buckets, self.settings, self.feature_extractor, self.weights
            )

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = (
            stage in self.stages
            and self.suite is not None
            and not trainer.sanity_checking
            and (stage != "val" or trainer.current_epoch % self.every_n_epochs == 0)
        )
        if self._active:
            self.suite.to(pl_module.device)
            self.suite.reset()
            self._positions = {}

    # ----------------------------------------------------------------- batches
    @staticmethod
    def _loader_layout(trainer: pl.Trainer, stage: str, dataloader_idx: int) -> tuple[int, int, int | None]:
        """(world size, rank, dataset length or None when nothing is padded) of the loader's sampler."""
        loaders = {
            "val": trainer.val_dataloaders,
            "test": trainer.test_dataloaders,
            "predict": trainer.predict_dataloaders,
        }[stage]
        if isinstance(loaders, list | tuple):
            loaders = loaders[dataloader_idx]
        elif isinstance(loaders, dict):
            loaders = list(loaders.values())[dataloader_idx]
        sampler = getattr(loaders, "sampler", None)
        if not isinstance(sampler, DistributedSampler):  # a custom batch sampler may hold it instead
            sampler = getattr(getattr(loaders, "batch_sampler", None), "sampler", sampler)
        if isinstance(sampler, DistributedSampler):
            return sampler.num_replicas, sampler.rank, None if sampler.drop_last else len(sampler.dataset)
        return 1, 0, None

    def _batch(self, trainer, outputs, batch, dataloader_idx: int, stage: str) -> None:
        if not self._active:
            return
        if not isinstance(outputs, dict) or self.prediction_key not in outputs:
            # e.g. mode=shape trains the guide predictor alone and has no image to score: skip, say so once.
            found = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            rank_zero_warn(
                f"ImageMetrics: the {stage} step returned no {self.prediction_key!r} (it returned "
                f"{found}); image metrics are skipped for this {stage} run."
            )
            self._active = False
            return
        prediction = outputs[self.prediction_key]
        target = outputs[self.target_key] if self.target_key in outputs else batch[self.target_key]
        mask = batch.get(self.mask_key) if self.suite.buckets else None
        world, rank, length = self._loader_layout(trainer, stage, dataloader_idx)
        start = self._positions.get(dataloader_idx, 0)
        local = torch.arange(start, start + prediction.shape[0])
        self._positions[dataloader_idx] = start + prediction.shape[0]
        positions = rank + local * world
        keep = positions < length if length is not None else torch.ones_like(positions, dtype=torch.bool)
        if not keep.any():
            return
        keys = positions[keep] + (dataloader_idx << 40)  # distinct keys per dataloader
        keep = keep.to(prediction.device)
        self.suite.update(
            to_unit_range(prediction.detach()[keep]),
            to_unit_range(target.detach()[keep]),
            None if mask is None else mask.detach()[keep.to(mask.device)],
            keys,
        )

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "test")

    def on_predict_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "predict")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(trainer, outputs, batch, dataloader_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(trainer, outputs, batch, dataloader_idx, "test")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(trainer, outputs, batch, dataloader_idx, "predict")

    # ----------------------------------------------------------------- results
    def on_validation_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "predict")

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active:
            return
        self._active = False
        self.suite.sync()  # every rank, so that every rank computes (and logs) the same numbers
        rows = self.suite.compute()
        self.results[stage] = rows
        flat = flatten_for_logging(rows, f"{stage}/metrics")
        if stage == "predict":  # self.log is not available while predicting
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)
        else:
            for name, value in flat.items():
                # Equal on every rank already (synced above); sync_dist averages equal values, which is
                # exact, and tells Lightning these epoch values are global.
                pl_module.log(name, value, sync_dist=True, batch_size=1)
        if trainer.is_global_zero:
            self._write(trainer, stage, rows)

    def _write(self, trainer: pl.Trainer, stage: str, rows: list[dict]) -> None:
        stem = "metrics" if stage == "test" else f"{stage}_metrics"
        context = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            **self.suite.describe(),
        }
        write_report(rows, self.dirpath, stem, context)
        columns = list(rows[0])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key=f"{stage}/metrics/table",
                    columns=columns,
                    data=[[row[c] for c in columns] for row in rows],
                    step=trainer.global_step,
                )
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(
                    f"{stage}/metrics/table", markdown_table(rows), global_step=trainer.global_step
                )
