"""facelab.metrics against trusted references: skimage PSNR/SSIM, numpy L1/MAE, the `lpips` package with the
same trunk, scipy's Fréchet distance, a direct unbiased MMD; bucket boundaries; missing weight files."""

from __future__ import annotations

import math

import lpips
import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facelab.io.weights import INCEPTION_FID
from facelab.metrics import (
    FeatureMoments,
    KernelSample,
    MetricSuite,
    MissingWeightsError,
    edgeconnect_mae,
    frechet_distance,
    l1,
    psnr,
    reconstruction_metrics,
    rmse,
    ssim,
)
from facelab.metrics.distribution import key_priority
from facelab.metrics.inception import FIDInceptionV3, InceptionFeatures, resize_like_tf1
from facelab.metrics.perceptual import PerceptualDistance
from tests.metric_helpers import TinyFeatures, degrade, photographs, random_trunk_state, seed_torch_cache


def _pairs(real_size: int = 64, random_size: tuple[int, int] = (48, 40)):
    """(name, prediction, target) in [0, 1]: random noise images and real photographs with a degraded copy."""
    generator = torch.Generator().manual_seed(1)
    random_target = torch.rand(2, 3, *random_size, generator=generator)
    real = photographs(real_size)
    return [
        ("random", degrade(random_target, seed=2, noise=0.2), random_target),
        ("real", degrade(real), real),
    ]


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize(("name", "prediction", "target"), _pairs(), ids=["random", "real"])
def test_psnr_ssim_l1_match_skimage_and_numpy(name, prediction, target):
    for index in range(target.shape[0]):
        p, t = _hwc(prediction[index]), _hwc(target[index])
        assert psnr(prediction, target)[index].item() == pytest.approx(
            peak_signal_noise_ratio(t, p, data_range=1), abs=1e-4
        )
        reference = structural_similarity(
            p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
        )
        assert ssim(prediction, target)[index].item() == pytest.approx(reference, abs=1e-4)
        assert l1(prediction, target)[index].item() == pytest.approx(np.abs(p - t).mean(), abs=1e-6)
        assert rmse(prediction, target)[index].item() == pytest.approx(
            np.sqrt(((p - t) ** 2).mean()), abs=1e-6
        )
        assert edgeconnect_mae(prediction, target)[index].item() == pytest.approx(
            np.abs(p - t).sum() / (p + t).sum(), rel=1e-5
        )


def test_ssim_edgeconnect_settings_match_skimage_gray_uniform_51():
    target = photographs(64)
    prediction = degrade(target)
    suite = MetricSuite(
        ["ssim", "psnr"],
        buckets="none",
        settings={
            "grayscale": True,
            "ssim_window": "uniform",
            "ssim_win_size": 51,
            "ssim_sample_covariance": True,
            "quantize_8bit": False,
        },
    )
    suite.update(prediction, target)
    row = suite.compute()[0]
    gray = [
        (0.2125 * x[:, 0] + 0.7154 * x[:, 1] + 0.0721 * x[:, 2]).double().numpy()
        for x in (prediction, target)
    ]
    pairs = list(zip(*gray, strict=True))
    reference_ssim = [structural_similarity(p, t, win_size=51, data_range=1) for p, t in pairs]
    reference_psnr = [peak_signal_noise_ratio(t, p, data_range=1) for p, t in pairs]
    assert row["ssim"] == pytest.approx(np.mean(reference_ssim), abs=1e-4)
    assert row["psnr"] == pytest.approx(np.mean(reference_psnr), abs=1e-4)


def test_psnr_is_the_mean_of_per_image_values_not_the_pooled_mse():
    target = torch.zeros(2, 3, 16, 16)
    prediction = torch.stack([torch.full((3, 16, 16), 0.1), torch.full((3, 16, 16), 0.4)])
    suite = MetricSuite(["psnr"], buckets="none", settings={"quantize_8bit": False})
    suite.update(prediction, target)
    per_image = [10 * math.log10(1 / 0.01), 10 * math.log10(1 / 0.16)]
    assert suite.compute()[0]["psnr"] == pytest.approx(np.mean(per_image), abs=1e-5)
    assert suite.compute()[0]["psnr_std"] == pytest.approx(np.std(per_image), abs=1e-5)


