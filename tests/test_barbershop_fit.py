"""Barbershop end to end on tiny random networks saved in the real formats (a 64 px StyleGAN2 in facelab's
format, a 16-class BiSeNet state dict as seg.pth, torchvision's VGG16 file): every stage runs and lowers
its own loss, embeddings are cached and reused, batches do not couple items, bad manifests fail early."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from facelab.fit import stages
from facelab.fit.job import run_fit
from facelab.fit.manifest import ManifestError
from facelab.fit.records import FitRecords
from tests.conftest import compose_config
from tests.fit_models import save_random_bisenet, save_random_vgg16, save_tiny_generator
from tests.test_fit_items import make_faces

pytestmark = pytest.mark.slow
STAGES = (
    "embed_w",
    "embed_fs",
    "parse",
    "mask_fill_1",
    "mask_fill_2",
    "align_identity",
    "align_reference",
    "blend",
)
STEPS = {
    "embed_w": 25,
    "embed_fs": 15,
    "mask_fill_1": 4,
    "mask_fill_2": 4,
    "align_identity": 6,
    "align_reference": 6,
    "blend": 12,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    make_faces(folder / "faces", 4, size=64)
    return {
        "folder": folder,
        "generator": save_tiny_generator(folder / "generator.pt"),
        "parser": save_random_bisenet(folder / "seg.pth"),
        "vgg": save_random_vgg16(folder / "vgg16.pth"),
    }


def barbershop_config(models: dict, manifest: Path, out: Path, *overrides: str):
    tiny = [
        "experiment=barbershop",
        f"manifest={manifest}",
        f"output_dir={out}",
        "fit.image_size=64",
        f"fit.module.generator_path={models['generator']}",
        f"fit.module.parser_path={models['parser']}",
        f"fit.module.lpips_trunk_path={models['vgg']}",
        f"fit.module.vgg_weights_path={models['vgg']}",
        "fit.module.parse_size=64",
        "fit.module.perceptual_size=32",
        "fit.module.smooth=1",
        "fit.module.blend_mask_iterations=1",
        "fit.module.pca_samples=2000",
        f"fit.module.pca_cache_dir={models['folder'] / 'pca'}",
        f"cache_dir={models['folder'] / 'cache'}",
        "extras.print_config=false",
        "progress=lines",
        "checkpoint_every_n_steps=0",
        *[f"fit.module.stages.{stage}.steps={steps}" for stage, steps in STEPS.items()],
    ]
    return compose_config("fit", out.parent / f"hydra-{out.name}", [*tiny, *overrides])


def write_manifest(models: dict, name: str, rows: list[dict]) -> Path:
    faces = models["folder"] / "faces"
    lines = []
    for row in rows:
        cells = ", ".join(
            f"{key}: {faces / value if key != 'item_id' else value}" for key, value in row.items()
        )
        lines.append(f"- {{{cells}}}")
    path = models["folder"] / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [
    {"item_id": "separate", "identity": "face0.png", "shape": "face1.png", "appearance": "face2.png"},
    {"item_id": "shape_only", "identity": "face1.png", "shape": "face3.png"},
    {"item_id": "reuse", "identity": "face0.png", "shape": "face3.png"},
]


@pytest.fixture(scope="module")
def transfer_job(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("job") / "out"
    manifest = write_manifest(models, "three", ROWS)
    assert run_fit(barbershop_config(models, manifest, out, "batch_size=3"))["fitted"] == 3
    return out


def curve(out: Path, item_id: str, stage: str, column: str = "total") -> list[float]:
    lines = (out / "items" / item_id / stage / "curves.csv").read_text().splitlines()
    index = lines[0].split(",").index(column)
    return [float(line.split(",")[index]) for line in lines[1:]]


def test_every_stage_runs_records_its_outputs_and_lowers_its_own_loss(transfer_job):
    records = FitRecords(transfer_job)
    assert records.done_ids() == {"separate", "shape_only", "reuse"}
    for item_id in records.done_ids():
        done = records.read_record(item_id)
        assert done["stages"] == list(STAGES)
        for path in done["outputs"]:
            assert (transfer_job / path).is_file(), path
        for stage, steps in STEPS.items():
            if stage in ("embed_w", "embed_fs"):
                continue  # per image: their curves live in the cache (checked below)
            values = curve(transfer_job, item_id, stage)
            assert len(values) == steps and values[-1] < values[0], (item_id, stage, values)
    folder = transfer_job / "items" / "separate"
    for name in (
        "embed_w/identity_w.pt",
        "embed_fs/shape_f.pt",
        "parse/labels_identity.pt",
        "mask_fill_2/target_shape.pt",
        "align_reference/f_shape.pt",
        "align_reference/aligned_appearance.png",
        "blend/u.pt",
        "blend/result.png",
    ):
        assert (folder / name).is_file(), name
    u = torch.load(folder / "blend" / "u.pt")
    assert u.shape == (10, 32) and u.min() >= 0 and u.max() <= 1 and u.max() > 0  # projected, and it moved


def test_each_embedding_is_fitted_once_and_lowers_its_loss(transfer_job, models):
    cache = models["folder"] / "cache"
    curves = sorted(cache.rglob("embed_w/curves.csv"))
    assert len(curves) == 4  # four distinct images over three transfers (face0 and face3 twice)
    for path in curves:
        totals = [float(line.split(",")[-1]) for line in path.read_text().splitlines()[1:]]
        assert len(totals) == STEPS["embed_w"] and totals[-1] < 0.8 * totals[0]
    events = [
        e for e in FitRecords(transfer_job).events() if e["event"] == "start" and e.get("stage") == "embed_w"
    ]
    assert sum(len(e["items"]) for e in events) == 4
    same = [
        torch.load(transfer_job / "items" / i / "embed_fs" / "identity_f.pt") for i in ("separate", "reuse")
    ]
    assert torch.equal(*same)  # one embedding of face0 serves both transfers


def test_a_second_job_reuses_the_cache_and_a_damaged_entry_is_recomputed(
    transfer_job, models, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="facelab")
    manifest = write_manifest(models, "again", ROWS[1:2])
    out = tmp_path / "again"
    key = json.loads((transfer_job / "stages" / "shape_only" / "embed_fs.json").read_text())["cache_keys"][
        "shape"
    ]
    entry = models["folder"] / "cache" / key[:2] / key / "embed_fs" / "f.pt"
    original = entry.read_bytes()
    entry.write_bytes(original[:-10] + b"0123456789")  # a silent disk error
    run_fit(barbershop_config(models, manifest, out, "fit.module.stages.blend.steps=1"))
    assert "is damaged" in caplog.text and "recomputed" in caplog.text
    log_lines = [r.getMessage() for r in caplog.records if "embedding(s) reused" in r.getMessage()]
    assert log_lines[0].startswith("stage embed_w: 0 image(s) fitted, 2 embedding(s) reused")
    assert "1 image(s) fitted, 1 embedding(s) reused" in log_lines[1]
    for name in ("identity_f", "shape_f", "shape_w"):
        assert torch.allclose(
            torch.load(out / "items/shape_only/embed_fs" / f"{name}.pt"),
            torch.load(transfer_job / "items/shape_only/embed_fs" / f"{name}.pt"),
            atol=1e-5,
        )


def test_items_fitted_together_equal_items_fitted_alone(transfer_job, models, tmp_path):
    out = tmp_path / "alone"
    run_fit(barbershop_config(models, write_manifest(models, "three", ROWS), out, "batch_size=1"))
    for item_id in ("separate", "shape_only", "reuse"):
        for stage, name in (
            ("align_reference", "f_shape"),
            ("align_reference", "f_appearance"),
            ("blend", "u"),
            ("blend", "ws"),
            ("mask_fill_2", "target_shape"),
        ):
            together = torch.load(transfer_job / "items" / item_id / stage / f"{name}.pt")
            alone = torch.load(out / "items" / item_id / stage / f"{name}.pt")
            if together.is_floating_point():
                torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(together, alone)


def test_image_batch_size_caps_the_images_embedded_together_without_changing_them(
    transfer_job, models, tmp_path, monkeypatch
):
    """image_batch_size=2: the 4 distinct images of the 3 transfers are embedded 2 at a time (bounded
    memory), and every embedding and result equals the uncapped job's."""
    groups = []
    fit_stage = stages.fit_stage

    def spy(cfg, module, records, stage, batch, keys):
        groups.append((stage, len(keys)))
        return fit_stage(cfg, module, records, stage, batch, keys)

    monkeypatch.setattr(stages, "fit_stage", spy)
    out = tmp_path / "capped"
    manifest = write_manifest(models, "three", ROWS)
    cfg = barbershop_config(
        models, manifest, out, "batch_size=3", "image_batch_size=2", f"cache_dir={tmp_path / 'cache'}"
    )
    run_fit(cfg)
    assert [n for stage, n in groups if stage == "embed_w"] == [2, 2]
    assert [n for stage, n in groups if stage == "blend"] == [3]
    for item_id in ("separate", "shape_only", "reuse"):
        for stage, name in (("embed_w", "identity_w"), ("embed_fs", "shape_f"), ("blend", "ws")):
            capped = torch.load(out / "items" / item_id / stage / f"{name}.pt")
            uncapped = torch.load(transfer_job / "items" / item_id / stage / f"{name}.pt")
            torch.testing.assert_close(capped, uncapped, rtol=1e-5, atol=1e-5)


