"""Entry points `facelab-train`, `facelab-eval`, `facelab-inpaint`: compose the config, instantiate, run.

Each is a Hydra app (`--help`, `--cfg job`, overrides, `-m` multirun). Lightning objects are built only by
`hydra.utils.instantiate` from `_target_` strings, so this package never imports Lightning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
from hydra.utils import call, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from facelab.cli.common import CONFIG_DIR, _without_hydra, apply_extras, instantiate_all
from facelab.cluster import Preempted, latest_checkpoint, slurm_job_id
from facelab.io.files import atomic_write_bytes
from facelab.io.run_id import persistent_run_id

log = logging.getLogger("facelab")
WANDB_RUN_ID_FILE = "wandb_run_id"  # in the run directory


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def _prepare_wandb(loggers: DictConfig | None, output_dir: Path) -> None:
    """Continue this run directory's wandb run (a requeued job or a `ckpt_path=last` restart lands in the
    same directory), and without an API key run offline and say how to upload later."""
    for entry in (loggers or {}).values():
        if not (isinstance(entry, DictConfig) and str(entry.get("_target_", "")).endswith("WandbLogger")):
            continue
        Path(entry.save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp otherwise
        # Keyed on the run directory, not on save_dir, which several runs may share.
        stored_id = persistent_run_id(output_dir / WANDB_RUN_ID_FILE, proposed=entry.get("id"))
        with open_dict(entry):
            entry.id = entry.get("id") or stored_id  # WandbLogger inits with resume="allow"
        if (
            not entry.get("offline")
            and not os.environ.get("WANDB_API_KEY")
            and os.environ.get("WANDB_MODE") not in ("online", "disabled")
        ):
            with open_dict(entry):
                entry.offline = True
                # Also to wandb.init: WandbLogger only sets WANDB_MODE, which wandb reads once per process,
                # so a process whose wandb had already started in another mode would not go offline.
                entry.mode = "offline"
            log.warning(
                "WANDB_API_KEY is not set: wandb logs offline to %s/wandb (run id %s). Upload later with "
                "`wandb sync %s/wandb/offline-run-*`.",
                entry.save_dir,
                entry.id,
                entry.save_dir,
            )


def _log_config_to_wandb(cfg: DictConfig, loggers: list) -> None:
    """The resolved run config (all groups, not only the module's hparams) in the wandb run's config."""
    wandb_loggers = [logger for logger in loggers if type(logger).__name__ == "WandbLogger"]
    if wandb_loggers:
        resolved = OmegaConf.to_container(_without_hydra(cfg), resolve=True)
        for logger in wandb_loggers:
            logger.log_hyperparams(resolved)


def _metric_value(metrics: dict, name: str | None) -> float | None:
    """The value a sweeper optimises; a name the run did not log is an error listing those it did."""
    if not name:
        return None
    if name not in metrics:
        raise ValueError(
            f"optimized_metric={name!r} was not logged by this run. Logged metrics: {sorted(metrics)}. "
            "Set optimized_metric to one of them (a val/ metric is only logged when validation runs)."
        )
    return metrics[name]


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means the newest checkpoint of this run directory: checkpoints/last.ckpt or a preemption
    hpc_ckpt_N.ckpt (absent on a first start: start fresh). Under Slurm a run directory belongs to one job id,
    so a requeued job (after a preemption signal, or a node failure without one) continues the same way."""
    if ckpt_path is None and slurm_job_id() is not None:
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        latest = latest_checkpoint(output_dir)
        if latest is None:
            log.info("ckpt_path=last but %s holds no checkpoint yet: starting from scratch.", output_dir)
            return None
        log.info("Resuming from %s", latest)
        return str(latest)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist; give a .ckpt file, or `last`.")
    return ckpt_path


def _check_checkpoint(path: str, key: str = "ckpt") -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{key}={path!r} does not exist; give the .ckpt of a facelab-train run "
            "(<run dir>/checkpoints/last.ckpt)."
        )


def _finish(output_dir: Path, metrics: dict) -> None:
    atomic_write_bytes(
        output_dir / "final_metrics.json", json.dumps(metrics, indent=2, sort_keys=True).encode()
    )
    log.info("Output directory: %s", output_dir)


def _close_wandb() -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()  # a multirun's next job would otherwise reuse this run


def _seed(cfg: DictConfig) -> None:
    if cfg.get("seed") is not None:
        call({"_target_": "pytorch_lightning.seed_everything", "seed": cfg.seed, "workers": True})


