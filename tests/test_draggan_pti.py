"""DragGAN's optional Pivotal Tuning (PTI, lightning_modules/draggan_pti.py) on a tiny random 128 px StyleGAN2
with random VGG16 / AlexNet trunks: off by default; it lowers the photo's reconstruction error below the
inversion's; the drag renders with the photo's tuned generator; a photo tuned in a batch equals it tuned
alone; tuned weights survive a crash (mid-PTI and mid-drag) and come back from the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from skimage import data, transform

from facelab.cli.convert import convert_main
from facelab.fit.job import run_fit
from facelab.fit.records import FitRecords
from facelab.io.images import read_rgb, save_image, to_uint8
from facelab.nets.stylegan2_checkpoints import load_generator, save_generator
from facelab.nets.tuned_weights import call_per_item, flatten_weights
from tests.conftest import compose_config
from tests.fit_models import save_random_vgg16, tiny_generator
from tests.metric_helpers import random_trunk_state

SIZE = 128


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """The generator, the two LPIPS trunks and two 128 px photo crops (no alignment needed)."""
    folder = tmp_path_factory.mktemp("pti")
    save_generator(tiny_generator(img_resolution=SIZE), folder / "g128.pt")
    save_random_vgg16(folder / "vgg16.pth")
    torch.save(random_trunk_state("alex"), folder / "alexnet.pth")
    crops = {"face": data.astronaut()[20:320, 120:420], "cat": data.chelsea()[0:300, 50:350]}
    for name, crop in crops.items():
        resized = transform.resize(crop, (SIZE, SIZE), anti_aliasing=True)
        save_image(np.round(resized * 255).astype(np.uint8), folder / f"{name}.png")
    return {"root": folder, "generator": folder / "g128.pt"}


def write_manifest(assets: dict, path: Path, photos=("face", "cat")) -> Path:
    lines = [
        f"- {{item_id: {name}, photo: {assets['root']}/{name}.png, handle_points: [[60, 60]], "
        "target_points: [[60, 72]]}"
        for name in photos
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def pti_config(assets: dict, manifest: Path, out: Path, *overrides: str, experiment="draggan_photo_pti"):
    root = assets["root"]
    return compose_config(
        "fit",
        out.parent / f"hydra-{out.name}",
        [
            f"experiment={experiment}",
            f"manifest={manifest}",
            f"output_dir={out}",
            "align=false",
            f"fit.image_size={SIZE}",
            f"fit.module.generator_path={assets['generator']}",
            f"fit.module.inversion.lpips_trunk_path={root}/vgg16.pth",
            "fit.module.inversion.pca_samples=2000",
            f"fit.module.inversion.pca_cache_dir={root}/pca",
            "fit.module.inversion.perceptual_size=64",
            "fit.module.stages.invert.steps=8",
            "fit.module.stages.drag.steps=6",
            "fit.module.stages.drag.optimizer.lr=0.02",
            "fit.module.frame_every=3",
            "fit.module.frame_size=64",
            f"cache_dir={out.parent}/cache-{out.name}",
            "extras.print_config=false",
            "progress=lines",
            "checkpoint_every_n_steps=0",
            *(
                [
                    f"fit.module.pti.lpips_trunk_path={root}/alexnet.pth",
                    "fit.module.pti.lpips_threshold=0.0",  # random trunks: run every step
                    "fit.module.stages.pti.steps=10",
                    "fit.module.stages.pti.optimizer.lr=3e-3",
                ]
                if experiment == "draggan_photo_pti"
                else []
            ),
            *overrides,
        ],
    )


def load(out: Path, item_id: str, stage: str, name: str) -> torch.Tensor:
    return torch.load(out / "items" / item_id / stage / f"{name}.pt", weights_only=True)


def photo_tensor(assets: dict, name: str) -> torch.Tensor:
    return (
        torch.from_numpy(read_rgb(assets["root"] / f"{name}.png").copy()).permute(2, 0, 1).float() / 127.5 - 1
    )


def test_pti_is_off_by_default_and_needs_the_photo_stages(assets, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    manifest = write_manifest(assets, tmp_path / "photos.yaml")
    photo = pti_config(assets, manifest, tmp_path / "photo", experiment="draggan_photo")
    assert photo.fit.module.pti.enabled is False
    module = instantiate(photo.fit.module)
    assert module.stage_names == ["invert", "drag"] and module.image_stages == ("invert",)
    assert not hasattr(module, "pti_lpips")  # no LPIPS-alex loaded, nothing to tune
    plain = compose_config("fit", tmp_path / "plain", ["experiment=draggan", f"manifest={manifest}"])
    assert plain.fit.module.pti.enabled is False
    tuned = instantiate(pti_config(assets, manifest, tmp_path / "pti").fit.module)
    assert tuned.stage_names == ["invert", "pti", "drag"] and tuned.image_stages == ("invert", "pti")
    drag_only = compose_config(
        "fit",
        tmp_path / "drag_only",
        [
            "experiment=draggan",
            f"manifest={manifest}",
            f"fit.module.generator_path={assets['generator']}",
            "fit.module.pti.enabled=true",
        ],
    )
    with pytest.raises(InstantiationException, match="experiment=draggan_photo_pti"):
        instantiate(drag_only.fit.module)


@pytest.mark.slow
def test_the_pti_cache_key_names_the_pivot_and_every_pti_setting(assets, tmp_path):
    from hydra.utils import instantiate

    manifest = write_manifest(assets, tmp_path / "photos.yaml")

    def identities(*overrides: str) -> tuple[str, str]:
        module = instantiate(pti_config(assets, manifest, tmp_path / "key", *overrides).fit.module)
        return module.cache_identity("invert"), module.cache_identity("pti")

    invert, pti = identities()
    assert identities("fit.module.stages.drag.steps=3") == (invert, pti)  # the drag is not PTI's input
    for setting in (
        "fit.module.stages.pti.steps=11",
        "fit.module.stages.pti.optimizer.lr=1e-4",
        "fit.module.pti.lpips_threshold=0.05",
        "fit.module.pti.weights.l2=0.5",
        "fit.module.pti.locality.enabled=true",
    ):
        invert_now, pti_now = identities(setting)
        assert invert_now == invert and pti_now != pti, setting
    changed_pivot = identities("fit.module.stages.invert.steps=9")
    assert changed_pivot[0] != invert and changed_pivot[1] != pti


def test_each_item_runs_the_network_with_its_own_weights():
    from facelab.nets.tuned_weights import parameter_layout, unflatten

    synthesis = tiny_generator().synthesis
    flat = flatten_weights(synthesis)
    views = unflatten(flat, parameter_layout(synthesis)).values()
    assert all(torch.equal(v, p) for v, p in zip(views, synthesis.parameters(), strict=True))
    ws = torch.randn(2, synthesis.num_ws, synthesis.w_dim)
    with torch.no_grad():
        alone = [synthesis(ws[i : i + 1], noise_mode="const") for i in range(2)]  # each item in a batch of 1
        weights = flat.expand(2, -1).clone()
        assert torch.equal(call_per_item(synthesis, weights, ws, noise_mode="const"), torch.cat(alone))
        weights[1] *= 1.1  # only the second item's network changes
        mixed = call_per_item(synthesis, weights, ws, noise_mode="const")
    assert torch.equal(mixed[0], alone[0][0]) and not torch.allclose(mixed[1], alone[1][0], atol=1e-3)


@pytest.mark.slow
def test_without_pti_a_photo_job_tunes_nothing(assets, tmp_path):
    manifest = write_manifest(assets, tmp_path / "photos.yaml", photos=("face",))
    out = tmp_path / "plain"
    run_fit(pti_config(assets, manifest, out, experiment="draggan_photo"))
    assert FitRecords(out).read_record("face")["stages"] == ["invert", "drag"]
    assert (
        not (out / "items" / "face" / "pti").exists() and not (out / "stages" / "face" / "pti.json").exists()
    )


@pytest.fixture(scope="module")
def tuned_job(assets, tmp_path_factory) -> Path:
    """One PTI job over both photos in one batch."""
    folder = tmp_path_factory.mktemp("tuned")
    out = folder / "together"
    run_fit(pti_config(assets, write_manifest(assets, folder / "photos.yaml"), out, "batch_size=2"))
    return out


@pytest.mark.slow
def test_pti_lowers_the_photo_reconstruction_error_below_the_inversion_alone(assets, tuned_job):
    from facelab.metrics.perceptual import PerceptualDistance

    generator = load_generator(assets["generator"])
    lpips = PerceptualDistance("alex", weights_path=assets["root"] / "alexnet.pth")
    for name in ("face", "cat"):
        photo = photo_tensor(assets, name)[None]
        pivot = load(tuned_job, name, "invert", "photo_w")[None]
        weights = load(tuned_job, name, "pti", "photo_weights")[None]
        with torch.no_grad():
            inverted = generator.synthesis(pivot, noise_mode="const")
            tuned = call_per_item(generator.synthesis, weights, pivot, noise_mode="const")
        mse_inverted, mse_tuned = (inverted - photo).pow(2).mean(), (tuned - photo).pow(2).mean()
        lpips_inverted, lpips_tuned = (
            lpips((inverted + 1) / 2, (photo + 1) / 2),
            lpips((tuned + 1) / 2, (photo + 1) / 2),
        )
        assert mse_tuned < 0.9 * mse_inverted, (name, float(mse_inverted), float(mse_tuned))
        assert lpips_tuned < lpips_inverted, (name, float(lpips_inverted), float(lpips_tuned))
        record = FitRecords(tuned_job).read_record(name)
        assert record["stages"] == ["invert", "pti", "drag"]
        # the generator itself was tuned (not the latent): the pivot is the drag's start, unchanged
        assert not torch.equal(weights[0], flatten_weights(generator.synthesis))
        assert torch.equal(load(tuned_job, name, "drag", "ws")[6:], pivot[0, 6:])


@pytest.mark.slow
def test_the_drag_renders_with_the_photos_tuned_generator(assets, tuned_job):
    generator = load_generator(assets["generator"])
    for name in ("face", "cat"):
        pivot = load(tuned_job, name, "invert", "photo_w")[None]
        weights = load(tuned_job, name, "pti", "photo_weights")[None]
        with torch.no_grad():
            tuned = call_per_item(generator.synthesis, weights, pivot, noise_mode="const")
            untuned = generator.synthesis(pivot, noise_mode="const")
        start = read_rgb(tuned_job / "items" / name / "drag" / "start_image.png")
        assert np.array_equal(start, to_uint8(tuned[0]))
        assert not np.array_equal(start, to_uint8(untuned[0]))
        # the trajectory's first frame is the tuned generator's rendering of the start, resized
        small = torch.nn.functional.interpolate(tuned, size=(64, 64), mode="bilinear", antialias=True)
        first = ((small.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0]
        assert torch.equal(load(tuned_job, name, "drag", "frames")[0], first)
        final_ws = load(tuned_job, name, "drag", "ws")[None]
        with torch.no_grad():
            final = call_per_item(generator.synthesis, weights, final_ws, noise_mode="const")
        assert np.array_equal(read_rgb(tuned_job / "items" / name / "drag" / "image.png"), to_uint8(final[0]))


@pytest.mark.slow
def test_a_photo_tuned_in_a_batch_equals_it_tuned_alone(assets, tmp_path):
    """Bit for bit through the whole photo job: the inversion's W+, the tuned weights and the drag (on a
    CPU the generator's and LPIPS's layers run item by item, so no stage rounds by batch size)."""
    manifest = write_manifest(assets, tmp_path / "photos.yaml")
    together, alone = tmp_path / "together", tmp_path / "alone"
    for out, batch_size in ((together, 2), (alone, 1)):
        run_fit(
            pti_config(assets, manifest, out, f"batch_size={batch_size}")
        )
    for name in ("face", "cat"):
        for stage, output in (
            ("invert", "photo_w"), ("pti", "photo_weights"), ("drag", "ws"), ("drag", "handles")
        ):
            assert torch.equal(load(together, name, stage, output), load(alone, name, stage, output))
    face, cat = load(alone, "face", "pti", "photo_weights"), load(alone, "cat", "pti", "photo_weights")
    assert not torch.allclose(face, cat)  # two photos, two generators


@pytest.mark.slow
def test_a_photo_already_close_enough_stops_before_any_tuning_step(assets, tmp_path):
    out = tmp_path / "close"
    manifest = write_manifest(assets, tmp_path / "photos.yaml", photos=("face",))
    run_fit(pti_config(assets, manifest, out, "fit.module.pti.lpips_threshold=1e9"))
    assert FitRecords(out).read_record("face")["steps"]["pti"] == 0
    weights = load(out, "face", "pti", "photo_weights")
    assert torch.equal(weights, flatten_weights(load_generator(assets["generator"]).synthesis))


class CrashIn(pl.Callback):
    """Raises (a crash) after the `step`-th optimiser step of `stage`, once per stage."""

    crashed: set = set()

    def __init__(self, stage: str, step: int):
        self.stage, self.step = stage, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            pl_module.stage == self.stage
            and trainer.global_step == self.step
            and self.stage not in CrashIn.crashed
        ):
            CrashIn.crashed.add(self.stage)
            raise RuntimeError(f"simulated crash in {self.stage}")


@pytest.mark.slow
def test_tuned_weights_survive_crashes_and_are_not_tuned_again(assets, tmp_path):
    manifest = write_manifest(assets, tmp_path / "photos.yaml", photos=("face",))
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    CrashIn.crashed = set()
    crash = lambda stage, step: [  # noqa: E731
        f"+callbacks.crash._target_={__name__}.CrashIn",
        f"+callbacks.crash.stage={stage}",
        f"+callbacks.crash.step={step}",
        "checkpoint_every_n_steps=2",
    ]
    with pytest.raises(RuntimeError, match="crash in pti"):  # mid-PTI: resumes from its chunk checkpoint
        run_fit(pti_config(assets, manifest, cut, *crash("pti", 5)))
    with pytest.raises(RuntimeError, match="crash in drag"):  # after PTI: PTI is not redone
        run_fit(pti_config(assets, manifest, cut, *crash("drag", 3)))
    run_fit(pti_config(assets, manifest, cut))
    run_fit(pti_config(assets, manifest, whole))
    events = [e for e in FitRecords(cut).events() if e["event"] == "start"]
    pti_starts = [e for e in events if e["stage"] == "pti"]
    assert len(pti_starts) == 2 and Path(pti_starts[1]["resume"]).name == "chunk.ckpt"
    assert len([e for e in events if e["stage"] == "drag"]) == 2
    for stage, name in (("pti", "photo_weights"), ("drag", "ws"), ("drag", "handles")):
        torch.testing.assert_close(
            load(cut, "face", stage, name), load(whole, "face", stage, name), rtol=1e-5, atol=1e-6
        )
    # Another job over the same photo and cache reads the tuned weights back instead of tuning again.
    again = tmp_path / "again"
    run_fit(pti_config(assets, manifest, again, f"cache_dir={tmp_path}/cache-whole"))
    assert not [
        e for e in FitRecords(again).events() if e["event"] == "start" and e["stage"] in ("invert", "pti")
    ]
    assert torch.equal(
        load(again, "face", "pti", "photo_weights"), load(whole, "face", "pti", "photo_weights")
    )


def test_locality_latent_and_terms_follow_the_official_regulariser(tmp_path):
    from facelab.losses.pti import locality_terms, locality_ws
    from facelab.metrics.perceptual import PerceptualDistance

    torch.manual_seed(0)
    pivot, sampled = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    ball = locality_ws(pivot, sampled, alpha=30.0)  # get_morphed_w_code: 30 along the unit direction
    for item in range(2):
        direction = (sampled[item] - pivot[item]).flatten()
        expected = pivot[item].flatten() + 30.0 * direction / direction.norm()
        assert torch.allclose(ball[item].flatten(), expected, atol=1e-5)
    torch.save(random_trunk_state("alex"), tmp_path / "alexnet.pth")
    lpips = PerceptualDistance("alex", weights_path=tmp_path / "alexnet.pth")
    tuned, original = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    terms = locality_terms(tuned, original, lpips, {"l2": 0.1, "lpips": 0.3})
    assert torch.allclose(terms["locality_l2"], 0.1 * (tuned - original).pow(2).mean(dim=(1, 2, 3)))
    reference = lpips((tuned + 1) / 2, (original + 1) / 2)  # the metric's own LPIPS, images in [0, 1]
    assert torch.allclose(terms["locality_lpips"], 0.3 * reference, atol=1e-6)
    assert (terms["locality_lpips"] > 0).all()


@pytest.mark.slow
def test_a_photos_tuned_generator_exports_as_a_standalone_file(assets, tuned_job, tmp_path):
    """facelab-convert --tuned-weights: the written generator, loaded alone, renders the drag's final image
    from its final W+; a vector tuned from another generator is refused naming the file."""
    weights_file = tuned_job / "items" / "face" / "pti" / "photo_weights.pt"
    out = tmp_path / "face_generator.pt"
    assert convert_main([str(assets["generator"]), str(out), "--tuned-weights", str(weights_file)]) == 0
    exported = load_generator(out)
    final_ws = load(tuned_job, "face", "drag", "ws")[None]
    with torch.no_grad():
        image = exported.synthesis(final_ws, noise_mode="const")
        untuned = load_generator(assets["generator"]).synthesis(final_ws, noise_mode="const")
    assert np.array_equal(read_rgb(tuned_job / "items" / "face" / "drag" / "image.png"), to_uint8(image[0]))
    assert not torch.equal(image, untuned)
    short = tmp_path / "short.pt"
    torch.save(torch.zeros(7), short)
    with pytest.raises(ValueError, match="short.pt"):
        convert_main([str(assets["generator"]), str(tmp_path / "x.pt"), "--tuned-weights", str(short)])