def test_image_groups_keep_the_order_and_refuse_a_negative_size():
    assert stages.image_groups(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert stages.image_groups(["a", "b", "c"], None) == [["a", "b", "c"]]
    with pytest.raises(ValueError, match="image_batch_size=-1"):
        stages.image_groups(["a"], -1)


def test_shape_only_transfer_uses_the_shape_pair_for_appearance(transfer_job):
    folder = transfer_job / "items" / "shape_only"
    assert torch.equal(
        torch.load(folder / "align_reference/f_shape.pt"),
        torch.load(folder / "align_reference/f_appearance.pt"),
    )
    assert set(curve(transfer_job, "shape_only", "align_identity", "ce_appearance")) == {0.0}
    assert max(curve(transfer_job, "separate", "align_identity", "ce_appearance")) > 0


def test_an_image_made_by_the_generator_is_embedded_back_closely(models):
    cfg = barbershop_config(models, models["folder"] / "unused.yaml", models["folder"] / "unused")
    module = instantiate(cfg.fit.module)
    with torch.no_grad():
        z = torch.randn(2, module.generator.z_dim, generator=torch.Generator().manual_seed(3))
        image = module.synthesize(module.generator.mapping(z, truncation_psi=0.7))
    psnr = {}
    batch = {"image": image, "meta": {"item_id": ["a", "b"]}}
    for stage, steps in (("embed_w", 300), ("embed_fs", 200)):
        module.begin_stage(stage, batch)
        optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.01)
        for _ in range(steps):
            optimizer.zero_grad()
            module.stage_losses()[2]["total"].sum().backward()
            optimizer.step()
        outputs = module.final_results()[0]
        mse = (outputs["image"] - image).pow(2).flatten(1).mean(1)
        psnr[stage] = [10 * math.log10(4 / float(value)) for value in mse]  # peak-to-peak 2 in [-1, 1]
        batch = {**batch, "previous": {**batch.get("previous", {}), stage: outputs}}
    start = module.synthesize(module.average_ws(2))
    start_psnr = [10 * math.log10(4 / float(v)) for v in (start - image).pow(2).flatten(1).mean(1)]
    # A tiny random generator is poorly conditioned (its images span about +-3, so w_avg starts near 1 dB):
    # W+ gains 15 dB and more; FS, which starts without the coarse blocks' RGB (as the official's
    # start_layer=4, skip=None), recovers and ends above W+ (measured: W+ 19-20 dB, FS 20.5-22.4 dB).
    for index in range(2):
        assert psnr["embed_w"][index] > max(start_psnr[index] + 15, 18), psnr
        assert psnr["embed_fs"][index] > psnr["embed_w"][index], psnr


