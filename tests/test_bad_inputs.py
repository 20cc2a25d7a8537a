"""Inputs a new user gets wrong: each is a message naming the key or file and the fix (issue 13)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.faces import SyntheticFaceSource
from datamodules.inpainting import InpaintingDataModule, ProceduralMaskSource
from facelab.cli.train import run_inpaint, run_train
from facelab.inference import inpaint_files
from facelab.io.checkpoints import UnreadableCheckpointError, load_checkpoint_dict
from tests.conftest import compose_config


def test_a_guide_given_as_a_value_names_the_group_and_its_choices(tiny_train_config):
    # Hydra wraps the module's ValueError in an InstantiationException that quotes it.
    with pytest.raises(Exception, match=r"model\.guide='foo'.*model/guide=<edge\|hog\|none>"):
        run_train(tiny_train_config("model.guide=foo"))


@pytest.mark.parametrize(
    ("key", "value"), [("batch_size", 0), ("batch_size", -2), ("eval_batch_size", 0), ("num_workers", -1)]
)
def test_loader_sizes_are_config_errors_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"data\.{key}={value}: must be an integer >= "):
        InpaintingDataModule(SyntheticFaceSource(size=32), ProceduralMaskSource(size=32), **{key: value})


def test_batch_size_zero_stops_facelab_train_before_the_sampler(tiny_train_config):
    with pytest.raises(Exception, match=r"data\.batch_size=0: must be an integer >= 1"):
        run_train(tiny_train_config("data.batch_size=0"))


class Identity(torch.nn.Module):
    """Stands in for a checkpoint: returns the input, so only the mask checks are exercised."""

    def inpaint(self, image, mask):
        return {"pred": image}


def _image_and_mask(tmp_path, mask_value: int):
    image, mask = tmp_path / "face.png", tmp_path / "mask.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(image)
    Image.fromarray(np.full((32, 32), mask_value, np.uint8)).save(mask)
    return image, mask


@pytest.mark.parametrize(
    ("mask_value", "white_is_hole", "expected"),
    [
        (0, True, "all black: with mask_white_is_hole=true no pixel is a hole.*mask_white_is_hole=false"),
        (255, True, "all white: with mask_white_is_hole=true every pixel is a hole.*hole=false"),
        (255, False, "all white: with mask_white_is_hole=false no pixel is a hole.*mask_white_is_hole=true"),
    ],
)
def test_uniform_masks_warn_about_the_polarity(tmp_path, caplog, mask_value, white_is_hole, expected):
    image, mask = _image_and_mask(tmp_path, mask_value)
    with caplog.at_level(logging.WARNING, logger="facelab.inference"):
        inpaint_files(Identity(), image, mask, tmp_path / "out.png", white_is_hole=white_is_hole)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mask.png" in warnings[0]
    assert __import__("re").search(expected, warnings[0]), warnings[0]


def test_a_mask_with_a_hole_does_not_warn(tmp_path, caplog):
    image, mask = _image_and_mask(tmp_path, 0)
    hole = np.zeros((32, 32), np.uint8)
    hole[8:16, 8:16] = 255
    Image.fromarray(hole).save(mask)
    with caplog.at_level(logging.WARNING, logger="facelab.inference"):
        inpaint_files(Identity(), image, mask, tmp_path / "out.png")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


TORCH_ADVICE = ("weights_only=False", "`weights_only` set to `False`", "add_safe_globals", "trust")


@pytest.mark.parametrize("content", ["random", "text", "numpy_pickle"])
def test_an_unreadable_checkpoint_is_refused_without_torchs_unsafe_advice(tmp_path, content):
    path = tmp_path / "downloaded.ckpt"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif content == "text":
        path.write_text("hello world")
    else:  # a pickle naming a class torch does not allow as data
        torch.save({"array": np.zeros(3)}, path)
    with pytest.raises(UnreadableCheckpointError, match="downloaded.ckpt") as error:
        load_checkpoint_dict(path, what="ckpt")
    assert not any(advice in str(error.value) for advice in TORCH_ADVICE), str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__, "torch's message stays hidden"


def test_facelab_inpaint_refuses_a_random_checkpoint_file_cleanly(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    image, mask = _image_and_mask(tmp_path, 0)
    cfg = compose_config(
        "inpaint", tmp_path / "run", [f"ckpt={path}", f"image={image}", f"mask={mask}", "out=o.png"]
    )
    with pytest.raises(ValueError, match="(?s)random.ckpt.*facelab-train") as error:
        run_inpaint(cfg)
    assert not any(advice in str(error.value) for advice in TORCH_ADVICE), str(error.value)