def test_perfect_prediction_scores_cap_one_zero_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seed_torch_cache(tmp_path, "alex")
    target = photographs(64)
    suite = MetricSuite(["psnr", "ssim", "l1", "lpips_alex"], buckets="none")
    suite.update(target.clone(), target)
    row = suite.compute()[0]
    assert row["psnr"] == 100.0 and row["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert row["l1"] == 0.0 and row["lpips_alex"] == pytest.approx(0.0, abs=1e-7)
    uncapped = MetricSuite(["psnr"], buckets="none", settings={"psnr_cap_db": None})
    uncapped.update(target.clone(), target)
    assert math.isinf(uncapped.compute()[0]["psnr"])
    assert psnr(degrade(target), target).max() < 100  # the cap binds only for (near-)perfect images


def test_quantization_scores_what_an_8bit_png_would_hold():
    target = photographs(32)
    almost = target + 1 / 1024  # rounds back to the same 8-bit levels
    rows = {}
    for quantize in (True, False):
        suite = MetricSuite(["psnr"], buckets="none", settings={"quantize_8bit": quantize})
        suite.update(almost, target)
        rows[quantize] = suite.compute()[0]["psnr"]
    assert rows[True] == 100.0 and rows[False] == pytest.approx(10 * math.log10(1024**2), abs=1e-3)


def _lpips_package(net: str, state: dict) -> lpips.LPIPS:
    """The reference: lpips' own model with its shipped lin weights and our random trunk copied in."""
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    for block in model.net.children():
        for name, parameter in block.named_parameters():
            parameter.data.copy_(state[f"features.{name}"])
    return model.eval()


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips builds its trunk with torchvision's old API
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package_with_the_same_trunk(tmp_path, monkeypatch, net):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seed_torch_cache(tmp_path, net)
    reference = _lpips_package(net, random_trunk_state(net, 0))
    # VGG16 is heavy on a shared CPU: 32 px keeps its five taps (down to 2 x 2) at a quarter of the cost.
    for _, prediction, target in _pairs(64, (48, 40)) if net == "alex" else _pairs(32, (32, 24)):
        with torch.no_grad():
            expected = reference(prediction * 2 - 1, target * 2 - 1).flatten()
        assert torch.allclose(PerceptualDistance(net)(prediction, target), expected, rtol=1e-4, atol=1e-6)
        if net == "vgg":  # the uncalibrated VGG distance is lpips' "baseline" (lpips=False) mode
            reference.lpips = False
            with torch.no_grad():
                baseline = reference(prediction * 2 - 1, target * 2 - 1).flatten()
            reference.lpips = True
            uncalibrated = PerceptualDistance(net, calibrated=False)(prediction, target)
            assert torch.allclose(uncalibrated, baseline, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "filename"),
    [
        (lambda: PerceptualDistance("alex"), "alexnet-owt-7be5be79.pth"),
        (lambda: PerceptualDistance("vgg", calibrated=False), "vgg16-397923af.pth"),
        (lambda: InceptionFeatures(), "weights-inception-2015-12-05-6726825d.pth"),
    ],
)
def test_missing_weights_error_names_file_folder_and_address(tmp_path, monkeypatch, build, filename):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError) as error:
        build()
    message = str(error.value)
    assert filename in message and str(tmp_path / "empty" / "hub" / "checkpoints") in message
    assert "https://" in message


def test_explicit_weights_path_is_used_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    path = tmp_path / "my_alexnet.pth"
    torch.save(random_trunk_state("alex", 3), path)
    trunk_weight = PerceptualDistance("alex", weights_path=path).slices[0][0].weight
    assert torch.equal(trunk_weight, random_trunk_state("alex", 3)["features.0.weight"])
    with pytest.raises(MissingWeightsError, match="does_not_exist.pth"):
        PerceptualDistance("alex", weights_path=tmp_path / "does_not_exist.pth")


