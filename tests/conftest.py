"""Shared fixtures: compose the real Hydra configs with tiny sizes, run the real entry-point functions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from facelab.cli.common import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
REPO_ROOT = Path(__file__).resolve().parent.parent

# Tiny but complete: every component of the embedded default, at 32 px and one residual block.
TINY = [
    "data.faces.size=32",
    "data.faces.train_length=8",
    "data.faces.val_length=8",
    "data.faces.test_length=8",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "model.networks.base_channels=8",
    "model.networks.n_residual_blocks=1",
    "model.networks.discriminator_channels=8",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "logger=csv",
    "extras.print_config=false",
]


def compose_config(config_name: str, output_dir: Path, overrides: list[str]):
    """The composed config as the entry point would see it, writing into `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name,
            return_hydra_config=True,
            overrides=[
                f"hydra.run.dir={output_dir}",
                f"paths.output_dir={output_dir}",
                f"paths.root_dir={output_dir}",
                *overrides,
            ],
        )
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def tiny_train_config(tmp_path):
    """`tiny_train_config(*overrides)` -> a composed train config for a few-step fit in tmp_path/run."""

    def make(*overrides: str, output_dir: Path | None = None):
        return compose_config("train", output_dir or tmp_path / "run", [*TINY, *overrides])

    yield make
    GlobalHydra.instance().clear()
