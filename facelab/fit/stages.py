"""One stage of a latent-fit chunk: build its batch, fit it (resuming its chunk checkpoint), write each item's
outputs, curves and stage record.

Two kinds of stage:
- an **item stage** fits one set of latents per manifest item (Barbershop's alignment and blending, a
  DragGAN drag); it reads the item's inputs and its earlier stages' outputs from the job's records;
- an **image stage** (`module.image_stages`) fits one set of latents per distinct input image of the
  chunk's items (`module.image_columns`: Barbershop's W+ and FS embeddings of identity, shape and
  appearance). Its results live in a content-keyed cache (facelab/fit/cache.py): an image already embedded
  with the same generator and settings, by this job or another, is read back instead of fitted, and each
  item gets a copy as `<column>_<name>` in its own stage folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from facelab.cli.common import instantiate_all
from facelab.fit.cache import StageCache
from facelab.fit.records import FitRecords, curves_csv

log = logging.getLogger("facelab")


def to_device(value, device: torch.device):
    """Tensors of a (nested) batch dict on `device`; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    return value


def fit_stage(cfg: DictConfig, module, records: FitRecords, stage: str, batch: dict, keys: list[str]) -> dict:
    """Fit `stage` on `batch` (one short Trainer.fit, resumed from its chunk checkpoint if one exists).

    Returns {"outputs", "losses", "steps", "curves", "seconds"} per item (CPU tensors / lists), or raises
    facelab.cluster.Preempted after saving the chunk."""
    steps = module.stage_steps(stage)
    trainer = instantiate(
        cfg.trainer,
        max_steps=max(steps, 1),
        default_root_dir=str(records.chunk_dir(keys, stage)),  # where a preemption's hpc_ckpt_N.ckpt goes
        callbacks=instantiate_all(cfg.get("callbacks")),
        _convert_="all",
    )
    module.check_trainer(trainer)
    began = time.perf_counter()
    module.to(trainer.strategy.root_device)  # initial latents are computed where the fit runs
    module.begin_stage(stage, to_device(batch, module.device))
    resume = None
    if steps > 0:
        resume = records.resume_checkpoint(keys, steps, stage)
        records.log_event("start", keys, stage=stage, resume=resume)
        # The module reads its own batch; the loader only counts the steps.
        trainer.fit(module, train_dataloaders=DataLoader(range(steps), batch_size=None), ckpt_path=resume)
    module.received_sigterm = bool(getattr(trainer, "received_sigterm", False))
    outputs, losses, steps_taken = module.final_results()
    curves = {key: [row for row in module.curve_rows if row["item_id"] == key] for key in keys}
    return {
        "outputs": {name: value.detach().cpu() for name, value in outputs.items()},
        "losses": {name: value.detach().cpu() for name, value in losses.items()},
        "steps": steps_taken.cpu().tolist(),
        "curves": curves,
        "seconds": time.perf_counter() - began,
        "resumed_from": resume,
    }


def record_stage(
    records: FitRecords,
    module,
    stage: str,
    item_id: str,
    result: dict,
    index: int,
    extra: dict | None = None,
) -> None:
    """Write item `index` of a stage result under `item_id`, then its record."""
    image_names = set(module.image_outputs.get(stage, ()))
    outputs = {name: value[index] for name, value in result["outputs"].items()}
    files = records.write_stage_outputs(item_id, stage, outputs, image_names)
    record = {
        "losses": {name: float(value[index]) for name, value in result["losses"].items()},
        "steps": result["steps"][index],
        "fit_seconds": round(result["seconds"], 3),  # this attempt's time for the whole chunk of the stage
        "resumed_from": result.get("resumed_from"),
        "outputs": files,
        **(extra or {}),
    }
    records.write_stage_done(item_id, stage, record)


def run_item_stage(
    cfg: DictConfig, module, items, records: FitRecords, stage: str, chunk: Sequence, rerun: bool = False
) -> None:
    """Fit `stage` for the chunk's items that have no record of it (all of them with `rerun`)."""
    todo = [item for item in chunk if rerun or not records.is_stage_done(item.item_id, stage)]
    if not todo:
        return
    batch = items.collate([items.load(item) for item in todo])
    batch["previous"] = previous_outputs(module, records, stage, [item.item_id for item in todo])
    keys = [item.item_id for item in todo]
    result = fit_stage(cfg, module, records, stage, batch, keys)
    for index, item_id in enumerate(keys):
        if result["curves"][item_id]:
            records.write_curves(item_id, stage, result["curves"][item_id])
        record_stage(records, module, stage, item_id, result, index, extra={"chunk": keys})
        records.log_event("stage", [item_id], stage=stage)
    records.finish_chunk(keys, stage)


