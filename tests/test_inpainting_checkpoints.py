"""Checkpoints written before the inpainting stages became `GANStage` objects still load and behave.

tests/data/inpainting_before_gan_stages.ckpt was written by facelab-train at commit e96e2f7 (the module with
`shape_generator.*` attributes and `networks` / `optim` dicts) with the tiny test config at base width 4,
one step of mode=both; tests/data/inpainting_before_gan_stages_outputs.pt holds that code's `inpaint()` of
a fixed image and mask with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facelab.cli.train import run_train
from facelab.ops.hog_native import kernel_off
from lightning_modules.inpainting import GuidedInpainting
from lightning_modules.inpainting_stage import upgrade_state_dict

DATA = Path(__file__).parent / "data"
OLD_CHECKPOINT = DATA / "inpainting_before_gan_stages.ckpt"
OLD_OUTPUTS = DATA / "inpainting_before_gan_stages_outputs.pt"


def _old_checkpoint() -> dict:
    return torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)


def test_old_checkpoint_has_the_old_layout():
    """Guards the fixture itself: it must really be of the layout the upgrade is for."""
    checkpoint = _old_checkpoint()
    assert "optim" in checkpoint["hyper_parameters"] and "optimizers" not in checkpoint["hyper_parameters"]
    assert any(k.startswith("shape_generator.") for k in checkpoint["state_dict"])


def test_old_checkpoint_loads_with_every_weight_in_its_stage():
    checkpoint = _old_checkpoint()
    model = GuidedInpainting.load_from_checkpoint(OLD_CHECKPOINT, map_location="cpu")
    own = model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        stage, role = key.split(".", 1)[0].split("_")
        new_key = f"{stage}_stage.{role}.{key.split('.', 1)[1]}"
        assert torch.equal(own[new_key], value), new_key
    assert len(own) == len(checkpoint["state_dict"])
    old = checkpoint["hyper_parameters"]
    assert model.shape_stage.generator.encoder[1].out_channels == old["networks"]["base_channels"]
    (g_optimizer, d_optimizer, *_) = [g for g in model.configure_optimizers()]
    assert g_optimizer.defaults["lr"] == pytest.approx(old["optim"]["lr"])
    assert d_optimizer.defaults["lr"] == pytest.approx(old["optim"]["lr"] * old["optim"]["d2g_lr"])


def test_old_checkpoint_inpaints_as_it_did():
    expected = torch.load(OLD_OUTPUTS, weights_only=True)
    model = GuidedInpainting.load_from_checkpoint(OLD_CHECKPOINT).eval()
    out = model.inpaint(expected["image"], expected["mask"])
    torch.testing.assert_close(out["guide"], expected["guide"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["pred"], expected["pred"], rtol=0, atol=1e-6)


def test_state_dict_upgrade_leaves_new_keys_alone():
    state = {"shape_generator.a": 1, "inpaint_discriminator.b.c": 2, "inpaint_stage.generator.d": 3, "x": 4}
    assert upgrade_state_dict(state) == {
        "shape_stage.generator.a": 1,
        "inpaint_stage.discriminator.b.c": 2,
        "inpaint_stage.generator.d": 3,
        "x": 4,
    }


@pytest.mark.slow
def test_the_same_fit_gives_the_same_weights_as_before(tiny_train_config, tmp_path):
    """The refactored training step is the old one: the fit that wrote the old checkpoint, rerun now. That fit
    computed its float32 HOG guide with the torch fast path; the compiled kernel bins a pixel within an ulp
    of a bound differently now and then (test_hog_fast.py), which Adam amplifies, so the rerun uses the same
    path to compare training steps, not HOG paths."""
    run_dir = tmp_path / "run"
    cfg = tiny_train_config(
        "model.networks.base_channels=4",
        "model.networks.discriminator_channels=4",
        "data.faces.train_length=4",
        "trainer.limit_val_batches=1",
        output_dir=run_dir,
    )
    with kernel_off():
        run_train(cfg)
    now = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    before = upgrade_state_dict(_old_checkpoint()["state_dict"])
    assert now["global_step"] == _old_checkpoint()["global_step"]
    assert set(now["state_dict"]) == set(before)
    for key, value in before.items():
        torch.testing.assert_close(now["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