def test_bad_manifests_fail_before_any_fitting_naming_row_and_file(models, tmp_path):
    faces = models["folder"] / "faces"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases = {
        "missing": (
            f"- {{identity: {faces}/face0.png, shape: {tmp_path}/absent.png}}\n",
            r"entry 0: shape=.*absent.png.* does not exist",
        ),
        "column": (
            f"- {{identity: {faces}/face0.png}}\n",
            r"entry 0: missing required column\(s\) \['shape'\]",
        ),
        "unreadable": (
            f"- {{identity: {faces}/face0.png, shape: {tmp_path}/broken.png}}\n",
            r"entry 0: shape: .*broken.png",
        ),
        "size": (
            f"- {{identity: {faces}/face0.png, shape: {tmp_path}/small.png}}\n",
            r"entry 0: shape: .*small.png is 32x32.*64x64",
        ),
    }
    make_faces(tmp_path / "tmp", 1, size=32)[0].rename(tmp_path / "small.png")
    for name, (text, message) in cases.items():
        manifest = tmp_path / f"{name}.yaml"
        manifest.write_text(text)
        with pytest.raises((ManifestError, ValueError), match=message):
            run_fit(barbershop_config(models, manifest, tmp_path / f"out-{name}"))
        assert not (tmp_path / f"out-{name}" / "attempts").exists()  # nothing started


