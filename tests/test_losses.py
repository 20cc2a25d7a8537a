"""VGG16 features (against torchvision's own vgg16), the GAN losses (against numpy), perceptual and style."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import vgg16

from facelab.losses.adversarial import GAN_KINDS, AdversarialLoss
from facelab.losses.perceptual import PerceptualLoss, PerceptualStyleLoss, StyleLoss, gram_matrix
from facelab.nets.vgg import (
    LAYER_INDEX,
    LAYERS,
    VGG16_WEIGHTS_FILE,
    VGG16_WEIGHTS_URL,
    VGG16Features,
    vgg16_weights_path,
)

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # the paper's


@pytest.fixture(scope="module")
def torchvision_vgg(tmp_path_factory):
    """(torchvision's `vgg16(weights=None).features` with random weights, their state dict in a file)."""
    with torch.device("meta"):  # the structure only: building the 138M-parameter classifier takes seconds
        features = vgg16(weights=None).features
    features = features.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.weight[0].numel()  # He init keeps activations alive down to relu5_3
            layer.weight.data.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
            layer.bias.data.normal_(0, 0.01, generator=generator)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # part of torchvision's file; must be ignored
    path = tmp_path_factory.mktemp("vgg") / "random_vgg16.pth"
    torch.save(state, path)
    return features, path


@pytest.fixture(scope="module")
def vgg(torchvision_vgg):
    return VGG16Features(STYLE_LAYERS, torchvision_vgg[1])


def imagenet_input(images):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def images(seed, batch=2, size=16):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ VGG16Features
def test_vgg_equals_torchvision_at_every_tap(torchvision_vgg):
    reference, path = torchvision_vgg
    ours = VGG16Features(LAYERS, weights_path=str(path))
    x = images(1)
    out = ours(x)
    assert list(out) == list(LAYERS)
    assert LAYER_INDEX["relu3_1"] == 11 and LAYER_INDEX["relu5_3"] == 29
    for name in LAYERS:
        with torch.no_grad():
            expected = reference[: LAYER_INDEX[name] + 1](imagenet_input(x))
        assert out[name].abs().max() > 0, name
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-5, msg=name)


def test_vgg_loads_from_torch_home(torchvision_vgg, tmp_path, monkeypatch):
    reference, path = torchvision_vgg
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / VGG16_WEIGHTS_FILE).write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert vgg16_weights_path() == checkpoints / VGG16_WEIGHTS_FILE
    ours = VGG16Features(["relu3_1"])
    assert ours.weights_path == checkpoints / VGG16_WEIGHTS_FILE
    x = images(2)
    torch.testing.assert_close(ours(x)["relu3_1"], reference[:12](imagenet_input(x)).detach())


def test_vgg_runs_only_up_to_the_deepest_layer(torchvision_vgg):
    ours = VGG16Features(["relu2_1", "relu1_2"], torchvision_vgg[1])
    assert len(ours.features) == LAYER_INDEX["relu2_1"] + 1 == 7
    assert sum(isinstance(m, nn.Conv2d) for m in ours.features) == 3
    conv_sizes = (3 * 9 + 1) * 64 + (64 * 9 + 1) * 64 + (64 * 9 + 1) * 128
    assert sum(p.numel() for p in ours.parameters()) == conv_sizes
    out = ours(images(3))
    assert set(out) == {"relu1_2", "relu2_1"}
    assert out["relu2_1"].shape == (2, 128, 8, 8)