def _scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mean1, mean2 = real.mean(0), fake.mean(0)
    cov1, cov2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(((mean1 - mean2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root))


def test_feature_moments_and_fid_match_numpy_and_scipy():
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(300, 16, generator=generator)
    mixing = torch.randn(16, 16, generator=generator) * 0.3
    fake = 0.8 * torch.randn(300, 16, generator=generator) @ mixing + 0.2
    moments = {"real": FeatureMoments(1, 16), "fake": FeatureMoments(1, 16)}
    for start in range(0, 300, 64):  # uneven batches
        for name, features in (("real", real), ("fake", fake)):
            moments[name].update(
                features[start : start + 64], torch.zeros(len(features[start : start + 64]), dtype=torch.long)
            )
    mean, covariance = moments["real"].mean_covariance(0)
    assert np.allclose(mean.numpy(), real.double().numpy().mean(0), atol=1e-10)
    assert np.allclose(covariance.numpy(), np.cov(real.double().numpy(), rowvar=False), atol=1e-10)
    fid = frechet_distance(*moments["real"].mean_covariance(0), *moments["fake"].mean_covariance(0))
    assert fid == pytest.approx(_scipy_fid(real.double().numpy(), fake.double().numpy()), rel=1e-3)
    assert frechet_distance(mean, covariance, mean, covariance) == pytest.approx(0.0, abs=1e-8)


def test_suite_fid_and_kid_match_references_from_the_same_features():
    extractor = TinyFeatures()
    generator = torch.Generator().manual_seed(4)
    target = torch.rand(40, 3, 24, 24, generator=generator)
    prediction = degrade(target, seed=5, noise=0.3)
    suite = MetricSuite(
        ["fid", "kid"],
        buckets="none",
        feature_extractor=extractor,
        settings={"quantize_8bit": False, "kid_subsets": 3, "kid_subset_size": 1000},
    )
    for start in range(0, 40, 16):
        suite.update(prediction[start : start + 16], target[start : start + 16])
    row = suite.compute()[0]
    with torch.no_grad():
        real, fake = extractor(target).double().numpy(), extractor(prediction).double().numpy()
    assert row["fid"] == pytest.approx(_scipy_fid(real, fake), rel=1e-3)
    # All 40 pairs fit in one subset, so every subset is the full set: the direct unbiased estimator.
    m, dim = real.shape
    k_rr, k_ff, k_rf = ((a @ b.T / dim + 1) ** 3 for a, b in ((real, real), (fake, fake), (real, fake)))
    direct = ((k_rr.sum() - np.trace(k_rr)) + (k_ff.sum() - np.trace(k_ff))) / (m * (m - 1)) - 2 * k_rf.mean()
    assert row["kid"] == pytest.approx(direct, rel=1e-6) and row["kid_std"] == pytest.approx(0.0, abs=1e-12)


def test_kernel_sample_keeps_the_same_bottom_k_whatever_the_batching():
    generator = torch.Generator().manual_seed(6)
    real, fake = torch.randn(30, 4, generator=generator), torch.randn(30, 4, generator=generator)
    keys = torch.arange(30)
    one = KernelSample(7, 4)
    one.update(real, fake, keys)
    other = KernelSample(7, 4)
    order = torch.randperm(30, generator=generator)
    for chunk in order.split(4):
        other.update(real[chunk], fake[chunk], keys[chunk])
    expected = torch.argsort(key_priority(keys))[:7]
    for sample in (one, other):
        kept_real, kept_fake = sample.ordered()
        assert torch.equal(kept_real, real[expected]) and torch.equal(kept_fake, fake[expected])


def test_bucket_boundaries_are_half_open_lo_hi():
    # 10 x 10 masks: k hole pixels give a ratio of exactly k / 100.
    holes = [1, 2, 10, 11, 20, 60, 61, 0]
    masks = torch.zeros(len(holes), 1, 10, 10)
    for index, count in enumerate(holes):
        masks[index].view(-1)[:count] = 1
    suite = MetricSuite(["l1"], buckets="all")
    suite.update(torch.rand(len(holes), 3, 10, 10), torch.rand(len(holes), 3, 10, 10), masks)
    counts = {row["group"]: row["count"] for row in suite.compute()}
    # 0.01 is outside (0.01, 0.1]; 0.1 is its top; 0.11 and 0.2 are in (0.1, 0.2]; 0.6 is the last; 0.61 none.
    assert counts == {
        "overall": 8,
        "(0.01,0.1]": 2,
        "(0.1,0.2]": 2,
        "(0.2,0.3]": 0,
        "(0.3,0.4]": 0,
        "(0.4,0.5]": 0,
        "(0.5,0.6]": 1,
    }
    selected = MetricSuite(["l1"], buckets=["(0.5,0.6]"])
    selected.update(torch.rand(len(holes), 3, 10, 10), torch.rand(len(holes), 3, 10, 10), masks)
    assert [(row["group"], row["count"]) for row in selected.compute()] == [("overall", 8), ("(0.5,0.6]", 1)]
    with pytest.raises(ValueError, match="mask"):
        suite.update(torch.rand(1, 3, 10, 10), torch.rand(1, 3, 10, 10))


def test_states_do_not_grow_with_the_number_of_images():
    suite = MetricSuite(
        ["psnr", "fid", "kid"], feature_extractor=TinyFeatures(), settings={"kid_capacity": 8}
    )
    sizes = lambda: {name: buffer.numel() for name, buffer in suite.named_buffers()}  # noqa: E731
    before = sizes()
    for _ in range(5):
        masks = (torch.rand(6, 1, 16, 16) < 0.3).float()
        suite.update(torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16), masks)
    assert sizes() == before and suite.compute()[0]["count"] == 30 and suite.kernel_sample.size == 8