def test_stage_records_say_which_cache_entries_an_item_used(transfer_job):
    record = json.loads((transfer_job / "stages" / "reuse" / "embed_w.json").read_text())
    other = json.loads((transfer_job / "stages" / "separate" / "embed_w.json").read_text())
    assert record["cache_keys"]["identity"] == other["cache_keys"]["identity"]  # both face0
    assert record["cache_keys"]["shape"] != other["cache_keys"]["shape"]


FAST = [f"fit.module.stages.{stage}.steps=1" for stage in STEPS]


def test_face_swap_transfers_the_face_classes_of_the_reference(models, tmp_path):
    manifest = write_manifest(
        models, "swap", [{"item_id": "swap", "identity": "face0.png", "shape": "face1.png"}]
    )
    out = tmp_path / "swap"
    cfg = barbershop_config(
        models,
        manifest,
        out,
        "experiment=barbershop_face_swap",
        *FAST,
        f"fit.module.parser_path={models['parser']}",
    )
    assert list(cfg.fit.module.labels.transfer) == [1, 2, 3, 4, 5, 6, 10, 11, 12, 13]
    assert run_fit(cfg)["fitted"] == 1
    parse = out / "items" / "swap" / "parse"
    reference, target = torch.load(parse / "labels_shape.pt"), torch.load(parse / "target_shape.pt")
    face = torch.isin(reference, torch.tensor(cfg.fit.module.labels.transfer))
    assert face.any() and torch.equal(
        target[face], reference[face]
    )  # the reference's face parts, as labelled
    assert (out / "items" / "swap" / "blend" / "result.png").is_file()


def test_a_raw_photo_is_aligned_first_and_the_result_pasted_back(models, tmp_path):
    from skimage import data

    from facelab.io.images import read_rgb, save_image

    save_image(data.astronaut(), tmp_path / "astronaut.png")
    manifest = tmp_path / "raw.yaml"
    manifest.write_text(
        f"- {{item_id: raw, identity: {tmp_path}/astronaut.png, shape: {models['folder']}/faces/face1.png}}\n"
    )
    out = tmp_path / "raw"
    assert (
        run_fit(barbershop_config(models, manifest, out, *FAST, "align=true", "+paste_back=true"))["fitted"]
        == 1
    )
    record = json.loads((out / "stages" / "raw" / "embed_w.json").read_text())
    crop = Path(record["inputs"]["identity"])
    assert crop.parent == out / "aligned" and read_rgb(crop).shape == (64, 64, 3)
    pasted, photo = read_rgb(out / "items" / "raw" / "paste_back.png"), data.astronaut()
    assert pasted.shape == photo.shape
    changed = (pasted != photo).any(-1)
    assert changed.any() and not changed[:, :40].any()  # the face region changed, the far left did not
    assert "items/raw/paste_back.png" in FitRecords(out).read_record("raw")["outputs"]


def test_a_photo_without_a_face_is_an_error_naming_the_row(models, tmp_path):
    from facelab.io.images import save_image

    save_image(torch.full((200, 300, 3), 128, dtype=torch.uint8).numpy(), tmp_path / "wall.png")
    manifest = tmp_path / "wall.yaml"
    manifest.write_text(f"- {{identity: {tmp_path}/wall.png, shape: {models['folder']}/faces/face1.png}}\n")
    with pytest.raises(ManifestError, match=r"wall.yaml entry 0: identity: No face found in .*wall.png"):
        run_fit(barbershop_config(models, manifest, tmp_path / "out", "align=true"))


