"""End-to-end fits through the real composed configs and the real entry-point function (tiny sizes)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from facelab.cli.train import run_train

GENERATORS = {"shape": "shape_stage.generator.", "inpaint": "inpaint_stage.generator."}


def _checkpoint(run_dir, name="last.ckpt"):
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)


def _logged_scalars(run_dir):
    """Rows of the CSV logger's one start of this run (csv/<start time>/metrics.csv)."""
    (metrics_file,) = (run_dir / "csv").glob("*/metrics.csv")
    return list(csv.DictReader(open(metrics_file)))


def _fit(make_config, run_dir, *overrides):
    cfg = make_config(*overrides, output_dir=run_dir)
    run_train(cfg)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "guide", "stages"),
    [
        ("shape", "hog", ("shape",)),
        ("inpaint", "hog", ("inpaint",)),
        ("both", "hog", ("shape", "inpaint")),
        ("joint", "hog", ("shape", "inpaint")),
        ("both", "edge", ("shape", "inpaint")),
        ("joint", "edge", ("shape", "inpaint")),
        ("both", "none", ("inpaint",)),
    ],
)
def test_fit_each_mode_and_guide(tiny_train_config, tmp_path, mode, guide, stages):
    run_dir = tmp_path / "run"
    _fit(tiny_train_config, run_dir, f"model.mode={mode}", f"model/guide={guide}")
    checkpoint = _checkpoint(run_dir)
    keys = checkpoint["state_dict"].keys()
    for stage, prefix in GENERATORS.items():
        assert any(k.startswith(prefix) for k in keys) == (stage in stages), (stage, sorted(keys)[:5])
    assert checkpoint["global_step"] > 0
    assert not any(k.startswith("perceptual_style.") for k in keys), "frozen VGG must stay out of checkpoints"
    rows = list(csv.DictReader(open(run_dir / "val_history.csv")))
    assert rows, "one validation row per epoch"
    metric = "val/guide_l1" if stages == ("shape",) else "val/psnr"
    assert math.isfinite(float(rows[-1][metric]))
    assert list((run_dir / "samples").glob("val_epoch000_*.png")), "a sample grid per validation"
    assert (run_dir / "final_metrics.json").exists()


@pytest.mark.slow
def test_cascade_freezes_stage_one_and_trains_stage_two(tiny_train_config, tmp_path):
    shape_dir, cascade_dir = tmp_path / "shape", tmp_path / "cascade"
    _fit(tiny_train_config, shape_dir, "model.mode=shape")
    shape_weights = _checkpoint(shape_dir)["state_dict"]
    _fit(
        tiny_train_config,
        cascade_dir,
        "model.mode=cascade",
        f"model.init_from={shape_dir}/checkpoints/last.ckpt",
    )
    cascade_weights = _checkpoint(cascade_dir)["state_dict"]
    for key, value in shape_weights.items():
        if key.startswith("shape_stage.generator."):
            assert torch.equal(cascade_weights[key], value), f"{key} must stay frozen in cascade mode"
    assert any(k.startswith("inpaint_stage.generator.") for k in cascade_weights)


@pytest.mark.slow
def test_cascade_without_stage_one_weights_is_a_clear_error(tiny_train_config, tmp_path):
    with pytest.raises(ValueError, match="model.init_from"):
        _fit(tiny_train_config, tmp_path / "run", "model.mode=cascade")


