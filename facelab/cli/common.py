"""What every entry point shares: the config folder, the `extras` (warnings, config print), and the
instantiation of a callbacks / logger group."""

from __future__ import annotations

import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from facelab.cluster import process_rank
from facelab.heap import keep_freed_memory

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # hydra's own node is noise


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("keep_freed_memory", True):
        keep_freed_memory()
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config") and process_rank() == 0:  # once per job, not once per DDP rank
        from rich.console import Console
        from rich.syntax import Syntax

        shown = OmegaConf.to_yaml(_without_hydra(cfg), resolve=True)
        Console().print(Syntax(shown, "yaml", theme="ansi_dark"))


def instantiate_all(group: DictConfig | None) -> list:
    """Every entry of a callbacks/logger group that has a `_target_`."""
    return [
        instantiate(entry)
        for entry in (group or {}).values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def compose_fit_config(out: Path | str, overrides: list[str]) -> DictConfig:
    """The `fit` config as `facelab-fit <overrides>` composes it, with its run directory `out`, for entry
    points that run a fit job in-process (facelab-drag, the demo)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("fit", return_hydra_config=True, overrides=[f"hydra.run.dir={out}", *overrides])
    HydraConfig().set_config(cfg)
    return cfg
