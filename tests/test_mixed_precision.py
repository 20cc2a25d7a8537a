"""The GPU paths, run on the CPU: bf16 autocast and channels_last fits against the float32 fit, the float32
islands under autocast (HOG, discriminators), TF32 by config, and torch.compile of the generators."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from hydra.utils import instantiate

from facelab.cli.train import run_train
from facelab.ops.guides import HOGGuide
from lightning_modules.inpainting_stage import GANStage

# Two batches of 4 at 32 px, every optimiser: 8 steps of the both-stages fit.
FEW_STEPS = ["data.faces.train_length=8", "trainer.limit_val_batches=1", "model.mode=both"]
# bf16 keeps 8 mantissa bits (rounding 2^-9 = 0.2 % per op) in the generators; the HOG, the discriminators
# and the losses stay float32. Measured on this machine: every logged loss of both steps within 2.4e-4
# (relative) of float32; the tolerance leaves 20x room for other CPUs' kernels.
BF16_LOSS_RTOL = 5e-3
# channels_last changes only the memory layout, so the arithmetic differs by summation order alone
# (measured: 1.3e-7).
CHANNELS_LAST_LOSS_RTOL = 1e-5


def _step_losses(run_dir) -> dict[str, list[float]]:
    """Every logged per-step training loss of the run, in step order."""
    (metrics_file,) = (run_dir / "csv").glob("*/metrics.csv")
    losses: dict[str, list[float]] = {}
    for row in csv.DictReader(open(metrics_file)):
        for key, value in row.items():
            if key.startswith("train/") and key.endswith("_step") and value:
                losses.setdefault(key, []).append(float(value))
    return losses


@pytest.fixture(scope="module")
def float32_losses(tmp_path_factory):
    from tests.conftest import TINY, compose_config

    run_dir = tmp_path_factory.mktemp("float32")
    run_train(compose_config("train", run_dir, [*TINY, *FEW_STEPS]))
    return _step_losses(run_dir)


def _fit(tiny_train_config, tmp_path, *overrides) -> dict[str, list[float]]:
    run_dir = tmp_path / "run"
    run_train(tiny_train_config(*FEW_STEPS, *overrides, output_dir=run_dir))
    return _step_losses(run_dir)


def _relative_differences(losses, reference) -> dict[str, float]:
    return {
        key: max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses[key], reference[key], strict=True))
        for key in reference
    }


@pytest.mark.slow
def test_bf16_autocast_fit_stays_finite_and_close_to_float32(tiny_train_config, tmp_path, float32_losses):
    losses = _fit(tiny_train_config, tmp_path, "trainer.precision=bf16-mixed")
    assert set(losses) == set(float32_losses) and len(losses["train/inpaint_g_l1_step"]) == 2
    assert all(math.isfinite(v) for values in losses.values() for v in values)
    differences = _relative_differences(losses, float32_losses)
    assert max(differences.values()) < BF16_LOSS_RTOL, differences
    assert losses != float32_losses, "bf16-mixed must really run the generators in bf16"


@pytest.mark.slow
def test_channels_last_fit_equals_float32(tiny_train_config, tmp_path, float32_losses):
    losses = _fit(tiny_train_config, tmp_path, "model.channels_last=true")
    differences = _relative_differences(losses, float32_losses)
    assert max(differences.values()) < CHANNELS_LAST_LOSS_RTOL, differences


def test_channels_last_puts_every_conv_weight_in_nhwc(tiny_train_config):
    model = instantiate(tiny_train_config("model.channels_last=true").model, _convert_="all")
    weights = [p for name, p in model.named_parameters() if p.ndim == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    out = model.eval().inpaint(image, mask)
    plain = instantiate(tiny_train_config().model, _convert_="all").eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(out["pred"], plain.inpaint(image, mask)["pred"], rtol=1e-5, atol=1e-5)


def test_hog_guide_and_discriminator_stay_float32_under_autocast():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    stage = GANStage("inpaint", torch.nn.Identity(), _tiny_discriminator())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guide = HOGGuide().compute(images.bfloat16())
        logits = stage.discriminate(images.bfloat16())
        conv = torch.nn.functional.conv2d(images, torch.ones(1, 3, 3, 3))  # what autocast does elsewhere
    assert conv.dtype == torch.bfloat16, "the test must run where autocast lowers convolutions"
    assert guide.dtype == torch.float32 and logits.dtype == torch.float32
    torch.testing.assert_close(guide, HOGGuide().compute(images.bfloat16().float()))


def _tiny_discriminator():
    from facelab.nets.inpaint import PatchDiscriminator

    return PatchDiscriminator(3, 4)


def test_float32_matmul_precision_by_config(tiny_train_config):
    from facelab.cli.train import _set_float32_precision

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        _set_float32_precision(tiny_train_config("float32_matmul_precision=high"))
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        _set_float32_precision(tiny_train_config())
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
        with pytest.raises(ValueError, match="float32_matmul_precision='fast'"):
            _set_float32_precision(tiny_train_config("float32_matmul_precision=fast"))
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_compile_generators_compiles_in_place_at_fit_setup(tiny_train_config):
    model = instantiate(tiny_train_config("model.compile_generators=true").model, _convert_="all")
    keys = list(model.state_dict())
    model.setup("validate")
    assert model.inpaint_stage.generator._compiled_call_impl is None, "only a fit compiles"
    model.setup("fit")
    for stage in model.stages:
        assert stage.generator._compiled_call_impl is not None
        assert stage.discriminator._compiled_call_impl is None
    assert list(model.state_dict()) == keys, "state-dict keys unchanged: checkpoints stay loadable"


def test_gpu_experiment_composes_as_a_cluster_user_launches_it(tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config("train", tmp_path, ["trainer=gpu", "experiment=hog_celeba256"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.benchmark is True
    assert cfg.trainer.precision == "bf16-mixed" and cfg.float32_matmul_precision == "high"
    assert cfg.model.channels_last is True and cfg.model.compile_generators is True
    assert cfg.data.num_workers > 0 and cfg.data.pin_memory is True
    model = instantiate(cfg.model, _convert_="all")  # EdgeConnect's full-size nets build
    assert model.inpaint_stage.generator.encoder[1].out_channels == 64
