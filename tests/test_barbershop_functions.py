"""Barbershop's pure functions against their definitions: scipy morphology, OpenCV's inpainting, the lpips
package's network, torch's cross-entropy, a float64 PCA, and the official formulas written out directly."""

from __future__ import annotations

import math

import cv2
import lpips
import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from facelab.losses.barbershop import (
    gram,
    lpips_features,
    lpips_per_item,
    masked_lpips,
    masked_style,
    p_norm,
    parsing_cross_entropy,
)
from facelab.metrics.perceptual import PerceptualDistance
from facelab.ops.hair_masks import (
    ParserLabels,
    compose_target,
    dilate,
    erode,
    mix_structure,
    navier_stokes_fill,
)
from facelab.ops.latent_pca import LatentPCA, estimate_pca
from facelab.ops.resample import bicubic_downsample, bicubic_taps, cubic_kernel
from tests.fit_models import save_random_vgg16, tiny_generator


def random_masks(seed: int, size: int = 24, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    blobs = torch.rand(batch, 1, size // 4, size // 4, generator=generator)
    return (F.interpolate(blobs, size=(size, size), mode="bilinear") > 0.55).float()  # [B, 1, S, S]


@pytest.mark.parametrize("iterations", [1, 3, 5])
def test_dilate_and_erode_equal_scipy_binary_morphology(iterations):
    masks = random_masks(iterations)
    for index in range(len(masks)):
        array = masks[index, 0].numpy().astype(bool)
        expected_dilated = scipy.ndimage.binary_dilation(array, iterations=iterations)
        expected_eroded = scipy.ndimage.binary_erosion(array, iterations=iterations)
        assert np.array_equal(dilate(masks, iterations)[index, 0].numpy().astype(bool), expected_dilated)
        assert np.array_equal(erode(masks, iterations)[index, 0].numpy().astype(bool), expected_eroded)
    assert erode(torch.ones(1, 1, 8, 8), 1)[0, 0, 0].sum() == 0  # the border erodes (border_value 0)


def test_bicubic_downsample_is_the_official_kernel_written_out():
    """BicubicDownSample: taps k(( i - floor(4f/2) + 0.5) / f), normalised; reflect pad; stride f."""
    for factor in (1, 2, 4):
        size = 4 * factor
        raw = [
            float(cubic_kernel(torch.tensor((i - math.floor(size / 2) + 0.5) / factor))) for i in range(size)
        ]
        assert torch.allclose(bicubic_taps(factor), torch.tensor(raw) / sum(raw), atol=1e-7)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    factor, taps = 2, bicubic_taps(2).double()
    padded = np.pad(images.double().numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode="reflect")
    expected = np.zeros((2, 3, 8, 8))
    for row in range(8):
        for col in range(8):
            window = padded[:, :, row * factor : row * factor + 8, col * factor : col * factor + 8]
            expected[:, :, row, col] = np.einsum("bcij,i,j->bc", window, taps.numpy(), taps.numpy())
    assert np.allclose(bicubic_downsample(images, 2).double().numpy(), expected, atol=1e-6)
    constant = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(bicubic_downsample(constant, 4), torch.full((1, 3, 2, 2), 0.3), atol=1e-6)


def test_navier_stokes_fill_is_the_official_scaled_inpaint():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :10] = 10  # hair on top
    labels[0, 12:, 5:15] = 1  # skin below
    holes = torch.zeros(1, 20, 20, dtype=torch.bool)
    holes[0, 8:14, 3:17] = True
    scaled = torch.where(holes, 0, labels)[0].numpy().astype(np.float32) / 10
    painted = cv2.inpaint(scaled, holes[0].numpy().astype(np.uint8) * 255, 3, cv2.INPAINT_NS)
    expected = painted.astype(np.uint8).astype(np.int64) * 10
    filled = navier_stokes_fill(labels, holes, hair=10)
    assert np.array_equal(filled[0].numpy(), expected)
    assert set(filled.unique().tolist()) <= {0, 10}  # the truncation keeps only hair or background


def test_target_composition_follows_the_official_rules():
    labels = ParserLabels(transfer=(10,), background=0, not_hair_region=(15,))
    identity = torch.zeros(1, 16, 16, dtype=torch.long)
    identity[0, :4] = 10  # the identity's short hair
    identity[0, 4:, 4:12] = 1  # its face
    reference = torch.zeros(1, 16, 16, dtype=torch.long)
    reference[0, :8, :] = 10  # long hair over the top half
    reference[0, 8:, 4:12] = 1  # a face
    reference[0, 12:, 0:2] = 15  # class 15: never lent to the hair region
    reference[0, 12:, 14:16] = 2  # another class over the identity's background
    target = compose_target(identity, reference, labels)
    assert torch.equal(target.labels[0, :8], torch.full((8, 16), 10))  # the reference's hair
    assert torch.equal(target.labels[0, 8:, 4:12], torch.ones(8, 8, dtype=torch.long))  # identity's face kept
    assert target.uncovered[0, 12:, 14:].all() and not target.uncovered[0, 12:, :2].any()
    assert set(target.labels[0, 12:, 14:].unique().tolist()) <= {0, 10}
    expected_foreground = ((identity != 0) | (reference == 10)).long()
    assert torch.equal(target.foreground, expected_foreground)
    assert torch.equal(target.identity_hair[0, 0], (identity[0] == 10).float())


def test_mix_structure_is_the_official_three_blends():
    generator = torch.Generator().manual_seed(1)
    f = [torch.randn(2, 4, 8, 8, generator=generator) for _ in range(4)]
    hairs = [random_masks(seed, size=32, batch=2) for seed in (3, 4, 5)]
    smooth, mask_size = 2, 16
    mixed = mix_structure(*f, *hairs, smooth=smooth, mask_size=mask_size)

    def prepared(mask: torch.Tensor, operation) -> torch.Tensor:
        small = F.interpolate(mask, size=(mask_size, mask_size), mode="nearest")[:, 0].numpy().astype(bool)
        done = np.stack([operation(m, iterations=smooth) for m in small]).astype(np.float32)
        return 1 - F.interpolate(torch.from_numpy(done)[:, None], size=(8, 8), mode="bicubic")

    identity_hair, target_hair, reference_hair = hairs
    intermediate, identity_f, aligned, reference_f = f
    low = prepared(1 - (1 - identity_hair) * (1 - target_hair), scipy.ndimage.binary_dilation)
    expected = intermediate + low * (identity_f - intermediate)
    low = prepared(target_hair, scipy.ndimage.binary_erosion)
    expected = aligned + low * (expected - aligned)
    low = prepared(reference_hair * target_hair, scipy.ndimage.binary_erosion)
    expected = reference_f + low * (expected - reference_f)
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_parsing_cross_entropy_per_item_equals_torchs_loss_on_each_item_alone():
    generator = torch.Generator().manual_seed(2)
    logits, target = (
        torch.randn(3, 5, 6, 6, generator=generator),
        torch.randint(0, 5, (3, 6, 6), generator=generator),
    )
    weight = torch.tensor([0.0, 1, 1, 1, 1])
    for class_weight in (None, weight, 1 - weight):
        per_item = parsing_cross_entropy(logits, target, class_weight)
        for index in range(3):
            expected = torch.nn.CrossEntropyLoss(weight=class_weight)(
                logits[index : index + 1], target[index : index + 1]
            )
            assert per_item[index] == pytest.approx(float(expected), rel=1e-5)


def test_masked_style_is_the_official_gram_loss_per_item():
    generator = torch.Generator().manual_seed(3)
    target = [torch.rand(2, 4, 8, 8, generator=generator), torch.rand(2, 6, 4, 4, generator=generator)]
    prediction = [torch.rand(2, 4, 8, 8, generator=generator), torch.rand(2, 6, 4, 4, generator=generator)]
    mask_target, mask_prediction = random_masks(6, 16, 2), random_masks(7, 16, 2)
    loss = masked_style(target, prediction, mask_target, mask_prediction)
    for index in range(2):
        total = 0.0
        for t, p in zip(target, prediction, strict=True):
            size = t.shape[-1]
            mt = F.interpolate(mask_target[index : index + 1], scale_factor=size / 16, mode="nearest")
            mp = F.interpolate(mask_prediction[index : index + 1], scale_factor=size / 16, mode="nearest")
            ft, fp = (
                (t[index : index + 1] * mt).view(t.shape[1], -1),
                (p[index : index + 1] * mp).view(p.shape[1], -1),
            )
            norm = t.shape[1] * size * size
            total += F.mse_loss(ft @ ft.T / norm, fp @ fp.T / norm)
        assert loss[index] == pytest.approx(float(total) / 2, rel=1e-5)
    assert torch.allclose(gram(target[0])[0], target[0][0].view(4, -1) @ target[0][0].view(4, -1).T / 256)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    return save_random_vgg16(tmp_path_factory.mktemp("vgg") / "vgg16.pth")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_masked_lpips_equals_the_official_formula_on_the_lpips_packages_network(vgg_file):
    ours = PerceptualDistance("vgg", weights_path=vgg_file)
    state = torch.load(vgg_file, weights_only=True)
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    for block in reference.net.children():
        for name, parameter in block.named_parameters():
            parameter.data.copy_(state[f"features.{name}"])
    generator = torch.Generator().manual_seed(4)
    x, y = (torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1 for _ in range(2))
    mask = random_masks(8, 32, 2)
    got = masked_lpips(ours, x, lpips_features(ours, y), mask, blocks=(1, 2, 3))
    with torch.no_grad():
        taps_x, taps_y = reference.net(reference.scaling_layer(x)), reference.net(reference.scaling_layer(y))
        for index in range(2):
            total, resized = 0.0, mask[index : index + 1]
            for depth in range(5):  # the official resizes the mask level by level, nearest
                fx, fy = (
                    lpips.normalize_tensor(taps_x[depth][index : index + 1]),
                    lpips.normalize_tensor(taps_y[depth][index : index + 1]),
                )
                distance = reference.lins[depth].model((fx - fy) ** 2)
                resized = F.interpolate(resized, size=distance.shape[-2:], mode="nearest")
                if depth + 1 in (1, 2, 3):
                    total += float((distance * resized).sum() / resized.sum())
            assert got[index] == pytest.approx(total, rel=1e-4)
        full = masked_lpips(
            ours, x, lpips_features(ours, y), torch.ones(2, 1, 32, 32), blocks=(1, 2, 3, 4, 5)
        )
        assert torch.allclose(full, reference(x, y).flatten(), rtol=1e-4)  # an all-ones mask is LPIPS
        assert torch.allclose(lpips_per_item(ours, x, lpips_features(ours, y)), full, rtol=1e-5)


def test_pca_equals_a_float64_eigendecomposition_and_whitens_the_samples():
    generator = tiny_generator()
    pca = estimate_pca(generator.mapping, samples=3000, seed=5, batch=1000)
    z = torch.randn(3000, generator.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        samples = F.leaky_relu(generator.mapping(z)[:, 0], 5.0).double().numpy()
    covariance = np.cov(samples, rowvar=False, ddof=1)
    variances = np.linalg.eigvalsh(covariance)[::-1]
    assert np.allclose(pca.stdev.double().numpy() ** 2, variances, rtol=1e-3, atol=1e-6)
    assert np.allclose(pca.mean.numpy(), samples.mean(0), atol=1e-4)
    whitened = (samples - samples.mean(0)) @ pca.components.double().numpy().T / pca.stdev.double().numpy()
    assert np.allclose(np.cov(whitened, rowvar=False), np.eye(generator.w_dim), atol=2e-3)


def test_p_norm_is_the_official_mean_square_of_the_whitened_latent():
    generator = torch.Generator().manual_seed(6)
    pca = LatentPCA(
        torch.randn(8, generator=generator),
        torch.linalg.qr(torch.randn(8, 8, generator=generator))[0],
        torch.rand(8, generator=generator) + 0.5,
    )
    latents = torch.randn(2, 5, 8, generator=generator)
    for index in range(2):
        one = latents[index : index + 1]  # the official: bmm over a batch of one, .mean() over everything
        whitened = (torch.nn.LeakyReLU(negative_slope=5)(one) - pca.mean).bmm(
            pca.components.T.unsqueeze(0)
        ) / pca.stdev
        assert p_norm(latents, pca)[index] == pytest.approx(float(whitened.pow(2).mean()), rel=1e-5)
