"""The composed configs: debug modes, experiments, loggers, and checkpoints of the wrong kind."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from facelab.cli.train import run_inpaint, run_train
from tests.conftest import TINY, compose_config

# Debug configs drop every callback and set their own epochs: keep only the tiny sizes.
TINY_KEEPING_CALLBACKS = [o for o in TINY if not o.startswith(("~", "trainer.max_epochs"))]


@pytest.mark.parametrize(
    ("debug", "expected"),
    [
        ("fdr", {"fast_dev_run": True}),
        ("limit", {"max_epochs": 3, "limit_train_batches": 0.01}),
        ("overfit", {"max_epochs": 20, "overfit_batches": 3}),
        ("profiler", {"profiler": "simple"}),
    ],
)
def test_debug_configs_compose(tmp_path, debug, expected):
    cfg = compose_config("train", tmp_path, [*TINY_KEEPING_CALLBACKS, f"debug={debug}"])
    assert {key: cfg.trainer[key] for key in expected} == expected
    assert cfg.task_name == "debug" and cfg.callbacks is None and cfg.logger is None


@pytest.mark.slow
def test_fast_dev_run_trains_one_batch(tmp_path):
    run_train(compose_config("train", tmp_path / "run", [*TINY_KEEPING_CALLBACKS, "debug=fdr"]))
    assert (tmp_path / "run" / "final_metrics.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists(), "fast_dev_run writes no checkpoints"


@pytest.mark.parametrize(
    "experiment", ["embedded_default", "hog_celeba256", "ablation_edge", "ablation_none"]
)
def test_experiments_compose_and_build_their_model(tmp_path, experiment):
    cfg = compose_config("train", tmp_path, [f"experiment={experiment}"])
    model = instantiate(cfg.model, _convert_="all")
    guide = {"ablation_edge": "edge", "ablation_none": "none"}.get(experiment, "hog")
    assert model.guide.kind == guide and cfg.tags[0] == experiment
    if experiment != "embedded_default":  # the paper's losses and EdgeConnect's full-size networks
        assert cfg.model.losses.inpaint.style == 250.0 and cfg.model.losses.inpaint.perceptual == 0.1
        assert cfg.model.networks.base_channels == 64 and cfg.data.faces.size == 256
    else:  # says which losses it turns off
        assert cfg.model.losses.inpaint.style == 0.0 and cfg.model.losses.inpaint.perceptual == 0.0


def test_a_foreign_checkpoint_is_an_error_naming_it(tmp_path):
    foreign = tmp_path / "resnet.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    cfg = compose_config(
        "inpaint", tmp_path / "run", [f"ckpt={foreign}", "image=a.png", "mask=b.png", "out=c.png"]
    )
    with pytest.raises(ValueError, match="(?s)resnet.ckpt.*facelab-train"):
        run_inpaint(cfg)


@pytest.mark.slow
def test_init_from_a_mismatched_checkpoint_names_it(tiny_train_config, tmp_path):
    run_train(tiny_train_config("model.mode=shape", output_dir=tmp_path / "shape"))
    other = tiny_train_config(
        "model.mode=cascade",
        "model.guide.orientations=6",  # another guide: stage-1 shapes differ
        f"model.init_from={tmp_path}/shape/checkpoints/last.ckpt",
        output_dir=tmp_path / "cascade",
    )
    with pytest.raises(ValueError, match="does not fit this model"):
        run_train(other)
    missing = tiny_train_config("model.init_from=/nowhere/last.ckpt", output_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="/nowhere/last.ckpt"):
        run_train(missing)


def test_switching_the_progress_bar_off_drops_the_rich_progress_bar(tmp_path):
    from facelab.cli.train import _build_trainer

    kept_bar = [o for o in TINY if o != "~callbacks.rich_progress_bar"]
    trainer = _build_trainer(compose_config("train", tmp_path, kept_bar))
    assert "RichProgressBar" not in [type(c).__name__ for c in trainer.callbacks]
    assert trainer.progress_bar_callback is None
    shown = [o for o in kept_bar if o != "trainer.enable_progress_bar=false"]
    trainer = _build_trainer(compose_config("train", tmp_path, shown))
    assert type(trainer.progress_bar_callback).__name__ == "RichProgressBar"
