"""A latent-fit job over a manifest (conf/fit.yaml), as `facelab-fit` runs it.

Compose, instantiate (Lightning objects only through Hydra `_target_`s), then for this
process's shard loop over the items that have no done record, in chunks of `batch_size`, one short
`Trainer.fit` per chunk. The chunk's callbacks write each item's outputs and done record.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import warnings
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from facelab.cli.common import apply_extras
from facelab.cluster import Preempted, requeue_slurm_job, slurm_job_id
from facelab.fit.cache import StageCache
from facelab.fit.progress import FitProgress
from facelab.fit.records import FitRecords
from facelab.fit.stages import run_image_stage, run_item_stage
from facelab.io.files import user_cache_dir

log = logging.getLogger("facelab")
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")


def _quiet_lightning() -> None:
    """A job runs hundreds of short fits: Lightning's per-fit banners would bury the progress lines.
    Call it once Lightning is imported (its import sets its loggers' levels)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",  # the chunk's batch is in memory already
        ".*module\\(s\\) in eval mode.*",  # the frozen networks, on purpose
        ".*`srun` command is available.*",  # a fit outside Slurm on a machine that has it
        ".*dataloader is not resumable.*",  # every batch of a chunk is the same batch
    ):
        warnings.filterwarnings("ignore", message=message)


def run_fit(cfg: DictConfig) -> dict:
    """Fit every not-yet-recorded item of this shard; returns counts for this process."""
    if OmegaConf.is_missing(cfg, "manifest"):
        raise ValueError("facelab-fit needs manifest=<a .yaml list, a .csv file or a folder of images>.")
    apply_extras(cfg)
    try:
        items = instantiate(cfg.data)
    except InstantiationException as error:  # a bad manifest: its own message, not Hydra's wrapping
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise
    records = FitRecords(cfg.output_dir)
    done = set() if cfg.get("only_stage") else records.done_ids()  # one stage is rerun for every item
    todo = [item for item in items.items if item.item_id not in done]
    shard, skipped = items.shard, len(items.items) - len(todo)
    records.context = {"rank": shard.rank, "world": shard.world}
    label = f"shard {shard.rank}/{shard.world}"
    counts = (len(items.items), len(items.all_items), skipped)
    log.info("%s (%s): %d of %d items, %d done before.", label, shard.source, *counts)
    todo = items.prepare(todo)  # every image opened (raw photos aligned) before any fitting starts
    if todo:
        _fit_items(cfg, items, records, todo, label, skipped)
    fitted = len(records.done_ids() & {item.item_id for item in todo})
    log.info(
        "%s: fitted %d, skipped %d; outputs in %s", label, fitted, skipped, Path(cfg.output_dir).resolve()
    )
    return {
        "rank": shard.rank,
        "world": shard.world,
        "items": len(items.items),
        "fitted": fitted,
        "skipped": skipped,
    }


class _SignalBetweenChunks:
    """Slurm's early-warning SIGUSR1 (`sbatch --signal`) landing between two chunks, when no fit is running
    to save: without a handler it would kill the process. Here it stops the job before the next chunk and
    requeues the Slurm task. During a chunk callbacks.preemption owns the signal and saves the chunk first."""

    def __init__(self):
        self.received = False
        self.previous = None

    def __enter__(self) -> _SignalBetweenChunks:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True

    def stop_now(self) -> str:
        """ "" to go on; else why to stop (and the Slurm task is requeued)."""
        if not self.received:
            return ""
        job_id = slurm_job_id()
        if job_id is not None:
            requeue_slurm_job(job_id)
        return f"SIGUSR1 between chunks{f', requeued Slurm job {job_id}' if job_id else ''}"

    def __exit__(self, *exc_info) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGUSR1, self.previous)


def _fit_items(cfg: DictConfig, items, records: FitRecords, todo: list, label: str, skipped: int) -> None:
    """The chunks of `todo` one after the other, until done or until a signal asks this process to stop."""
    module = instantiate(cfg.fit.module)  # once: its frozen networks serve every chunk
    for item in todo:  # the method's own checks (e.g. a drag spec), before any fitting
        module.check_item(item.values, item.source)
    if cfg.get("quiet_lightning", True):
        _quiet_lightning()
    all_ids = {item.item_id for item in items.all_items}
    overall_done = lambda: len(records.done_ids() & all_ids)  # noqa: E731
    progress = FitProgress(label, len(items.items), skipped, len(all_ids), overall_done, cfg.progress)
    has_image_stages = bool(getattr(module, "image_stages", ()))
    cache = StageCache(cfg.cache_dir or user_cache_dir("fit")) if has_image_stages else None
    with progress, _SignalBetweenChunks() as between_chunks:
        for start in range(0, len(todo), cfg.batch_size):
            stopped = between_chunks.stop_now()
            if not stopped:
                chunk = todo[start : start + cfg.batch_size]
                stopped = _fit_chunk(cfg, module, items, records, cache, chunk, progress)
            if stopped:
                log.warning("%s: stopped by a signal (%s). A rerun continues from here.", label, stopped)
                return


def _fit_chunk(cfg: DictConfig, module, items, records: FitRecords, cache, chunk: list, progress) -> str:
    """Every stage of `chunk`, each item from its first unrecorded stage (a stage cut off mid-way resumes
    from its chunk checkpoint); returns why the process must stop now, or "" to go on."""
    began = time.perf_counter()
    only = cfg.get("only_stage")
    if only is not None and only not in module.stage_names:
        raise ValueError(f"only_stage={only!r}: this method's stages are {module.stage_names}.")
    image_stages = getattr(module, "image_stages", ())
    for stage in [only] if only else module.stage_names:
        try:
            if stage in image_stages:
                run_image_stage(cfg, module, items, records, cache, stage, chunk, rerun=bool(only))
            else:
                run_item_stage(cfg, module, items, records, stage, chunk, rerun=bool(only))
        except Preempted as preempted:  # saved mid-stage; the requeued task (or a rerun) resumes from it
            return str(preempted)
        if getattr(module, "received_sigterm", False):
            return "SIGTERM"
    if only:
        return ""
    starts = [records.start_counts(stage) for stage in module.stage_names]  # the attempt log, read once
    for item in chunk:
        stage_records = {
            s: json.loads(records.stage_record_path(item.item_id, s).read_text()) for s in module.stage_names
        }
        extra = [
            str(p.relative_to(records.root))
            for p in module.finish_item(item.values, records.item_dir(item.item_id))
        ]
        records.write_done(
            item.item_id,
            {
                "stages": module.stage_names,
                "steps": {s: r.get("steps", 0) for s, r in stage_records.items()},
                "losses": {s: r.get("losses", {}) for s, r in stage_records.items()},
                "attempt": max([counts[item.item_id] for counts in starts] + [1]),
                "outputs": [f for r in stage_records.values() for f in r.get("outputs", [])] + extra,
            },
        )
        records.log_event("done", [item.item_id])
    progress.advance(len(chunk), time.perf_counter() - began)
    return ""
