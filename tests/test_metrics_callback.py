"""callbacks.metrics.ImageMetrics inside real Trainers: files, logs, start-up errors, and DDP on 2 CPU
processes (gloo) giving the numbers of 1 process, with the sampler's padded duplicates left out.

The DDP test uses Lightning's `ddp_fork`: the same launcher, DistributedSampler and gloo collectives as
`ddp_spawn`, but the children inherit the imported modules instead of re-importing Lightning (~15 s each on a
shared 2-core machine). It runs with one intra-op thread, so no OpenMP thread pool is live across the fork.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from skimage.metrics import peak_signal_noise_ratio
from torch.utils.data import DataLoader

from callbacks.metrics import ImageMetrics
from facelab.metrics import MissingWeightsError
from facelab.ops.masks import BUCKET_NAMES, bucket_index
from lightning_modules.baselines import ClassicalInpainting
from tests.metric_helpers import MaskedImages, TinyFeatures


def _trainer(devices: int = 1, **options) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        logger=options.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **options,
    )


def _numbers_equal(first, second) -> bool:
    if isinstance(first, float) and isinstance(second, float):
        both_nan = math.isnan(first) and math.isnan(second)
        return both_nan or first == pytest.approx(second, rel=1e-6, abs=1e-9)
    return first == second


def test_two_processes_equal_one_and_padding_is_not_counted(tmp_path):
    # 7 items on 2 ranks in batches of 2: the DistributedSampler pads rank 1 with a repeat of item 0.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reports = {}
    try:
        for devices in (1, 2):
            callback = ImageMetrics(
                tmp_path / str(devices),
                stages=["test"],
                metrics=["psnr", "ssim", "l1", "fid", "kid"],
                feature_extractor=TinyFeatures(),
                settings={"kid_capacity": 4, "kid_subsets": 5, "kid_subset_size": 3},
            )
            loader = DataLoader(MaskedImages(7), batch_size=2)
            _trainer(devices, callbacks=[callback]).test(ClassicalInpainting("mean"), dataloaders=loader)
            reports[devices] = json.loads((tmp_path / str(devices) / "metrics.json").read_text())
    finally:
        torch.set_num_threads(threads)
    single, double = reports[1], reports[2]
    assert single["overall"]["count"] == 7 and double["overall"]["count"] == 7
    for one, two in zip(
        [single["overall"], *single["buckets"]], [double["overall"], *double["buckets"]], strict=True
    ):
        assert one.keys() == two.keys()
        mismatched = {k: (one[k], two[k]) for k in one if not _numbers_equal(one[k], two[k])}
        assert not mismatched, mismatched
    assert math.isfinite(single["overall"]["fid"]) and math.isfinite(single["overall"]["kid"])


def _expected_mean_fill_psnr(dataset: MaskedImages) -> list[float]:
    """Independent reference: numpy mean fill, 8-bit rounding, skimage PSNR."""
    values = []
    for image, mask in zip(dataset.images.numpy(), dataset.masks.numpy(), strict=True):
        known = mask[0] < 0.5
        filled = np.where(known, image, image[:, known].mean(axis=1)[:, None, None])
        prediction, target = ((x + 1) / 2 for x in (filled, image))
        prediction, target = (np.round(np.clip(x, 0, 1) * 255) / 255 for x in (prediction, target))
        values.append(peak_signal_noise_ratio(target, prediction, data_range=1))
    return values


def test_files_logs_and_numbers_of_one_evaluation(tmp_path):
    dataset = MaskedImages(9)
    callback = ImageMetrics(tmp_path, stages=["test"], metrics=["psnr", "ssim", "l1"])
    loggers = [
        CSVLogger(tmp_path, name="csv", version=""),
        TensorBoardLogger(tmp_path, name="tb", version=""),
    ]
    trainer = _trainer(callbacks=[callback], logger=loggers)
    trainer.test(ClassicalInpainting("mean"), dataloaders=DataLoader(dataset, batch_size=4))

    report = json.loads((tmp_path / "metrics.json").read_text())
    expected = _expected_mean_fill_psnr(dataset)
    assert report["overall"]["psnr"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert trainer.callback_metrics["test/metrics/psnr"].item() == pytest.approx(np.mean(expected), abs=1e-4)
    ratios = dataset.masks.mean(dim=(1, 2, 3)).numpy()
    expected_counts = [sum(bucket_index(r) == b for r in ratios) for b in range(len(BUCKET_NAMES))]
    assert [row["count"] for row in report["buckets"]] == expected_counts
    for bucket, row in enumerate(report["buckets"]):
        members = [v for v, r in zip(expected, ratios, strict=True) if bucket_index(r) == bucket]
        if members:
            assert row["psnr"] == pytest.approx(np.mean(members), abs=1e-4)
        else:
            assert math.isnan(row["psnr"])

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["group"] for r in rows] == ["overall", *BUCKET_NAMES]
    assert float(rows[0]["ssim"]) == pytest.approx(report["overall"]["ssim"])
    plot = Image.open(tmp_path / "metrics.png").convert("RGB")
    assert plot.size == (3 * 340, 250) and (31, 119, 180) in {c for _, c in plot.getcolors(1 << 16)}
    assert not list(tmp_path.glob(".metrics.*.tmp")), "temp files are renamed into place"

    logged = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    assert float(logged[-1]["test/metrics/psnr"]) == pytest.approx(np.mean(expected), abs=1e-4)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert any(tag.startswith("test/metrics/table") for tag in events.Tags()["tensors"])


class CountingBaseline(ClassicalInpainting):
    """Counts test steps, to show that an error came before the first batch."""

    steps = 0

    def test_step(self, batch, batch_idx):
        CountingBaseline.steps += 1
        return super().test_step(batch, batch_idx)


def test_missing_weights_stop_the_run_at_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    callback = ImageMetrics(tmp_path, stages=["test"], metrics=["psnr", "lpips_vgg"])
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        _trainer(callbacks=[callback]).test(CountingBaseline(), dataloaders=DataLoader(MaskedImages(2)))
    assert CountingBaseline.steps == 0 and not (tmp_path / "metrics.json").exists()


class UnmaskedPairs(torch.utils.data.Dataset):
    """Reconstruction-style items: an image and no mask."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index):
        return {"image": torch.full((3, 16, 16), 0.1 * index)}