def _build_trainer(cfg: DictConfig):
    """The Trainer with the run's callbacks and loggers (CSV + TensorBoard by default)."""
    _prepare_wandb(cfg.get("logger"), _output_dir(cfg))
    loggers = instantiate_all(cfg.get("logger"))
    _log_config_to_wandb(cfg, loggers)
    callbacks = instantiate_all(_callback_configs(cfg))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _callback_configs(cfg: DictConfig) -> dict:
    """The callbacks group, without the progress bar when `trainer.enable_progress_bar=false` (Lightning
    refuses a progress-bar callback with the bar switched off)."""
    group = dict(cfg.get("callbacks") or {})
    if cfg.trainer.get("enable_progress_bar", True) is False:
        group = {k: v for k, v in group.items() if not str(v.get("_target_", "")).endswith("ProgressBar")}
    return group


def _load_checkpoint_model(model_config: DictConfig, path: str):
    """Instantiate `model_config` (a `load_from_checkpoint` target); a file of another kind is an error
    naming it rather than a KeyError from deep inside Lightning."""
    from facelab.io.checkpoints import UnreadableCheckpointError

    _check_checkpoint(path)
    try:
        return instantiate(model_config)
    except UnreadableCheckpointError:
        raise  # names the file already, and withholds torch's advice to unpickle it as code
    except Exception as error:
        raise ValueError(
            f"ckpt={path!r} could not be loaded as a facelab inpainting checkpoint ({type(error).__name__}: "
            f"{error}). Give the .ckpt written by facelab-train (<run dir>/checkpoints/last.ckpt)."
        ) from error


def _set_float32_precision(cfg: DictConfig) -> None:
    """`float32_matmul_precision`: highest (true float32) | high (TF32 matmuls and cuDNN convolutions on
    Ampere and later GPUs) | medium. A process-wide torch setting, hence here and not in the module."""
    import torch

    precision = cfg.get("float32_matmul_precision") or "highest"
    if precision not in ("highest", "high", "medium"):
        raise ValueError(f"float32_matmul_precision={precision!r}; choose highest, high or medium.")
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"


def run_train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) the configured model; returns `optimized_metric` for sweepers."""
    apply_extras(cfg)
    _seed(cfg)
    _set_float32_precision(cfg)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")
    trainer = _build_trainer(cfg)
    try:
        if cfg.get("train", True):
            ckpt_path = _resolve_ckpt_path(cfg.get("ckpt_path"), _output_dir(cfg))
            try:
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            except Preempted as stop:
                log.warning("%s", stop)
                return None
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            trainer.test(model, datamodule=datamodule, ckpt_path=best)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        _finish(_output_dir(cfg), metrics)
    finally:
        _close_wandb()
    return _metric_value(metrics, cfg.get("optimized_metric"))


def run_eval(cfg: DictConfig) -> dict:
    """Test a checkpoint, or a classical baseline, on the configured data's test split (or run another
    evaluation named by `eval_task`, e.g. experiment=draggan_landmarks)."""
    apply_extras(cfg)
    if cfg.get("eval_task") == "draggan_landmarks":
        from facelab.cli.draggan_landmarks import run_draggan_landmarks

        return {"rows": run_draggan_landmarks(cfg)}
    if cfg.get("baseline") and cfg.get("ckpt"):
        raise ValueError("Give either ckpt=<file> or baseline=<zero|mean|biharmonic>, not both.")
    if not cfg.get("baseline") and not cfg.get("ckpt"):
        raise ValueError(
            "facelab-eval needs ckpt=<run dir>/checkpoints/last.ckpt, or baseline=zero|mean|biharmonic "
            "to score a classical baseline on the same test images and masks."
        )
    _seed(cfg)
    datamodule = instantiate(cfg.data)
    if cfg.get("baseline"):
        model = instantiate(cfg.baseline_model)
    else:
        model = _load_checkpoint_model(cfg.model, cfg.ckpt)
    trainer = _build_trainer(cfg)
    try:
        trainer.test(model, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        _finish(_output_dir(cfg), metrics)
    finally:
        _close_wandb()
    return metrics


def run_inpaint(cfg: DictConfig) -> list[Path]:
    """Inpaint `image` (file or folder) with `mask` into `out`."""
    from facelab.inference import inpaint_files, resolve_device

    apply_extras(cfg)
    device = resolve_device(cfg.device)
    model = _load_checkpoint_model(cfg.model, cfg.ckpt).to(device).eval()
    written = inpaint_files(
        model, cfg.image, cfg.mask, cfg.out, cfg.get("size"), device, cfg.mask_white_is_hole
    )
    log.info("Wrote %d image(s) to %s", len(written), cfg.out)
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """facelab-train."""
    return run_train(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """facelab-eval."""
    run_eval(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="inpaint")
def inpaint(cfg: DictConfig) -> None:
    """facelab-inpaint."""
    run_inpaint(cfg)


if __name__ == "__main__":
    train()
