"""`facelab-eval` through the composed config and `run_eval`: a checkpoint of a tiny fit and each classical
baseline are scored on the same test images and masks, and the reports agree with direct computations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import inpaint_biharmonic

from facelab.cli.train import run_eval, run_train
from facelab.ops.masks import BUCKET_NAMES, bucket_index
from tests.conftest import TINY, compose_config

EVAL_OVERRIDES = [
    "data.faces.size=32",
    "data.faces.test_length=8",
    "data.eval_batch_size=8",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "extras.print_config=false",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny fit (real composed train config) whose checkpoint the evaluations load."""
    run_dir = tmp_path_factory.mktemp("fit")
    run_train(compose_config("train", run_dir, list(TINY)))
    return run_dir


def _evaluate(output_dir, *overrides) -> dict:
    cfg = compose_config("eval", output_dir, [*EVAL_OVERRIDES, *overrides])
    metrics = run_eval(cfg)
    report = json.loads((output_dir / "metrics.json").read_text())
    assert (output_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(output_dir / "metrics.csv")))
    assert [row["group"] for row in rows] == ["overall", *BUCKET_NAMES]
    assert metrics["test/metrics/psnr"] == pytest.approx(report["overall"]["psnr"], rel=1e-6)
    return report


def _test_items(output_dir):
    """The test split exactly as the eval config builds it: images, masks `[N, ...]` in the data contract."""
    datamodule = instantiate(compose_config("eval", output_dir, EVAL_OVERRIDES).data)
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    return torch.cat([b["image"] for b in batches]), torch.cat([b["mask"] for b in batches])


def _psnr_reference(composites: torch.Tensor, images: torch.Tensor) -> float:
    """Mean skimage PSNR of 8-bit-rounded [0, 1] images."""
    to_unit = lambda x: np.round(np.clip((x.double().numpy() + 1) / 2, 0, 1) * 255) / 255  # noqa: E731
    return float(
        np.mean(
            [
                peak_signal_noise_ratio(to_unit(t), to_unit(c), data_range=1)
                for c, t in zip(composites, images, strict=True)
            ]
        )
    )


def _bucket_counts(masks: torch.Tensor) -> list[int]:
    buckets = [bucket_index(m.mean()) for m in masks]
    return [buckets.count(b) for b in range(len(BUCKET_NAMES))]


def test_eval_scores_a_checkpoint_on_the_test_split(trained_run, tmp_path):
    from lightning_modules.inpainting import GuidedInpainting

    assert json.loads((trained_run / "val_metrics.json").read_text())["overall"]["count"] == 8
    history = list(csv.DictReader(open(trained_run / "val_history.csv")))
    assert "val/metrics/psnr" in history[-1], "the metrics callback logs before MetricHistory tabulates"

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    report = _evaluate(tmp_path, f"ckpt={checkpoint}")
    images, masks = _test_items(tmp_path)
    model = GuidedInpainting.load_from_checkpoint(checkpoint, map_location="cpu")
    composites = model.eval().inpaint(images, masks)["composite"]
    assert report["overall"]["count"] == 8
    assert report["overall"]["psnr"] == pytest.approx(_psnr_reference(composites, images), abs=1e-4)
    assert [row["count"] for row in report["buckets"]] == _bucket_counts(masks)


def _baseline_fill(method: str, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Independent fills of one `[3, H, W]` image in [-1, 1] (hole `[H, W]` bool)."""
    if method == "zero":
        return np.zeros_like(image)
    if method == "mean":
        return np.broadcast_to(image[:, ~hole].mean(axis=1)[:, None, None], image.shape)
    return inpaint_biharmonic(image.transpose(1, 2, 0), hole, channel_axis=-1).transpose(2, 0, 1)


@pytest.mark.parametrize("method", ["zero", "mean", "biharmonic"])
def test_eval_scores_each_baseline_on_the_same_images_and_masks(tmp_path, method):
    report = _evaluate(tmp_path, f"baseline={method}")
    images, masks = _test_items(tmp_path)
    composites = []
    for image, mask in zip(images.double().numpy(), masks.numpy(), strict=True):
        hole = mask[0] > 0.5
        composites.append(np.where(hole, _baseline_fill(method, image, hole), image))
    expected = _psnr_reference(torch.from_numpy(np.stack(composites)), images)
    assert report["overall"]["count"] == 8
    assert report["overall"]["psnr"] == pytest.approx(expected, abs=1e-4)
    assert [row["count"] for row in report["buckets"]] == _bucket_counts(masks)


def test_eval_needs_a_checkpoint_or_a_baseline(tmp_path):
    with pytest.raises(ValueError, match="baseline=zero"):
        run_eval(compose_config("eval", tmp_path, EVAL_OVERRIDES))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        run_eval(compose_config("eval", tmp_path, [*EVAL_OVERRIDES, f"ckpt={tmp_path / 'missing.ckpt'}"]))