def test_vgg_is_frozen_but_passes_gradients(vgg):
    owner = nn.Sequential(nn.Conv2d(3, 3, 1), vgg)
    owner.train()
    assert owner[0].training and not vgg.training and not any(m.training for m in vgg.modules())
    assert not any(p.requires_grad for p in vgg.parameters())
    x = images(4).requires_grad_()
    vgg(x)["relu4_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_vgg_rejects_unknown_layers(torchvision_vgg):
    with pytest.raises(ValueError, match=r"relu4_4.*relu5_3"):
        VGG16Features(["relu1_1", "relu4_4"], torchvision_vgg[1])


def test_missing_weights_explain_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    expected_dir = tmp_path / "torch_home" / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as error:
        VGG16Features(["relu1_1"])
    message = str(error.value)
    assert str(expected_dir / VGG16_WEIGHTS_FILE) in message  # the path looked at
    assert f"put it in {expected_dir}/" in message
    assert VGG16_WEIGHTS_URL == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert VGG16_WEIGHTS_URL in message and "weights_path" in message
    explicit = tmp_path / "elsewhere.pth"
    with pytest.raises(FileNotFoundError, match=f"not found at {explicit}"):
        vgg16_weights_path(explicit)


def test_mismatched_state_dict_lists_the_keys(torchvision_vgg, tmp_path):
    state = torch.load(torchvision_vgg[1], weights_only=True)
    del state["features.0.bias"]
    state["features.31.weight"] = torch.zeros(1)
    state["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    path = tmp_path / "vgg19ish.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        VGG16Features(["relu1_1"], path)
    message = str(error.value)
    assert str(path) in message
    assert "features.0.bias" in message and "features.31.weight" in message
    assert "features.2.weight: (64, 32, 3, 3) instead of (64, 64, 3, 3)" in message
    assert "classifier" not in message  # classifier keys are expected and ignored


def test_non_state_dict_file_is_a_value_error(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        VGG16Features(["relu1_1"], path)


# ------------------------------------------------------------------ adversarial
def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def expected_losses(kind, real, fake):
    """(D loss, G loss) written out from EdgeConnect's definitions."""
    if kind == "nsgan":
        d = (-np.log(np_sigmoid(real)).mean() - np.log(1 - np_sigmoid(fake)).mean()) / 2
        return d, -np.log(np_sigmoid(fake)).mean()
    if kind == "lsgan":
        d = (((np_sigmoid(real) - 1) ** 2).mean() + (np_sigmoid(fake) ** 2).mean()) / 2
        return d, ((np_sigmoid(fake) - 1) ** 2).mean()
    d = (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()) / 2
    return d, -fake.mean()


@pytest.mark.parametrize("kind", GAN_KINDS)
def test_adversarial_losses_match_the_formulas(kind):
    rng = np.random.default_rng(0)
    real, fake = rng.normal(0.5, 2, (2, 1, 3, 3)), rng.normal(-0.5, 2, (2, 1, 3, 3))
    loss = AdversarialLoss(kind)
    d_expected, g_expected = expected_losses(kind, real, fake)
    d = loss.discriminator(torch.tensor(real), torch.tensor(fake))
    g = loss.generator(torch.tensor(fake))
    assert d.ndim == 0 and g.ndim == 0
    np.testing.assert_allclose(d.item(), d_expected, rtol=1e-10)
    np.testing.assert_allclose(g.item(), g_expected, rtol=1e-10)


def test_nsgan_does_not_saturate():
    # BCE on sigmoid outputs clamps log(0) to -100; the logits form keeps the exact value and its gradient.
    fake = torch.tensor([-200.0], requires_grad=True)
    loss = AdversarialLoss("nsgan").generator(fake)
    loss.backward()
    assert loss.item() == pytest.approx(200.0) and fake.grad.item() == pytest.approx(-1.0)


def test_invalid_gan_kind():
    with pytest.raises(ValueError, match=r"'wgan'.*nsgan.*lsgan.*hinge"):
        AdversarialLoss("wgan")


# ------------------------------------------------------------------ perceptual and style
def test_gram_matrix_matches_einsum():
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = np.einsum("bchw,bdhw->bcd", features.numpy(), features.numpy()) / (3 * 4 * 5)
    gram = gram_matrix(features)
    assert gram.shape == (2, 3, 3) and gram.dtype == torch.float64
    np.testing.assert_allclose(gram.numpy(), expected, rtol=1e-12)
    half = gram_matrix(features.half() * 100)  # entries ~1e4 * 20 products: beyond float16's 65504
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    np.testing.assert_allclose(half.numpy(), expected * 1e4, rtol=1e-2, atol=10)


def test_perceptual_and_style_zero_for_identical_positive_otherwise(vgg):
    pred, target = images(5), images(6)
    for loss in (PerceptualLoss(vgg, STYLE_LAYERS), StyleLoss(vgg, STYLE_LAYERS)):
        assert loss(target, target).item() == 0
        assert loss(pred, target).item() > 0


def test_perceptual_is_the_weighted_sum_of_feature_l1(vgg):
    pred, target = images(7), images(8)
    fp, ft = vgg(pred), vgg(target)
    l1 = {name: (fp[name] - ft[name]).abs().mean() for name in STYLE_LAYERS}
    torch.testing.assert_close(PerceptualLoss(vgg, STYLE_LAYERS)(pred, target), sum(l1.values()))
    weighted = PerceptualLoss(vgg, ["relu1_1", "relu3_1"], layer_weights=[2.0, 0.5])(pred, target)
    torch.testing.assert_close(weighted, 2 * l1["relu1_1"] + 0.5 * l1["relu3_1"])
    gram = {name: (gram_matrix(fp[name]) - gram_matrix(ft[name])).abs().mean() for name in STYLE_LAYERS}
    torch.testing.assert_close(StyleLoss(vgg, STYLE_LAYERS)(pred, target), sum(gram.values()))


def test_masked_style_equals_style_of_premultiplied_inputs(vgg):
    pred, target = images(9).requires_grad_(), images(10)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:10] = 1
    both = PerceptualStyleLoss(vgg, STYLE_LAYERS, STYLE_LAYERS)
    perceptual, style = both(pred, target, mask)
    torch.testing.assert_close(perceptual, PerceptualLoss(vgg, STYLE_LAYERS)(pred, target))
    torch.testing.assert_close(style, StyleLoss(vgg, STYLE_LAYERS)(pred * mask, target * mask))
    assert not torch.allclose(style, StyleLoss(vgg, STYLE_LAYERS)(pred, target))
    _, unmasked_style = both(pred, target)
    torch.testing.assert_close(unmasked_style, StyleLoss(vgg, STYLE_LAYERS)(pred, target))
    (perceptual + style).backward()
    assert pred.grad.abs().sum() > 0 and all(p.grad is None for p in vgg.parameters())


def test_perceptual_style_runs_vgg_once_per_side(vgg):
    batches = []
    handle = vgg.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        both = PerceptualStyleLoss(vgg, STYLE_LAYERS, ["relu2_1"])
        both(images(11), images(12), torch.ones(2, 1, 16, 16))
        assert batches == [4, 4]  # image and masked image batched together, for pred then target
        batches.clear()
        both(images(11), images(12))
        assert batches == [2, 2]
    finally:
        handle.remove()


def test_loss_layers_must_be_tapped(vgg):
    with pytest.raises(ValueError, match="relu5_1"):
        StyleLoss(vgg, ["relu1_1", "relu5_1"])
    with pytest.raises(ValueError, match="2 layer weights for 4 layers"):
        PerceptualLoss(vgg, STYLE_LAYERS, layer_weights=[1.0, 1.0])