@pytest.mark.slow
def test_checkpoint_save_and_resume_continues_the_run(tiny_train_config, tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_train_config, run_dir, "model.mode=both")
    first = _checkpoint(run_dir)
    _fit(tiny_train_config, run_dir, "model.mode=both", "trainer.max_epochs=2", "ckpt_path=last")
    second = _checkpoint(run_dir)
    assert first["epoch"] == 0 and second["epoch"] == 1
    assert second["global_step"] == 2 * first["global_step"], "the resumed fit continues, not restarts"
    rows = list(csv.DictReader(open(run_dir / "val_history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1], "the metric table continues across the resume"


@pytest.mark.parametrize(("mode", "guide"), [("shape", "none"), ("joint", "none"), ("typo", "hog")])
def test_invalid_mode_and_guide_combinations(tiny_train_config, tmp_path, mode, guide):
    with pytest.raises(Exception, match="model.mode"):
        _fit(tiny_train_config, tmp_path / "run", f"model.mode={mode}", f"model/guide={guide}")


def _random_vgg16_file(path):
    """A randomly initialised VGG16 trunk saved with torchvision's keys (the real file's format)."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.mark.slow
def test_fit_with_perceptual_and_style_losses(tiny_train_config, tmp_path):
    vgg_file = _random_vgg16_file(tmp_path / "vgg16-397923af.pth")
    run_dir = tmp_path / "run"
    _fit(
        tiny_train_config,
        run_dir,
        "model.losses.inpaint.perceptual=0.1",
        "model.losses.inpaint.style=250",
        f"model.losses.vgg_weights={vgg_file}",
    )
    logged = _logged_scalars(run_dir)
    style = [float(r["train/inpaint_g_style_step"]) for r in logged if r.get("train/inpaint_g_style_step")]
    assert style and all(math.isfinite(v) and v > 0 for v in style)
    assert not any(k.startswith("perceptual_style.") for k in _checkpoint(run_dir)["state_dict"])


@pytest.mark.slow
def test_missing_vgg_weights_stop_the_fit_at_start_up(tiny_train_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth") as error:
        _fit(tiny_train_config, tmp_path / "run", "model.losses.inpaint.perceptual=0.1")
    assert "download.pytorch.org/models/vgg16-397923af.pth" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing trained before the error"


@pytest.mark.slow
@pytest.mark.parametrize("gan", ["lsgan", "hinge"])
def test_gan_loss_kind_by_config(tiny_train_config, tmp_path, gan):
    run_dir = tmp_path / "run"
    _fit(tiny_train_config, run_dir, f"model.losses.gan={gan}")
    assert _checkpoint(run_dir)["hyper_parameters"]["losses"]["gan"] == gan
    logged = _logged_scalars(run_dir)
    d_losses = [
        float(r["train/inpaint_d_adversarial_step"])
        for r in logged
        if r.get("train/inpaint_d_adversarial_step")
    ]
    assert d_losses and all(math.isfinite(v) for v in d_losses)
    if gan == "hinge":  # hinge's D loss is (relu(1 - real) + relu(1 + fake)) / 2 >= 0, ~1 at the start
        assert all(v >= 0 for v in d_losses) and d_losses[0] > 0.5
    else:  # lsgan: MSE of sigmoid outputs, at most 1
        assert all(0 <= v <= 1 for v in d_losses)


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_train_config, tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_train_config, run_dir)
    good = _checkpoint(run_dir)
    # NaN holes poison the generator input, hence every loss, from the first step of the resumed fit.
    with pytest.raises(FloatingPointError, match="Non-finite .* loss .*ckpt_path=last"):
        _fit(tiny_train_config, run_dir, "trainer.max_epochs=2", "ckpt_path=last", "model.hole_fill=nan")
    kept = _checkpoint(run_dir)
    assert kept["global_step"] == good["global_step"]
    for key, value in good["state_dict"].items():
        assert torch.equal(kept["state_dict"][key], value), (
            f"{key} changed: a bad step reached the checkpoint"
        )


@pytest.mark.slow
def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_fit(tiny_train_config, tmp_path):
    """Data order, training masks and flips depend on (seed, epoch, item) only, and the checkpoint holds
    weights and optimiser state: stopping after epoch 0 and resuming must change nothing."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    more_data = ["data.faces.train_length=16", "trainer.max_epochs=2"]
    _fit(tiny_train_config, straight, *more_data)
    _fit(tiny_train_config, resumed, *more_data[:-1], "trainer.max_epochs=1")
    _fit(tiny_train_config, resumed, *more_data, "ckpt_path=last")
    expected, got = _checkpoint(straight), _checkpoint(resumed)
    assert got["global_step"] == expected["global_step"] == 2 * 4 * 4  # epochs x batches x optimizers
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs after resuming"


def test_training_order_masks_and_flips_are_a_function_of_seed_and_epoch():
    from datamodules.faces import SyntheticFaceSource
    from datamodules.inpainting import InpaintingDataModule, ProceduralMaskSource

    def epoch_batches(epoch, seed=0):
        module = InpaintingDataModule(
            SyntheticFaceSource(size=32, train_length=8),
            ProceduralMaskSource(size=32),
            batch_size=4,
            seed=seed,
        )
        module._current_epoch = lambda: epoch
        module.setup("fit")
        return list(module.train_dataloader())

    first, again = epoch_batches(0), epoch_batches(0)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    second = epoch_batches(1)
    assert not torch.equal(first[0]["mask"], second[0]["mask"]), "a new epoch draws new masks"
    names = lambda batches: [n for b in batches for n in b["meta"]["name"]]  # noqa: E731
    assert sorted(names(first)) == sorted(names(second)) and names(first) != names(second), "a new order"
    assert names(epoch_batches(0, seed=1)) != names(first)