def previous_outputs(module, records: FitRecords, stage: str, item_ids: list[str]) -> dict:
    """`{earlier stage: {name: [B, ...]}}` read from the items' records (stacked in `item_ids` order)."""
    previous = {}
    for earlier in module.stage_names[: module.stage_names.index(stage)]:
        per_item = [records.read_stage_outputs(item_id, earlier) for item_id in item_ids]
        previous[earlier] = {name: torch.stack([o[name] for o in per_item]) for name in per_item[0]}
    return previous


def run_image_stage(
    cfg: DictConfig,
    module,
    items,
    records: FitRecords,
    cache: StageCache,
    stage: str,
    chunk: Sequence,
    rerun: bool = False,
) -> dict:
    """Fit `stage` once per distinct image of the chunk's items, through the cache; returns counts."""
    todo = [item for item in chunk if rerun or not records.is_stage_done(item.item_id, stage)]
    if not todo:
        return {"fitted": 0, "reused": 0}
    identity = module.cache_identity(stage)
    keys = {}  # (item_id, column) -> cache key
    paths = {}  # cache key -> image path
    for item in todo:
        for column in module.image_columns:
            path = item.values[column]
            keys[item.item_id, column] = key = cache.key(path, identity)
            paths[key] = path
    unique = list(dict.fromkeys(keys.values()))
    missing = unique if rerun else [key for key in unique if cache.read(key, stage) is None]
    for group in image_groups(missing, cfg.get("image_batch_size")):
        batch = {
            "image": torch.stack([items.load_image(paths[key]) for key in group]),
            "meta": {"item_id": list(group), "image_path": [paths[key] for key in group]},
        }
        batch["previous"] = _cached_previous(module, cache, stage, [paths[key] for key in group])
        result = fit_stage(cfg, module, records, stage, batch, group)
        for index, key in enumerate(group):
            tensors = {name: value[index] for name, value in result["outputs"].items()}
            curves = curves_csv(result["curves"][key]) if result["curves"][key] else b""
            cache.write(key, stage, tensors, curves)
        records.finish_chunk(group, stage)
    reused = len(unique) - len(missing)
    log.info(
        "stage %s: %d image(s) fitted, %d embedding(s) reused from the cache %s",
        stage,
        len(missing),
        reused,
        cache.root,
    )
    for item in todo:
        files, names = [], set(module.image_outputs.get(stage, ()))
        for column in module.image_columns:
            tensors = cache.read(keys[item.item_id, column], stage)
            if tensors is None:
                path = paths[keys[item.item_id, column]]
                raise RuntimeError(f"The cache entry of {path} vanished during the job; rerun the job.")
            outputs = {f"{column}_{name}": value for name, value in tensors.items()}
            images = {f"{column}_{name}" for name in names}
            files += records.write_stage_outputs(item.item_id, stage, outputs, images)
        records.write_stage_done(
            item.item_id,
            stage,
            {
                "cache_keys": {column: keys[item.item_id, column] for column in module.image_columns},
                "inputs": {column: item.values[column] for column in module.image_columns},
                "outputs": files,
            },
        )
    return {"fitted": len(missing), "reused": reused}


def image_groups(keys: list[str], image_batch_size: int | None) -> list[list[str]]:
    """The images an image stage fits together: all of a chunk's (null / 0), or groups of at most
    `image_batch_size` (a chunk of B transfers brings up to 3B images, whose activations may not fit in
    memory at once). Each group's results are cached as soon as it ends, so a rerun after a crash finds the
    same next group and its chunk checkpoint."""
    if image_batch_size is not None and image_batch_size < 0:
        raise ValueError(f"image_batch_size={image_batch_size}: give a positive count, or null for no cap.")
    size = image_batch_size or max(len(keys), 1)
    return [keys[start : start + size] for start in range(0, len(keys), size)]


def _cached_previous(module, cache: StageCache, stage: str, paths: list[str]) -> dict:
    """The earlier image stages' cached results of the images at `paths` (each keyed with its own stage's
    settings, so that a later stage's settings never invalidate an earlier stage's entries)."""
    previous = {}
    for earlier in module.image_stages[: module.image_stages.index(stage)]:
        identity = module.cache_identity(earlier)
        entries = [cache.read(cache.key(path, identity), earlier) for path in paths]
        if any(entry is None for entry in entries):
            raise RuntimeError(f"Stage {stage!r} needs {earlier!r} in the cache for every image.")
        previous[earlier] = {name: torch.stack([e[name] for e in entries]) for name in entries[0]}
    return previous
