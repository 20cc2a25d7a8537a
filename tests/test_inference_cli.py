"""facelab-inpaint: the inference round trip on files, and the real console scripts."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import facelab.cli.train
from datamodules.synthetic_faces import render_face
from facelab.cli.train import run_inpaint, run_train
from facelab.io.masks import MaskFileError
from facelab.ops.masks import procedural_mask
from tests.conftest import TINY, compose_config

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A tiny both-stages fit at 32 px (module-scoped: several tests read it)."""
    run_dir = tmp_path_factory.mktemp("fit")
    run_train(compose_config("train", run_dir, [*TINY, "model.mode=both"]))
    return run_dir / "checkpoints" / "last.ckpt"


def _write_pair(folder: Path, index: int, size: int = 32) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    image = render_face(size, seed=7, index=index).image
    hole = procedural_mask(size, seed=7, index=index, hole_ratio=(0.1, 0.4)) > 0.5
    image_path, mask_path = folder / f"face{index}.png", folder / "masks" / f"face{index}.png"
    mask_path.parent.mkdir(exist_ok=True)
    Image.fromarray(image).save(image_path)
    Image.fromarray((hole * 255).astype(np.uint8)).save(mask_path)  # white = hole
    return image_path, mask_path, image, hole


def _inpaint(tmp_path, ckpt, image, mask, out, *extra):
    cfg = compose_config(
        "inpaint",
        tmp_path / "inpaint_run",
        [f"ckpt={ckpt}", f"image={image}", f"mask={mask}", f"out={out}", "device=cpu", *extra],
    )
    return run_inpaint(cfg)


@pytest.mark.slow
def test_single_image_round_trip_keeps_known_pixels(trained_checkpoint, tmp_path):
    image_path, mask_path, image, hole = _write_pair(tmp_path / "in", 0)
    out = tmp_path / "result.png"
    assert _inpaint(tmp_path, trained_checkpoint, image_path, mask_path, out) == [out]
    result = np.asarray(Image.open(out))
    assert result.shape == image.shape
    assert np.array_equal(result[~hole], image[~hole]), "pixels outside the hole must be unchanged"
    assert not np.array_equal(result[hole], image[hole]), "the hole must be filled by the model"


@pytest.mark.slow
def test_folder_round_trip_and_resize_option(trained_checkpoint, tmp_path):
    pairs = [_write_pair(tmp_path / "in", i, size=40) for i in range(2)]  # 40 px: not the training size
    written = _inpaint(
        tmp_path, trained_checkpoint, tmp_path / "in", tmp_path / "in" / "masks", tmp_path / "out", "size=32"
    )
    assert sorted(p.name for p in written) == ["face0.png", "face1.png"]
    for (_, _, image, hole), path in zip(pairs, sorted(written), strict=True):
        result = np.asarray(Image.open(path))
        assert np.array_equal(result[~hole], image[~hole])


@pytest.mark.slow
def test_inpaint_bad_inputs_name_the_problem(trained_checkpoint, tmp_path):
    image_path, mask_path, _, _ = _write_pair(tmp_path / "in", 0)
    with pytest.raises(FileNotFoundError, match="ckpt="):
        _inpaint(tmp_path, tmp_path / "nope.ckpt", image_path, mask_path, tmp_path / "o.png")
    with pytest.raises(FileNotFoundError, match="image="):
        _inpaint(tmp_path, trained_checkpoint, tmp_path / "missing.png", mask_path, tmp_path / "o.png")
    wrong_size = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(wrong_size)
    with pytest.raises(ValueError, match="wrong.png.*16x16"):
        _inpaint(tmp_path, trained_checkpoint, image_path, wrong_size, tmp_path / "o.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="corrupt.png"):
        _inpaint(tmp_path, trained_checkpoint, corrupt, mask_path, tmp_path / "o.png")
    mask_path.unlink()
    with pytest.raises(FileNotFoundError, match="face0"):
        _inpaint(tmp_path, trained_checkpoint, tmp_path / "in", tmp_path / "in" / "masks", tmp_path / "out")


class WhiteFill(torch.nn.Module):
    """Stands in for a checkpoint: predicts white everywhere, so the mask alone decides what changes."""

    def inpaint(self, image, mask):
        return {"pred": torch.ones_like(image)}


def test_inpaint_reads_masks_with_the_shared_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(facelab.cli.train, "_load_checkpoint_model", lambda model_config, path: WhiteFill())
    image_path, mask_path, image, hole = _write_pair(tmp_path / "in", 0)
    out = tmp_path / "result.png"
    _inpaint(tmp_path, "unused.ckpt", image_path, mask_path, out)
    result = np.asarray(Image.open(out))
    assert np.array_equal(result[~hole], image[~hole]) and np.all(result[hole] == 255)
    # A photo given as the mask is refused before anything is written, naming the file and the fix.
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()[:32, :32]).save(photo)
    with pytest.raises(MaskFileError, match="astronaut.png is not a binary mask.*photo.*white = hole"):
        _inpaint(tmp_path, "unused.ckpt", image_path, photo, tmp_path / "photo_result.png")
    assert not (tmp_path / "photo_result.png").exists()


def _run(*args, cwd):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_console_scripts_are_hydra_apps(tmp_path):
    for script in ("facelab-train", "facelab-eval", "facelab-inpaint"):
        result = _run(BIN / script, "--help", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Powered by Hydra" in result.stdout and "== Config ==" in result.stdout
    job = _run(BIN / "facelab-train", "--cfg", "job", "model/guide=edge", "data.faces.size=128", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    assert "kind: edge" in job.stdout and "size: 128" in job.stdout


@pytest.mark.slow
def test_multirun_launches_one_job_per_value(tmp_path):
    overrides = [o for o in TINY if not o.startswith("~")] + ["callbacks=none", "trainer.max_epochs=1"]
    result = _run(
        BIN / "facelab-train",
        "-m",
        "model/guide=hog,none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    finals = sorted((tmp_path / "sweep").glob("*/final_metrics.json"))
    assert [p.parent.name for p in finals] == ["0", "1"]
    summary = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert [(row["job"], row["model/guide"], row["status"]) for row in summary] == [
        ("0", "hog", "done"),
        ("1", "none", "done"),
    ]
    assert all(float(row["val/psnr"]) > 0 for row in summary), "each run's final metrics are in the table"
    assert "| job |" in (tmp_path / "sweep" / "summary.md").read_text()