def test_reconstruction_table_reports_both_embeddings(models, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    from facelab.cli.reconstruction_table import reconstruction_rows
    from facelab.io.images import read_rgb

    out = tmp_path / "reconstruction"
    cfg = barbershop_config(
        models,
        models["folder"] / "faces",
        out,
        "experiment=barbershop_reconstruction",
        "fit.module.stages.embed_w.steps=5",
        "fit.module.stages.embed_fs.steps=5",
    )
    assert run_fit(cfg)["fitted"] == 4
    rows = reconstruction_rows(out, ("rmse", "psnr", "ssim"))
    assert [row["embedding"].split()[0] for row in rows] == ["W+", "FS"] and rows[0]["images"] == 4
    for row, stage in zip(rows, ("embed_w", "embed_fs"), strict=True):
        values = [
            peak_signal_noise_ratio(
                read_rgb(models["folder"] / "faces" / f"face{i}.png"),
                read_rgb(out / "items" / f"face{i}" / stage / "image_image.png"),
            )
            for i in range(4)
        ]
        assert row["psnr"] == pytest.approx(sum(values) / 4, abs=1e-3)


def test_a_job_killed_mid_stage_resumes_and_ends_equal_to_an_uninterrupted_one(
    transfer_job, models, tmp_path
):
    """SIGKILL inside the blend stage (after its first chunk checkpoint): the rerun skips the recorded stages,
    resumes the blend from its checkpoint and ends where the uninterrupted job (transfer_job) ended."""
    from facelab.fit.records import chunk_key
    from tests.test_fit_job import _facelab_fit, _wait_for

    manifest = write_manifest(models, "three", ROWS)
    out = tmp_path / "killed"
    cfg = barbershop_config(models, manifest, out, "batch_size=3")
    overrides = [f"{key}={value}" for key, value in _cli_overrides(cfg).items()]
    overrides += ["checkpoint_every_n_steps=2", f"fit.module.stages.blend.steps={STEPS['blend']}"]
    checkpoint = out / "partial" / chunk_key(["separate", "shape_only", "reuse"], "blend") / "chunk.ckpt"
    first = _facelab_fit(*overrides, "hydra.run.dir=run1", cwd=tmp_path)
    _wait_for(checkpoint, first, seconds=900)
    first.kill()
    output = first.communicate()[0]
    assert checkpoint.exists(), output[-3000:]
    assert not FitRecords(out).done_ids() and (out / "stages" / "reuse" / "align_reference.json").exists()
    second = _facelab_fit(*overrides, "hydra.run.dir=run2", cwd=tmp_path)
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    starts = [e for e in FitRecords(out).events() if e["event"] == "start"]
    assert [e["stage"] for e in starts].count("align_reference") == 1  # recorded stages were not redone
    blend_starts = [e for e in starts if e["stage"] == "blend"]
    assert len(blend_starts) == 2 and Path(blend_starts[1]["resume"]).name == "chunk.ckpt"
    for item_id in ("separate", "shape_only", "reuse"):
        resumed = torch.load(out / "items" / item_id / "blend" / "u.pt")
        uninterrupted = torch.load(transfer_job / "items" / item_id / "blend" / "u.pt")
        torch.testing.assert_close(resumed, uninterrupted, rtol=1e-4, atol=1e-5)


def _cli_overrides(cfg) -> dict:
    """The composed job's settings as command-line overrides (what a user would type)."""
    module = cfg.fit.module
    values = {
        "experiment": "barbershop",
        "manifest": cfg.manifest,
        "output_dir": cfg.output_dir,
        "batch_size": cfg.batch_size,
        "fit.image_size": cfg.fit.image_size,
        "cache_dir": cfg.cache_dir,
        "extras.print_config": "false",
        "progress": "lines",
    }
    for key in (
        "generator_path",
        "parser_path",
        "lpips_trunk_path",
        "vgg_weights_path",
        "parse_size",
        "perceptual_size",
        "smooth",
        "blend_mask_iterations",
        "pca_samples",
        "pca_cache_dir",
    ):
        values[f"fit.module.{key}"] = module[key]
    for stage, steps in STEPS.items():
        values[f"fit.module.stages.{stage}.steps"] = steps
    return values
