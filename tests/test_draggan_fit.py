"""DragGAN drags as a latent-fit job on a tiny random 128 px StyleGAN2 (facelab's own file format): the
outputs, per-item stopping in a batch, batch independence and spec errors before any step. The step's math
against the official formulas is tests/test_drag_math.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image

from facelab.fit.job import run_fit
from facelab.fit.records import FitRecords
from facelab.ops.drag_spec import DragSpecError
from tests.conftest import compose_config
from tests.fit_models import tiny_generator

pytestmark = pytest.mark.slow
DRAGS = """\
- {item_id: one, seed: 1, handle_points: [[60, 60]], target_points: [[60, 70]]}
- {item_id: two, seed: 2, handle_points: [[40, 40], [80, 90]], target_points: [[45, 40], [80, 80]]}
- {item_id: near, seed: 3, handle_points: [[64, 64]], target_points: [[64, 65]]}
"""


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> Path:
    from facelab.nets.stylegan2_checkpoints import save_generator

    path = tmp_path_factory.mktemp("draggan") / "g128.pt"
    save_generator(tiny_generator(img_resolution=128), path)
    return path


def drag_config(generator_file: Path, manifest: Path, out: Path, *overrides: str):
    return compose_config(
        "fit",
        out.parent / f"hydra-{out.name}",
        [
            "experiment=draggan",
            f"manifest={manifest}",
            f"output_dir={out}",
            "fit.image_size=128",
            f"fit.module.generator_path={generator_file}",
            "fit.module.stages.drag.steps=12",
            "fit.module.stages.drag.optimizer.lr=0.02",
            "fit.module.frame_every=4",
            "fit.module.frame_size=64",
            "extras.print_config=false",
            "progress=lines",
            "checkpoint_every_n_steps=0",
            *overrides,
        ],
    )


def test_drags_in_one_batch_equal_drags_alone_and_one_that_arrived_stops_at_once(generator_file, tmp_path):
    manifest = tmp_path / "drags.yaml"
    manifest.write_text(DRAGS)
    together, alone = tmp_path / "together", tmp_path / "alone"
    run_fit(drag_config(generator_file, manifest, together, "batch_size=3"))
    run_fit(drag_config(generator_file, manifest, alone, "batch_size=1"))
    for item_id in ("one", "two", "near"):
        a = torch.load(together / "items" / item_id / "drag" / "ws.pt")
        b = torch.load(alone / "items" / item_id / "drag" / "ws.pt")
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        steps = FitRecords(together).read_record(item_id)["steps"]["drag"]
        assert steps == FitRecords(alone).read_record(item_id)["steps"]["drag"]
        assert steps == (0 if item_id == "near" else 12)  # 1 px from its target: within the stop distance
    from facelab.nets.stylegan2_checkpoints import load_generator
    from facelab.ops.drag import seed_start_ws

    seed_start = seed_start_ws(load_generator(generator_file), 1)[0]
    moved = torch.load(together / "items" / "one" / "drag" / "ws.pt")  # [num_ws, w_dim]
    assert torch.equal(moved[6:], seed_start[6:]) and not torch.allclose(moved[:6], seed_start[:6])
    near = torch.load(together / "items" / "near" / "drag" / "ws.pt")
    assert torch.equal(near, seed_start_ws(load_generator(generator_file), 3)[0])  # never updated


def test_each_drag_writes_its_image_latent_json_pair_and_trajectory(generator_file, tmp_path):
    manifest = tmp_path / "drags.yaml"
    manifest.write_text(DRAGS)
    out = tmp_path / "out"
    run_fit(drag_config(generator_file, manifest, out, "batch_size=3"))
    folder = out / "items" / "two" / "drag"
    summary = json.loads((folder / "drag.json").read_text())
    assert summary["steps"] == 12 and len(summary["per_step"]) == 12
    assert summary["handles_start"] == [[40, 40], [80, 90]] and summary["targets"] == [
        [45.0, 40.0],
        [80.0, 80.0],
    ]
    assert summary["distance_start"] == pytest.approx([5.0, 10.0])
    assert set(summary["per_step"][0]) == {"step", "motion", "mask", "total", "handles"}
    assert Image.open(folder / "before_after.png").size == (256, 128)
    gif = Image.open(folder / "trajectory.gif")
    assert gif.n_frames == 12 // 4 + 1 and gif.size == (64, 64)
    import cv2

    video = cv2.VideoCapture(str(folder / "trajectory.mp4"))
    assert (
        int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == gif.n_frames
        and int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    )
    assert Image.open(folder / "image.png").size == (128, 128)
    record = FitRecords(out).read_record("two")
    assert "items/two/drag/trajectory.gif" in record["outputs"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{seed: 1, handle_points: [[60, 60], [10, 10]], target_points: [[60, 70]]}", "target_points"),
        ("{seed: 1, handle_points: [[60, 200]], target_points: [[60, 70]]}", r"handle_points\[0\]"),
        ("{handle_points: [[60, 60]], target_points: [[60, 70]]}", "seed"),
    ],
)
def test_a_bad_drag_spec_fails_before_any_step_naming_spec_and_field(generator_file, tmp_path, spec, field):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(f"- {spec}\n")
    out = tmp_path / "out"
    with pytest.raises(DragSpecError, match=rf"drag spec .*bad.yaml entry 0, field '{field}'"):
        run_fit(drag_config(generator_file, manifest, out))
    assert not (out / "attempts").exists()


def test_a_drag_spec_naming_another_generator_is_refused(generator_file, tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(generator_file.read_bytes())
    manifest = tmp_path / "other.yaml"
    manifest.write_text(
        f"- {{seed: 1, generator: {other}, handle_points: [[60, 60]], target_points: [[60, 70]]}}\n"
    )
    with pytest.raises(DragSpecError, match="field 'generator'.*differs from the job's"):
        run_fit(drag_config(generator_file, manifest, tmp_path / "out"))


def test_facelab_drag_runs_one_drag_from_the_command_line(generator_file, tmp_path):
    from facelab.cli.drag import drag_main

    out = tmp_path / "one"
    summary = drag_main(
        [
            f"generator={generator_file}",
            "seed=1",
            "points=[[60,60]]",
            "targets=[[60,70]]",
            f"out={out}",
            "fit.module.stages.drag.steps=3",
            "fit.module.frame_every=1",
            "fit.module.frame_size=32",
            "extras.print_config=false",
            "progress=lines",
        ]
    )
    assert summary["fitted"] == 1
    drag = json.loads((out / "items" / "drag" / "drag" / "drag.json").read_text())
    assert drag["steps"] == 3 and drag["handles_start"] == [[60, 60]]
    with pytest.raises(SystemExit, match="missing targets="):
        drag_main([f"generator={generator_file}", "seed=1", "points=[[60,60]]", f"out={out}"])
    with pytest.raises(SystemExit, match="give seed=N or latent="):
        drag_main([f"generator={generator_file}", "points=[[60,60]]", "targets=[[6,6]]", f"out={out}"])


def test_a_real_photo_is_aligned_inverted_dragged_and_pasted_back(generator_file, tmp_path):
    from skimage import data

    from facelab.io.images import read_rgb, save_image
    from tests.fit_models import save_random_vgg16

    vgg = save_random_vgg16(tmp_path / "vgg16.pth")
    save_image(data.astronaut(), tmp_path / "astronaut.png")
    manifest = tmp_path / "photo.yaml"
    manifest.write_text(
        f"- {{item_id: me, photo: {tmp_path}/astronaut.png, handle_points: [[60, 60]], "
        "target_points: [[60, 70]]}\n"
    )
    out = tmp_path / "photo"
    inversion = [
        f"fit.module.inversion.lpips_trunk_path={vgg}",
        "fit.module.inversion.pca_samples=2000",
        f"fit.module.inversion.pca_cache_dir={tmp_path}/pca",
        "fit.module.inversion.perceptual_size=64",
        "fit.module.stages.invert.steps=6",
        f"cache_dir={tmp_path}/cache",
    ]
    cfg = drag_config(
        generator_file, manifest, out, "experiment=draggan_photo", *inversion, "+paste_back=true"
    )
    assert run_fit(cfg)["fitted"] == 1
    curve = (out / "stages" / "me" / "invert.json").read_text()
    assert json.loads(curve)["inputs"]["photo"].startswith(str(out / "aligned"))
    inverted = torch.load(out / "items" / "me" / "invert" / "photo_w.pt")
    edited = torch.load(out / "items" / "me" / "drag" / "ws.pt")
    assert torch.equal(edited[6:], inverted[6:]) and not torch.equal(
        edited[:6], inverted[:6]
    )  # started there
    pasted = read_rgb(out / "items" / "me" / "paste_back.png")
    assert pasted.shape == data.astronaut().shape and (pasted != data.astronaut()).any()
    assert "items/me/paste_back.png" in FitRecords(out).read_record("me")["outputs"]
    again = run_fit(
        drag_config(generator_file, manifest, tmp_path / "again", "experiment=draggan_photo", *inversion)
    )
    assert again["fitted"] == 1  # the photo's inversion came from the cache:
    assert torch.equal(torch.load(tmp_path / "again" / "items" / "me" / "invert" / "photo_w.pt"), inverted)


def test_the_landmark_benchmark_runs_end_to_end_and_counts_faces_dlib_misses(
    generator_file, tmp_path, monkeypatch
):
    """dlib finds no face in a random tiny generator's images, so the detector is replaced by one that reads
    landmarks off the image (a fixed layout shifted by the image's mean colour), and misses one seed."""
    import numpy as np

    from facelab.cli.train import run_eval
    from facelab.ops import align

    layout = np.stack(np.meshgrid(np.linspace(30, 90, 17), np.linspace(40, 80, 4)), -1).reshape(-1, 2)[:68]

    def fake_detect(image, **kwargs):
        if int(image.mean()) % 7 == 0:  # an image "without a face"
            return []
        return [layout + (image.mean() % 5)]

    monkeypatch.setattr(align, "detect_faces", fake_detect)
    cfg = compose_config(
        "eval",
        tmp_path / "eval",
        [
            "experiment=draggan_landmarks",
            f"landmarks.generator_path={generator_file}",
            "landmarks.pairs=3",
            "landmarks.point_counts=[1,5]",
            "landmarks.fid=false",
            "landmarks.fit_overrides=['fit.module.stages.drag.steps=2','batch_size=4','fit.module.frame_size=32']",
            "extras.print_config=false",
        ],
    )
    rows = run_eval(cfg)["rows"]
    assert [row["points"] for row in rows] == [1, 5]
    drags = yaml.safe_load((tmp_path / "eval" / "drags.yaml").read_text())
    missed = rows[0]["no_face_source"] + rows[0]["no_face_target"]
    assert rows[0]["drags"] == rows[1]["drags"] == 3 - missed == len(drags) // 2  # each face pair counted
    for drag in drags:
        assert json.loads(
            (tmp_path / "eval" / "drags" / "stages" / drag["item_id"] / "drag.json").read_text()
        )
    table = (tmp_path / "eval" / "landmarks.md").read_text()
    assert "md_no_edit" in table and "no_face_source" in table
    ones = [d for d in drags if len(d["handle_points"]) == 1]
    assert ones and rows[0]["md_no_edit"] == pytest.approx(
        np.mean(
            [
                np.linalg.norm(np.array(d["handle_points"]) - np.array(d["target_points"]), axis=1).mean()
                for d in ones
            ]
        )
    )


class CrashOnce(pl.Callback):
    """Kills the fit (an exception, as a crash) after its 5th optimiser step, the first time only."""

    crashed = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 5 and not CrashOnce.crashed:
            CrashOnce.crashed = True
            raise RuntimeError("simulated crash")


def test_a_drag_cut_off_mid_way_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
    generator_file, tmp_path
):
    manifest = tmp_path / "drags.yaml"
    manifest.write_text(DRAGS)
    crashing = [f"+callbacks.crash._target_={__name__}.CrashOnce", "checkpoint_every_n_steps=2"]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_fit(drag_config(generator_file, manifest, cut, "batch_size=3", *crashing))
    assert not FitRecords(cut).done_ids()
    run_fit(drag_config(generator_file, manifest, cut, "batch_size=3", *crashing))
    run_fit(drag_config(generator_file, manifest, whole, "batch_size=3"))
    starts = [e for e in FitRecords(cut).events() if e["event"] == "start"]
    assert len(starts) == 2 and Path(starts[1]["resume"]).name == "chunk.ckpt"
    for item_id in ("one", "two", "near"):
        for name in ("ws", "handles", "trajectory"):
            resumed = torch.load(cut / "items" / item_id / "drag" / f"{name}.pt")
            uninterrupted = torch.load(whole / "items" / item_id / "drag" / f"{name}.pt")
            torch.testing.assert_close(resumed, uninterrupted, rtol=1e-5, atol=1e-6)
        per_step = json.loads((cut / "items" / item_id / "drag" / "drag.json").read_text())["per_step"]
        # the curves before the cut were kept; "near" records its start's losses, then stops
        assert len(per_step) == (1 if item_id == "near" else 12)
