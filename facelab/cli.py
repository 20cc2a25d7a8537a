"""Entry points `facelab-train`, `facelab-eval`, `facelab-inpaint`: compose the config, instantiate, run.

Each is a Hydra app (`--help`, `--cfg job`, overrides, `-m` multirun). Lightning objects are built only by
`hydra.utils.instantiate` from `_target_` strings, so this package never imports Lightning.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import hydra
from hydra.utils import call, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from facelab.io.images import atomic_write_bytes

log = logging.getLogger("facelab")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def _apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        from rich.console import Console
        from rich.syntax import Syntax

        shown = OmegaConf.masked_copy(
            cfg, [key for key in cfg if key != "hydra"]
        )  # hydra's own node is noise
        Console().print(Syntax(OmegaConf.to_yaml(shown, resolve=True), "yaml", theme="ansi_dark"))


def _instantiate_all(group: DictConfig | None) -> list:
    """Every entry of a callbacks/logger group that has a `_target_`."""
    return [
        instantiate(entry)
        for entry in (group or {}).values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def _prepare_wandb(loggers: DictConfig | None) -> None:
    """Without an API key wandb cannot log online: run offline and say how to upload later."""
    for entry in (loggers or {}).values():
        if not (isinstance(entry, DictConfig) and str(entry.get("_target_", "")).endswith("WandbLogger")):
            continue
        Path(entry.save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp otherwise
        if (
            not entry.get("offline")
            and not os.environ.get("WANDB_API_KEY")
            and os.environ.get("WANDB_MODE") not in ("online", "disabled")
        ):
            with open_dict(entry):
                entry.offline = True
            log.warning(
                "WANDB_API_KEY is not set: wandb logs offline to %s/wandb. Upload later with "
                "`wandb sync %s/wandb/offline-run-*`.",
                entry.save_dir,
                entry.save_dir,
            )


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means this run directory's checkpoints/last.ckpt (absent on a first start: start fresh)."""
    if ckpt_path in (None, "last"):
        last = output_dir / "checkpoints" / "last.ckpt"
        if ckpt_path == "last":
            if last.exists():
                return str(last)
            log.info("ckpt_path=last but %s does not exist yet: starting from scratch.", last)
        return None
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
    _prepare_wandb(cfg.get("logger"))
    return instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")) or False,
    )


def _load_checkpoint_model(model_config: DictConfig, path: str):
    """Instantiate `model_config` (a `load_from_checkpoint` target); a file of another kind is an error
    naming it rather than a KeyError from deep inside Lightning."""
    _check_checkpoint(path)
    try:
        return instantiate(model_config)
    except Exception as error:
        raise ValueError(
            f"ckpt={path!r} could not be loaded as a facelab inpainting checkpoint ({type(error).__name__}: "
            f"{error}). Give the .ckpt written by facelab-train (<run dir>/checkpoints/last.ckpt)."
        ) from error


def run_train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) the configured model; returns `optimized_metric` for sweepers."""
    _apply_extras(cfg)
    _seed(cfg)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")
    trainer = _build_trainer(cfg)
    try:
        if cfg.get("train", True):
            ckpt_path = _resolve_ckpt_path(cfg.get("ckpt_path"), _output_dir(cfg))
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            trainer.test(model, datamodule=datamodule, ckpt_path=best)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        _finish(_output_dir(cfg), metrics)
    finally:
        _close_wandb()
    optimized = cfg.get("optimized_metric")
    return metrics.get(optimized) if optimized else None


def run_eval(cfg: DictConfig) -> dict:
    """Test a checkpoint, or a classical baseline, on the configured data's test split."""
    _apply_extras(cfg)
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

    _apply_extras(cfg)
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