class Reconstruction(pl.LightningModule):
    """Returns a slightly brightened image as its reconstruction."""

    def test_step(self, batch, batch_idx):
        return {"composite": (batch["image"] + 0.2).clamp(-1, 1), "image": batch["image"]}


def test_buckets_off_for_tasks_without_masks(tmp_path):
    callback = ImageMetrics(tmp_path, stages=["test"], metrics=["l1"], buckets="none")
    loader = DataLoader(UnmaskedPairs(), batch_size=2)
    _trainer(callbacks=[callback]).test(Reconstruction(), dataloaders=loader)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["buckets"] == [] and report["overall"]["count"] == 3
    assert report["overall"]["l1"] == pytest.approx(0.1, abs=1 / 255)  # 0.2 in [-1, 1] is 0.1 in [0, 1]
    assert not (tmp_path / "metrics.png").exists()  # nothing to plot against hole ratio
    bucketed = ImageMetrics(tmp_path, stages=["test"], metrics=["l1"], buckets="all")
    with pytest.raises(ValueError, match="mask"):
        _trainer(callbacks=[bucketed]).test(Reconstruction(), dataloaders=DataLoader(UnmaskedPairs()))


class GuideOnly(pl.LightningModule):
    """Like mode=shape: its evaluation step returns visuals but no image prediction."""

    def test_step(self, batch, batch_idx):
        return {"image": batch["image"], "guide": batch["image"][:, :1]}


def test_steps_without_a_prediction_are_skipped_with_a_warning(tmp_path):
    callback = ImageMetrics(tmp_path, stages=["test"], metrics=["l1"])
    with pytest.warns(UserWarning, match="returned no 'composite'"):
        _trainer(callbacks=[callback]).test(GuideOnly(), dataloaders=DataLoader(MaskedImages(2)))
    assert not (tmp_path / "metrics.json").exists() and "test" not in callback.results


def test_predict_stage_and_wandb_table(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    tables = []
    monkeypatch.setattr(
        WandbLogger,
        "log_table",
        lambda self, key, columns, data, step=None: tables.append((key, columns, data)),
    )
    callback = ImageMetrics(tmp_path, stages=["predict"], metrics=["psnr", "l1"])
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)  # WANDB_MODE=disabled in tests
    loader = DataLoader(MaskedImages(5), batch_size=2)
    _trainer(callbacks=[callback], logger=logger).predict(ClassicalInpainting("zero"), dataloaders=loader)
    report = json.loads((tmp_path / "predict_metrics.json").read_text())
    assert report["stage"] == "predict" and report["overall"]["count"] == 5
    ((key, columns, data),) = tables
    assert key == "predict/metrics/table"
    assert columns[:4] == ["group", "hole_ratio_low", "hole_ratio_high", "count"]
    assert [row[0] for row in data] == ["overall", *BUCKET_NAMES] and data[0][3] == 5
