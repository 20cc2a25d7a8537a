"""hparams_search=inpainting_optuna: the Optuna study over the inpainting ablations, through the real console
script (a multirun needs Hydra's own launcher, so a subprocess)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_config
from tests.test_train_e2e import _random_vgg16_file

BIN = Path(sys.executable).parent
GUIDES = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "model" / "guide").glob("*.yaml"))


def test_every_searched_key_is_a_real_config_key(tmp_path):
    cfg = compose_config("train", tmp_path, ["hparams_search=inpainting_optuna"])
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.storage is None
    searched_guides = params["model/guide"].removeprefix("choice(").removesuffix(")").split(", ")
    assert sorted(searched_guides) == GUIDES, "every guide of conf/model/guide"
    for key in (k for k in params if "/" not in k):
        assert OmegaConf.select(cfg, key) is not None, f"{key} is not in the composed config"
    assert {k.rsplit(".", 1)[-1] for k in params if k.startswith("model.losses.inpaint.")} == set(
        cfg.model.losses.inpaint
    ), "every stage-2 loss weight is searched"


@pytest.mark.slow
def test_optuna_sweep_runs_its_trials_and_reports_the_best(tmp_path):
    vgg_file = _random_vgg16_file(tmp_path / "vgg16-397923af.pth")  # the sweep may turn perceptual/style on
    sweep_dir = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("~")] + ["callbacks=none"]
    result = subprocess.run(
        [
            str(BIN / "facelab-train"),
            "-m",
            "hparams_search=inpainting_optuna",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep_dir}",
            f"model.losses.vgg_weights={vgg_file}",
            *tiny,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    finals = {
        p.parent.name: json.loads(p.read_text())["val/psnr"] for p in sweep_dir.glob("*/final_metrics.json")
    }
    assert sorted(finals) == ["0", "1"], "two trials, one fit each"

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {
        "model/guide",
        "model.losses.inpaint.l1",
        "model.losses.inpaint.adversarial",
        "model.losses.inpaint.perceptual",
        "model.losses.inpaint.style",
    }
    assert results["best_value"] == pytest.approx(max(finals.values())), "each fit returned its val/psnr"

    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(row["job"], row["status"]) for row in rows] == [("0", "done"), ("1", "done")]
    for row in rows:
        assert float(row["val/psnr"]) == pytest.approx(finals[row["job"]])
        assert row["model/guide"] in GUIDES
    best, best_params = max(rows, key=lambda row: float(row["val/psnr"])), results["best_params"]
    assert best["model/guide"] == best_params["model/guide"], "the table's best row is the study's best"
    assert float(best["model.losses.inpaint.l1"]) == pytest.approx(best_params["model.losses.inpaint.l1"])


def test_an_unlogged_optimized_metric_is_an_error_naming_the_logged_ones():
    from facelab.cli.train import _metric_value

    assert _metric_value({"val/psnr": 21.5}, "val/psnr") == 21.5
    assert _metric_value({"val/psnr": 21.5}, None) is None
    with pytest.raises(ValueError, match=r"optimized_metric='val/fid'.*\['train/g_total', 'val/psnr'\]"):
        _metric_value({"val/psnr": 21.5, "train/g_total": 3.0}, "val/fid")
