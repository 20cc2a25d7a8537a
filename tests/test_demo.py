"""`make demo` (facelab/cli/demo.py): its figures against hand-made cases and numpy, the random VGG16 it falls
back to, the choice of inputs and handles, and one run at a few steps on tiny random networks that writes
every promised file. Nothing here depends on the quality of a model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from facelab.cli import demo
from facelab.metrics.edit_figures import mask_iou, masked_lpips_distance, masked_psnr, point_distances
from facelab.metrics.perceptual import PerceptualDistance
from facelab.nets.random_vgg import random_vgg16_state, write_random_vgg16
from facelab.nets.stylegan2_checkpoints import save_generator
from facelab.nets.vgg import VGG16Features, load_vgg16_features_state
from facelab.ops.face_points import parsed_mouth_corners
from tests.conftest import compose_config
from tests.fit_models import save_random_bisenet, tiny_generator
from tests.test_barbershop_fit import STAGES as BARBERSHOP_STAGES


# Figures ---------------------------------------------------------------------------------------------------
def test_mask_iou_of_hand_made_masks():
    first = torch.zeros(4, 4, dtype=torch.bool)
    second = torch.zeros(4, 4, dtype=torch.bool)
    first[0:2, 0:2] = True  # 4 pixels
    second[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert mask_iou(first, second) == pytest.approx(1 / 7)
    assert mask_iou(first, first) == 1.0
    assert mask_iou(first, ~first) == 0.0
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty) is None  # undefined, never a perfect score
    assert mask_iou(first, empty) == 0.0
    with pytest.raises(ValueError):
        mask_iou(first, torch.zeros(3, 4, dtype=torch.bool))


def test_point_distances_equal_numpy():
    rng = np.random.default_rng(0)
    points, targets = rng.uniform(0, 128, (5, 2)), rng.uniform(0, 128, (5, 2))
    np.testing.assert_allclose(point_distances(points, targets), np.linalg.norm(points - targets, axis=1))
    assert point_distances([[3, 0]], [[0, 4]]) == [5.0]
    with pytest.raises(ValueError):
        point_distances(points, targets[:4])


def test_masked_psnr_over_the_mask_only():
    target = torch.zeros(3, 8, 8)
    prediction = target.clone()
    prediction[:, :, 4:] = 1.0  # [-1, 1] scale: 0.5 on the [0, 1] scale, right half only
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    assert masked_psnr(prediction, target, left) == math.inf
    expected = 10 * math.log10(1 / 0.25)  # mse 0.5**2 on the [0, 1] scale
    assert masked_psnr(prediction, target, ~left) == pytest.approx(expected)
    everything = torch.ones(8, 8, dtype=torch.bool)
    assert masked_psnr(prediction, target, everything) == pytest.approx(10 * math.log10(1 / 0.125))
    assert masked_psnr(prediction, target, torch.zeros(8, 8, dtype=torch.bool)) is None


@pytest.fixture(scope="module")
def random_vgg(tmp_path_factory):
    return write_random_vgg16(tmp_path_factory.mktemp("vgg") / "vgg16_random.pth")


def test_random_vgg16_is_fixed_he_normal_and_loads_as_torchvision_file(random_vgg):
    stored = load_vgg16_features_state(random_vgg)  # the layout check of the real loader
    again = random_vgg16_state()
    assert all(torch.equal(stored[key], again[key]) for key in again)
    other = random_vgg16_state(seed=1)
    assert not torch.equal(other["features.0.weight"], again["features.0.weight"])
    deep = again["features.28.weight"]  # 512 x 512 x 3 x 3: He-normal std sqrt(2 / fan_in)
    assert deep.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    assert all(again[key].abs().sum() == 0 for key in again if key.endswith("bias"))
    modified = random_vgg.stat().st_mtime_ns
    assert write_random_vgg16(random_vgg) == random_vgg and random_vgg.stat().st_mtime_ns == modified
    taps = VGG16Features(["relu4_3"], random_vgg, imagenet_input=False)(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert taps["relu4_3"].shape == (1, 512, 4, 4) and taps["relu4_3"].abs().sum() > 0


def test_masked_lpips_with_a_full_mask_is_lpips(random_vgg):
    net = PerceptualDistance("vgg", weights_path=random_vgg)
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.rand(3, 32, 32, generator=generator) * 2 - 1 for _ in range(2))
    full = torch.ones(32, 32, dtype=torch.bool)
    expected = float(net((first[None] + 1) / 2, (second[None] + 1) / 2)[0])
    assert masked_lpips_distance(net, first, second, full) == pytest.approx(expected, rel=1e-5)
    assert masked_lpips_distance(net, first, first, full) == pytest.approx(0.0, abs=1e-7)
    assert masked_lpips_distance(net, first, second, torch.zeros(32, 32, dtype=torch.bool)) is None


# Inputs and handles ----------------------------------------------------------------------------------------
def test_parsed_mouth_corners_of_a_hand_made_map():
    labels = np.zeros((64, 64), dtype=np.int64)
    labels[40:44, 20:45] = 11  # upper lip
    labels[44:47, 22:43] = 12  # lower lip
    labels[5, 60] = 10  # a stray mouth pixel elsewhere: not the largest region
    corners = parsed_mouth_corners(labels, (10, 11, 12))
    np.testing.assert_allclose(corners, [[41.5, 20.0], [41.5, 44.0]])
    assert parsed_mouth_corners(np.zeros((64, 64), dtype=np.int64), (10, 11, 12)) is None
    assert parsed_mouth_corners(labels, (10,)) is None  # one pixel: below min_pixels


def test_the_chosen_faces_fit_their_roles(tmp_path):
    cfg = compose_config("fit", tmp_path, ["experiment=demo_barbershop", "manifest=unused.yaml"])
    chosen = demo.choose_faces(cfg.demo)
    assert set(chosen) == {"identity", "shape"}  # appearance: null, the shape reference lends the colour
    for role, (_index, sample) in chosen.items():
        rule = cfg.demo.roles[role]
        assert sample.attributes["hair_style"] in rule.hair_style
        assert sample.attributes["hair_colour"] in rule.hair_colour
        assert not sample.attributes["hat"] and not sample.attributes["glasses"]
        assert sample.image.shape == (128, 128, 3)
    assert chosen["identity"][0] != chosen["shape"][0]


class StubParser:
    """A parser that answers the same logits for every image (one-hot of a fixed label map)."""

    def __init__(self, labels: torch.Tensor, n_classes: int = 19):
        self.logits = torch.nn.functional.one_hot(labels, n_classes).permute(2, 0, 1).float()[None]

    def __call__(self, images):
        return self.logits.repeat(len(images), 1, 1, 1)


def test_drag_handles_fall_back_from_dlib_to_the_parser_then_to_the_average(tmp_path, monkeypatch):
    overrides = ["experiment=demo_draggan", "manifest=unused.yaml", "demo.seeds=[3,4]"]
    cfg = compose_config("fit", tmp_path, overrides)
    generator = tiny_generator()  # 64 px
    monkeypatch.setattr(demo, "dlib_points", lambda image, indices: None)  # dlib finds no face anywhere
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[40:44, 20:45] = 11
    start = demo.choose_drag(cfg.demo, generator, StubParser(labels), 64)
    assert start["seed"] == cfg.demo.seeds[0] and start["source"].startswith("parser")
    np.testing.assert_allclose(start["handles"], [[41.5, 20.0], [41.5, 44.0]])
    start = demo.choose_drag(cfg.demo, generator, StubParser(torch.zeros(64, 64, dtype=torch.long)), 64)
    assert start["source"].startswith("average")
    np.testing.assert_allclose(start["handles"], np.asarray(cfg.demo.fallback_points) * 64)
    found = np.array([[40.0, 20.0], [40.0, 44.0]])
    answers = iter([None, found])  # no face in seed 3, a face in seed 4
    monkeypatch.setattr(demo, "dlib_points", lambda image, indices: next(answers))
    start = demo.choose_drag(cfg.demo, generator, None, 64)
    assert start["source"].startswith("dlib") and start["seed"] == 4
    np.testing.assert_array_equal(start["handles"], found)


# The whole demo at a few steps ---------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_demo_on_tiny_random_networks_writes_every_promised_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # a fresh machine: no ImageNet VGG16 cached
    generator = tmp_path / "generator.pt"
    save_generator(tiny_generator(img_resolution=128), generator)  # DragGAN needs 128 px
    parser = save_random_bisenet(tmp_path / "parser.pth", n_classes=19)
    out = tmp_path / "demo"
    figures = demo.main(
        [
            "--out",
            str(out),
            "--quick",
            "--generator",
            str(generator),
            "--parser",
            str(parser),
            "--draggan=demo.seeds=[0]",
        ]
    )
    barbershop, draggan = out / "barbershop", out / "draggan"
    promised = [
        "barbershop/inputs/identity.png",
        "barbershop/inputs/shape.png",
        "barbershop/inputs/manifest.yaml",
        "barbershop/inputs/faces.json",
        "barbershop/result.png",
        "barbershop/overview.png",
        "barbershop/regions.png",
        "draggan/manifest.yaml",
        "draggan/start.json",
        "draggan/before_after.png",
        "draggan/trajectory.gif",
        "draggan/trajectory.mp4",
        "draggan/image.png",
        "figures.json",
        "figures.md",
        "weights/vgg16_random_seed0.pth",
    ]
    assert [name for name in promised if not (out / name).is_file()] == []
    items = barbershop / "job" / "items" / "transfer"
    assert all((items / stage).is_dir() for stage in BARBERSHOP_STAGES)
    assert (draggan / "job" / "items" / "drag" / "drag" / "drag.json").is_file()
    assert json.loads((out / "figures.json").read_text()) == json.loads(json.dumps(figures))
    assert "random" in figures["models"]["perceptual_trunk"] and figures["quick"]
    assert figures["barbershop"]["steps"]["embed_w"] == 2 and figures["draggan"]["step_cap"] == 3
    drag = figures["draggan"]
    handles, targets = np.array(drag["handles"]), np.array(drag["targets"])
    np.testing.assert_allclose(drag["distance_before"], np.linalg.norm(handles - targets, axis=1), atol=1e-5)
    for key in ("face_lpips_result", "face_psnr_result", "hair_iou_result"):
        value = figures["barbershop"][key]
        assert value is None or math.isfinite(value)
    text = (out / "figures.md").read_text()
    assert "| Hair IoU, result vs target hair mask (parser) |" in text and "--quick" in text
