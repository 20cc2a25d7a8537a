"""DragGAN math: the renderer's start and step semantics, the windowed formulation against the full resize,
batch independence, and drag-spec errors. CPU, tiny generators (one read back from an NVlabs-style pickle)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facelab.losses.drag import motion_disc, motion_supervision_loss, motion_supervision_loss_full
from facelab.nets.stylegan2 import Generator
from facelab.nets.stylegan2_checkpoints import load_generator, save_generator
from facelab.ops.drag import (
    compose_ws,
    drag_features,
    drag_finished,
    reference_features,
    resize_features,
    resized_windows,
    scaled_radius,
    seed_start_ws,
    stop_distance,
    track_points,
    track_points_full,
)
from facelab.ops.drag_spec import DragSpecError, check_drag_spec
from facelab.ops.drag_step import DragSettings, drag_start, drag_step
from tests.test_stylegan2 import _as_record, _EasyDict, nvlabs_modules  # noqa: F401 (fixture)

TINY = dict(z_dim=32, w_dim=32, img_resolution=256, channel_base=1024, channel_max=32, mapping_layers=2)


def _tiny_generator(seed: int = 0, **overrides) -> Generator:
    """Random tiny StyleGAN2 (8 channels at 128 px) with non-zero biases, noise strengths and w_avg."""
    torch.manual_seed(seed)
    generator = Generator(**{**TINY, **overrides}).eval().requires_grad_(False)
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if name.endswith(("noise_strength", ".bias")) and "affine" not in name:
                param.copy_(torch.randn_like(param) * 0.3)
        generator.mapping.w_avg.copy_(torch.randn(generator.w_dim))
    return generator


@pytest.fixture
def pickled_generator(tmp_path, nvlabs_modules):  # noqa: F811
    """(path, generator): the tiny generator written as an NVlabs snapshot pickle."""
    generator = _tiny_generator(seed=3)
    kwargs = _EasyDict(z_dim=32, c_dim=0, w_dim=32, img_resolution=256, img_channels=3,
                       mapping_kwargs=_EasyDict(num_layers=2),
                       synthesis_kwargs=_EasyDict(channel_base=1024, channel_max=32, num_fp16_res=0,
                                                  conv_clamp=None, architecture="skip"))
    record = _as_record(generator, kwargs, tmp_path / "exec_ran")
    path = tmp_path / "stylegan2-tiny-256.pkl"
    path.write_bytes(pickle.dumps({"G": record, "D": None, "G_ema": record, "augment_pipe": None}))
    return path, generator


# ----------------------------------------------------------------------------- start and radii


def test_seed_start_is_numpy_randomstate_then_truncation(pickled_generator):
    path, _ = pickled_generator
    generator = load_generator(path)
    ws = seed_start_ws(generator, seed=5)
    z = torch.from_numpy(np.random.RandomState(5).randn(1, 32)).float()  # the renderer's draw (L245-249)
    untruncated = generator.mapping(z)
    w_avg = generator.mapping.w_avg
    assert ws.shape == (1, generator.num_ws, 32)
    torch.testing.assert_close(ws, w_avg + 0.7 * (untruncated - w_avg))
    assert not torch.allclose(ws, untruncated, atol=1e-3)  # psi 0.7 applied (w_avg is non-zero)
    assert not torch.allclose(ws, seed_start_ws(generator, seed=6))


def test_radii_scale_with_python_round():
    assert (scaled_radius(3, 512), scaled_radius(12, 512)) == (3, 12)
    assert (scaled_radius(3, 1024), scaled_radius(12, 1024)) == (6, 24)  # reference §1.5: 24 px at 1024
    assert scaled_radius(12, 256) == 6
    assert scaled_radius(3, 256) == round(1.5) == 2  # half to even, as the renderer's Python round


def test_compose_ws_optimises_only_the_first_six():
    start = torch.randn(2, 14, 8)
    edited = torch.randn(2, 6, 8, requires_grad=True)
    ws = compose_ws(edited, start)
    torch.testing.assert_close(ws[:, :6], edited)
    torch.testing.assert_close(ws[:, 6:], start[:, 6:])
    ws.sum().backward()
    assert edited.grad.shape == (2, 6, 8) and bool((edited.grad == 1).all())


# ----------------------------------------------------------------------------- windows of the resized map


@pytest.mark.parametrize("image_size", [128, 256, 512])
def test_resized_windows_equal_the_full_resize_values_and_gradients(image_size):
    torch.manual_seed(image_size)
    features = torch.randn(2, 5, 128, 128, requires_grad=True)
    last = image_size - 1
    centers = torch.tensor([[[0, 0], [last, 7], [60, last - 1]],
                            [[image_size // 2, 41], [3, last], [last, last]]])
    half = 6
    windows, inside = resized_windows(features, centers, half, image_size)
    full = resize_features(features, image_size)
    padded = F.pad(full, [half] * 4)  # zeros outside the image, like grid_sample's padding
    expected = torch.stack([torch.stack([padded[b, :, y : y + 2 * half + 1, x : x + 2 * half + 1]
                                         for y, x in centers[b].tolist()]) for b in range(2)])
    torch.testing.assert_close(windows, expected, rtol=1e-5, atol=1e-5)
    assert bool((windows.detach().abs().sum(dim=2)[~inside] == 0).all()) and not bool(inside.all())
    weights = torch.randn_like(windows)
    grad_windowed, = torch.autograd.grad((windows * weights).sum(), features)
    grad_full, = torch.autograd.grad((expected * weights).sum(), features)
    torch.testing.assert_close(grad_windowed, grad_full, rtol=1e-5, atol=1e-5)


def test_disc_reproduces_the_linspace_grid_quirk():
    size, radius, (y, x) = 512, 3, (300, 200)
    stretch = size / (size - 1)  # linspace(0, h, h)[k] = k * h / (h - 1)

    def brute_force(scale):
        return {(i, j) for i in range(y - 5, y + 6) for j in range(x - 5, x + 6)
                if math.hypot(i * scale - y, j * scale - x) < radius}

    rows = torch.arange(y - 5, y + 6)[:, None]
    cols = torch.arange(x - 5, x + 6)[None, :]
    center = torch.tensor([y, x])
    for grid, scale in (("linspace", stretch), ("arange", 1.0)):
        disc = motion_disc(rows, cols, center, radius, size, grid)
        found = {(int(i) + y - 5, int(j) + x - 5) for i, j in torch.nonzero(disc).tolist()}
        assert found == brute_force(scale), grid
    assert brute_force(stretch) != brute_force(1.0)  # the quirk shifts the disc off-centre at 512 px


# ----------------------------------------------------------------------------- tracking


def test_tracking_finds_a_known_shift():
    torch.manual_seed(0)
    features0 = F.avg_pool2d(torch.randn(1, 6, 68, 68), 5, stride=1)  # [1, 6, 64, 64], smooth
    handles = torch.tensor([[[20, 30], [40, 41], [12, 50]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    image_size = 128  # 2 px of the resized map per feature cell
    reference = reference_features(features0, handles, image_size)
    moved = torch.roll(features0, shifts=(2, -1), dims=(2, 3))  # content moves 2 cells down, 1 left
    expected = handles + torch.tensor([4, -2])
    assert bool((track_points(moved, reference, handles, valid, image_size, 6) == expected).all())
    full = track_points_full(resize_features(moved, image_size), reference, handles, valid, 6)
    assert bool((full == expected).all())
    # A shift beyond the window is not found: the best match stays within half-size 3.
    far = track_points(moved, reference, handles, valid, image_size, 3)
    assert bool(((far - handles).abs() <= 3).all()) and not bool((far == expected).all())


def test_tracking_metric_l2_as_the_code_or_l1_as_the_paper():
    # At h = s the resize is the identity. Around the handle (5, 5): pixel (5, 6) is (1, 1) from the
    # reference 0 (L2 1.41, L1 2), pixel (6, 5) is (1.8, 0) (L2 1.8, L1 1.8); everything else is far.
    features = torch.full((1, 2, 16, 16), 10.0)
    features[0, :, 5, 5] = 0
    reference = features[:, :, 5, 5].clone()[:, None]  # [1, 1, 2]
    features[0, :, 5, 5] = 10.0
    features[0, :, 5, 6] = torch.tensor([1.0, 1.0])
    features[0, :, 6, 5] = torch.tensor([1.8, 0.0])
    handles, valid = torch.tensor([[[5, 5]]]), torch.ones(1, 1, dtype=torch.bool)
    for metric, expected in (("l2", [5, 6]), ("l1", [6, 5])):
        windowed = track_points(features, reference, handles, valid, 16, 2, metric)
        full = track_points_full(features, reference, handles, valid, 2, metric)
        assert windowed.tolist() == full.tolist() == [[expected]], metric


# ----------------------------------------------------------------------------- motion supervision


def test_motion_loss_on_a_ramp_detaches_the_unshifted_features():
    # Feature channel 1 is the column index, so the resized map (h = 2 s) is (j + 0.5) / 2 - 0.5 inside:
    # F(q) - F(q + d) = -0.5 on channel 1 and 0 on channel 0 for d = (0, 1), mean L1 0.25 per point.
    ramp = torch.arange(64, dtype=torch.float32)
    features = torch.stack([ramp[:, None].expand(64, 64), ramp[None, :].expand(64, 64)])[None]
    features.requires_grad_(True)
    handles = torch.tensor([[[30, 20], [40, 40]]])
    targets = torch.tensor([[[30, 60], [40, 41]]]).float()  # the second is within 1 px: no term
    valid = torch.ones(1, 2, dtype=torch.bool)
    for loss in (motion_supervision_loss(features, handles, targets, valid, 128, 2),
                 motion_supervision_loss_full(resize_features(features, 128), handles, targets, valid, 2)):
        torch.testing.assert_close(loss, torch.tensor([0.25]))
        grad, = torch.autograd.grad(loss.sum(), features)
        # Gradient only through F(q + d), pushing it up (towards F(q)): +1 / C in total on channel 1. The
        # pre-2023-07-18 variant (gradient through F(q)) would give -1 / C.
        torch.testing.assert_close(grad[0, 1].sum(), torch.tensor(0.5))


def test_stop_rules():
    handles = torch.tensor([[[10, 10], [20, 20]], [[10, 10], [20, 20]]])
    targets = torch.tensor([[[10, 12], [20, 21]], [[10, 13], [20, 20]]]).float()
    valid = torch.ones(2, 2, dtype=torch.bool)
    assert drag_finished(handles, targets, valid, 512, "code").tolist() == [True, False]  # within 2 px
    assert drag_finished(handles, targets, valid, 1024, "code").tolist() == [True, True]  # within 4 px
    assert drag_finished(handles, targets, valid, 512, "paper").tolist() == [False, False]  # within 1 px
    assert stop_distance(512, torch.tensor([5, 6]), "paper").tolist() == [1.0, 2.0]
    assert stop_distance(256, torch.tensor([1]), "code").tolist() == [2.0]
    valid[1, 0] = False  # a padded entry is ignored
    assert drag_finished(handles, targets, valid, 512, "code").tolist() == [True, True]


# ----------------------------------------------------------------------------- whole steps


def _drag_batch(image_size: int = 256):
    """Two drags, 3 and 2 handles (the second padded with a junk entry), a mask on the second; pixel
    positions are given at 256 px and scaled."""
    scale = image_size / 256
    handles = torch.tensor([[[100, 100], [150, 80], [60, 190]], [[128, 128], [90, 170], [0, 0]]])
    targets = torch.tensor([[[100, 120], [130, 80], [75, 180]], [[140, 110], [90, 150], [0, 0]]])
    handles, targets = (handles * scale).round().long(), (targets * scale).round().float()
    handles[1, 2] = torch.tensor([-999, 4000])  # junk in the padding must not matter
    valid = torch.tensor([[True, True, True], [True, True, False]])
    mask = torch.zeros(2, 1, image_size, image_size)
    lo, hi = round(60 * scale), round(210 * scale)
    mask[1, :, lo:hi, lo:hi] = 1  # editable region of the second drag; the first has an all-zero mask
    return handles, targets, valid, mask


@pytest.mark.parametrize("steps", [3, pytest.param(20, marks=pytest.mark.slow)])
def test_windowed_equals_full_over_adam_steps(steps):
    # Kept small for CPU: a 128 px generator, features of its 64 px block resized x2 (as b128 -> 256 px),
    # radii given at 512 px so that they are 3 and 6 px here. The official formulation (full synthesis, full
    # resize) drives the drag; at every step the windowed one (stop_after, windows) is evaluated on the same
    # latents and handles, so any difference is the formulation's, not a diverged trajectory's.
    generator = _tiny_generator(img_resolution=128, channel_base=512)
    start_ws = torch.cat([seed_start_ws(generator, 0), seed_start_ws(generator, 1)])
    handles, targets, valid, mask = _drag_batch(128)
    full, windowed = (DragSettings(r1=12, r2=24, formulation=name) for name in ("full", "windowed"))
    edited = start_ws[:, :6].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([edited], lr=1e-2)
    features0 = drag_features(generator, start_ws, 64, full_synthesis=True)
    full_start = drag_start(features0, handles, 128, full)
    windowed_start = drag_start(features0, handles, 128)
    initial, moved = handles, 0
    for _ in range(steps):
        ws = compose_ws(edited, start_ws)
        official = drag_step(drag_features(generator, ws, 64, full_synthesis=True), full_start, handles,
                             targets, valid, mask, 128, full)
        official_grad, = torch.autograd.grad(official.loss.sum(), edited)
        ours = drag_step(drag_features(generator, ws, 64), windowed_start, handles, targets, valid, mask, 128,
                         windowed)
        our_grad, = torch.autograd.grad(ours.loss.sum(), edited)
        assert ours.handle_points.tolist() == official.handle_points.tolist()
        torch.testing.assert_close(ours.motion_loss, official.motion_loss, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.mask_loss, official.mask_loss, rtol=1e-5, atol=1e-7)
        # L1's sign can flip where F(q) and F(q + d) agree to rounding: compare to the gradient's scale
        torch.testing.assert_close(our_grad, official_grad, rtol=1e-4,
                                   atol=1e-3 * float(official_grad.abs().max()))
        assert ours.finished.tolist() == official.finished.tolist()
        edited.grad = official_grad
        optimiser.step()
        handles = official.handle_points
        moved += int((handles != initial)[valid].any())
    assert moved >= (5 if steps == 20 else 0)  # over 20 steps the points move: tracking was compared
    mask_loss = official.mask_loss.detach()
    assert float(mask_loss[1]) > 0 and float(mask_loss[0]) == 0  # the mask term applies to item 1 only


@pytest.mark.parametrize("formulation", ["windowed", "full"])
def test_batched_drags_equal_drags_run_alone(formulation):
    torch.manual_seed(1)
    settings = DragSettings(formulation=formulation)
    features0 = torch.randn(2, 4, 128, 128)
    features = (features0 + 0.3 * torch.randn(2, 4, 128, 128)).requires_grad_(True)
    handles, targets, valid, mask = _drag_batch()
    start = drag_start(features0, handles, 256, settings)
    batched = drag_step(features, start, handles, targets, valid, mask, 256, settings)
    batched_grad, = torch.autograd.grad(batched.loss.sum(), features)
    assert bool((batched.loss > 0).all())
    for item in range(2):
        count = int(valid[item].sum())
        own = slice(item, item + 1)
        alone_features = features[own].detach().clone().requires_grad_(True)
        alone_handles, alone_targets = handles[own, :count], targets[own, :count]
        alone_start = drag_start(features0[own], alone_handles, 256, settings)
        alone = drag_step(alone_features, alone_start, alone_handles, alone_targets, valid[own, :count],
                          mask[own], 256, settings)
        alone_grad, = torch.autograd.grad(alone.loss.sum(), alone_features)
        assert batched.handle_points[item, :count].tolist() == alone.handle_points[0].tolist()
        torch.testing.assert_close(batched.loss[item], alone.loss[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(batched_grad[item], alone_grad[0], rtol=1e-6, atol=1e-9)
        assert bool(batched.finished[item] == alone.finished[0])


def _translating_features(edited_ws: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """A feature 'generator' whose features move: a fixed texture translated by ws[:, 0, :2] cells."""
    batch, size = edited_ws.shape[0], texture.shape[-1]
    shift = edited_ws[:, 0, :2] * 2 / (size - 1)  # cells -> normalised (y, x)
    base = torch.linspace(-1, 1, size)
    grid_y, grid_x = torch.meshgrid(base, base, indexing="ij")
    grid = torch.stack([grid_x[None] - shift[:, 1, None, None], grid_y[None] - shift[:, 0, None, None]], -1)
    return F.grid_sample(texture.expand(batch, -1, -1, -1), grid, align_corners=True, padding_mode="border")


def test_drag_moves_the_handle_to_its_target_on_features_that_move():
    torch.manual_seed(0)
    texture = F.avg_pool2d(torch.randn(1, 8, 136, 136), 9, stride=1)  # [1, 8, 128, 128], smooth
    edited = torch.zeros(1, 6, 4, requires_grad=True)
    optimiser = torch.optim.Adam([edited], lr=0.3)
    handles = torch.tensor([[[120, 110]]])
    targets = torch.tensor([[[132, 130]]]).float()  # 23.3 px away at 256 px
    valid = torch.ones(1, 1, dtype=torch.bool)
    start = drag_start(_translating_features(edited, texture), handles, 256)
    distances = []
    for _ in range(60):
        step = drag_step(_translating_features(edited, texture), start, handles, targets, valid, None, 256)
        handles = step.handle_points
        distances.append(float(step.distance[0, 0]))
        if bool(step.finished[0]):
            break
        optimiser.zero_grad()
        step.loss.sum().backward()
        optimiser.step()
    assert distances[-1] <= 2.0 < distances[0] - 20  # arrived (the code's rule: 2 px at 256)
    # The tracked handle moved with the content: 2 px of the 256 px map per feature cell of shift.
    content_shift = edited.detach()[0, 0, :2] * 2
    assert float((handles[0, 0] - torch.tensor([120, 110]) - content_shift).abs().max()) <= 1.5


@pytest.mark.slow
def test_mask_keeps_the_fixed_region():
    generator = _tiny_generator()
    start_ws = seed_start_ws(generator, 0)
    handles = torch.tensor([[[128, 128]]])
    targets = torch.tensor([[[128, 150]]]).float()
    valid = torch.ones(1, 1, dtype=torch.bool)
    editable = torch.zeros(1, 1, 256, 256)
    editable[..., 88:168, 88:190] = 1
    change = {}
    for name, mask in (("without", None), ("with", editable)):
        edited = start_ws[:, :6].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([edited], lr=1e-2)
        features0 = drag_features(generator, start_ws)
        start = drag_start(features0, handles, 256)
        current = handles
        for _ in range(15):
            step = drag_step(drag_features(generator, compose_ws(edited, start_ws)), start, current, targets,
                             valid, mask, 256)
            current = step.handle_points
            optimiser.zero_grad()
            step.loss.sum().backward()
            optimiser.step()
        with torch.no_grad():
            moved = resize_features(drag_features(generator, compose_ws(edited, start_ws)) - features0, 256)
        change[name] = float((moved.abs() * (1 - editable)).mean())
    assert change["with"] < 0.5 * change["without"]


# ----------------------------------------------------------------------------- drag specs


@pytest.fixture
def generator_file(tmp_path):
    path = tmp_path / "tiny256.pt"
    save_generator(_tiny_generator(), path)
    return path


def _spec(generator_file, **changes):
    return {"generator": str(generator_file), "handle_points": [[10, 20], [100, 200]],
            "target_points": [[12, 30], [90, 180]], **changes}


def test_good_specs_load_every_generator_format(generator_file, pickled_generator, tmp_path):
    editable = np.zeros((256, 256), np.uint8)
    editable[50:150, 50:150] = 255
    Image.fromarray(editable).save(tmp_path / "editable.png")
    spec = _spec(generator_file, mask="editable.png", handle_points=[[10.4, 20], [100, 199.6]])
    checked = check_drag_spec(spec, "drags.yaml item 0", base_dir=tmp_path)
    assert checked.handle_points.tolist() == [[10, 20], [100, 200]]
    assert checked.handle_points.dtype == torch.long
    assert checked.editable_mask.shape == (1, 256, 256) and float(checked.editable_mask[0, 60, 60]) == 1
    assert float(checked.editable_mask[0, 0, 0]) == 0
    pickled = check_drag_spec(_spec(pickled_generator[0]), "drags.yaml item 1")
    assert pickled.generator.img_resolution == 256 and pickled.editable_mask is None


@pytest.mark.parametrize("change, field, message", [
    ({"handle_points": [[10, 20], [100, 256]]}, r"handle_points\[1\]", "outside the 256x256 image"),
    ({"target_points": [[-1, 20], [90, 180]]}, r"target_points\[0\]", "outside"),
    ({"target_points": [[12, 30]]}, "target_points", "1 targets for 2 handle points"),
    ({"handle_points": [[1, 2, 3]]}, "handle_points", r"\[y, x\] pairs"),
    ({"handle_points": None}, "handle_points", "missing"),
])
def test_bad_points_are_named(generator_file, change, field, message):
    with pytest.raises(DragSpecError, match=rf"drags\.yaml item 4, field '{field}': .*{message}"):
        check_drag_spec(_spec(generator_file, **change), "drags.yaml item 4")


def test_mask_of_another_size_is_named(generator_file, tmp_path):
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DragSpecError, match=r"spec a\.yaml item 2, field 'mask': .*120x100 .*256x256"):
        check_drag_spec(_spec(generator_file, mask=str(tmp_path / "small.png")), "a.yaml item 2")
    with pytest.raises(DragSpecError, match="field 'mask': mask of shape \\(64, 64\\)"):
        check_drag_spec(_spec(generator_file, mask=np.ones((64, 64))), "a.yaml item 3")


def test_bad_generators_are_named_before_any_step(tmp_path):
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, other)
    small = tmp_path / "tiny64.pt"
    save_generator(_tiny_generator(img_resolution=64), small)
    cases = [(tmp_path / "missing.pkl", "file .*missing.pkl not found"),
             (garbage, "cannot read .*garbage.pkl"),
             (other, "cannot read .*resnet.pt as a StyleGAN2 generator: .*not a StyleGAN2"),
             (small, ".*tiny64.pt is a 64 px StyleGAN2; DragGAN reads the 128x128 block")]
    for path, message in cases:
        with pytest.raises(DragSpecError, match=rf"drag spec s\.json item 0, field 'generator': {message}"):
            check_drag_spec(_spec(path), "s.json item 0")