def test_reconstruction_metrics_have_no_buckets_and_barbershop_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seed_torch_cache(tmp_path, "alex", "vgg")
    suite = reconstruction_metrics(feature_extractor=TinyFeatures(), settings={"quantize_8bit": False})
    target = photographs(64)
    suite.update(degrade(target), target)  # no mask: reconstruction tasks have none
    rows = suite.compute()
    assert len(rows) == 1 and rows[0]["count"] == 3
    means = [k for k in rows[0] if not k.endswith("_std")][4:]
    assert means == ["rmse", "psnr", "ssim", "vgg", "lpips_alex", "fid"]
    assert rows[0]["rmse"] == pytest.approx(rmse(degrade(target), target).mean().item(), rel=1e-6)


def test_inception_loads_torchvision_named_weights_and_matches_unpatched_blocks(tmp_path, monkeypatch):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    reference = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / INCEPTION_FID.also_accepted[0])  # pytorch-fid's file name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    features = InceptionFeatures()
    # Blocks without TF patches must compute exactly torchvision's blocks with the same weights.
    x = torch.rand(1, 288, 35, 35)
    with torch.no_grad():
        assert torch.allclose(features.network.Mixed_6a(x), reference.Mixed_6a(x), atol=1e-5)
        y = torch.rand(1, 768, 17, 17)
        assert torch.allclose(features.network.Mixed_7a(y), reference.Mixed_7a(y), atol=1e-5)
    out = features(torch.rand(2, 3, 40, 40))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert sorted(FIDInceptionV3().state_dict()) == sorted(reference.state_dict())


def test_resize_like_tf1_uses_no_half_pixel_offset():
    image = torch.arange(20, dtype=torch.float32).view(1, 1, 4, 5)
    out = resize_like_tf1(image, 3)
    expected = np.zeros((3, 3))
    source = image[0, 0].numpy()
    for i in range(3):
        for j in range(3):
            y, x = i * 4 / 3, j * 5 / 3  # TF1: source = destination * in / out
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 4)
            top = source[y0, x0] + (source[y0, x1] - source[y0, x0]) * (x - x0)
            bottom = source[y1, x0] + (source[y1, x1] - source[y1, x0]) * (x - x0)
            expected[i, j] = top + (bottom - top) * (y - y0)
    assert np.allclose(out[0, 0].numpy(), expected, atol=1e-5)
