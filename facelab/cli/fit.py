"""Entry point `facelab-fit`: compose conf/fit.yaml and run the job (facelab/fit/job.py)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from facelab.cli.common import CONFIG_DIR
from facelab.fit.job import run_fit


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fit")
def fit_main(cfg: DictConfig) -> None:
    """facelab-fit."""
    run_fit(cfg)


if __name__ == "__main__":
    fit_main()
