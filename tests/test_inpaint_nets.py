"""EdgeConnect's generator and discriminator: shapes, the architecture of the spec, init, input checks."""

import pytest
import torch
from torch import nn

from facelab.nets.inpaint import InpaintGenerator, PatchDiscriminator, ResnetBlock, init_weights

CONVS = (nn.Conv2d, nn.ConvTranspose2d)
LAYERS = (*CONVS, nn.InstanceNorm2d, nn.ReLU, nn.LeakyReLU, nn.ReflectionPad2d)


def leaves(module: nn.Module) -> list[nn.Module]:
    """Layers in forward order (every container here is a Sequential built in that order)."""
    return [m for m in module.modules() if isinstance(m, LAYERS)]


def convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in leaves(module) if isinstance(m, CONVS)]


def raw_weight(conv: nn.Module) -> torch.Tensor:
    """The trained tensor: the original weight under spectral norm, else the weight."""
    if hasattr(conv, "weight_orig"):
        return conv.weight_orig
    return conv.weight


GENERATOR_CONFIGS = [
    dict(in_channels=13, out_channels=9, base_channels=8, n_residual_blocks=1, spectral_norm=True,
         output="sigmoid"),
    dict(in_channels=13, out_channels=3, base_channels=16, n_residual_blocks=2, output="tanh"),
    dict(in_channels=4, out_channels=1, base_channels=8, n_residual_blocks=3, dilation=1, output="none"),
]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("config", GENERATOR_CONFIGS)
def test_generator_keeps_the_input_size(config, size):
    generator = InpaintGenerator(**config)
    out = generator(torch.randn(2, config["in_channels"], size, size + 8))  # non-square on purpose
    assert out.shape == (2, config["out_channels"], size, size + 8)


@pytest.mark.parametrize("size, logits", [(32, 2), (64, 6)])
@pytest.mark.parametrize("in_channels, base", [(3, 8), (10, 16)])
def test_discriminator_shapes(in_channels, base, size, logits):
    discriminator = PatchDiscriminator(in_channels, base)
    out, features = discriminator(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 1, logits, logits)
    expected = [(base, size // 2), (2 * base, size // 4), (4 * base, size // 8), (8 * base, size // 8 - 1)]
    assert [(f.shape[1], f.shape[2]) for f in features] == expected
    assert all(f.min() < 0 for f in features)  # LeakyReLU, not ReLU: negative activations survive


@pytest.mark.parametrize("n_blocks, dilation", [(8, 2), (3, 1), (4, 3)])
def test_generator_residual_middle(n_blocks, dilation):
    generator = InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=n_blocks, dilation=dilation)
    blocks = [m for m in generator.modules() if isinstance(m, ResnetBlock)]
    assert len(blocks) == n_blocks
    for block in blocks:
        layers = list(block.conv_block)
        first, second = [m for m in layers if isinstance(m, nn.Conv2d)]
        assert first.dilation == (dilation, dilation) and second.dilation == (1, 1)
        assert layers[0].padding == (dilation,) * 4  # reflection pad matches the dilation: size kept
        assert isinstance(layers[-1], nn.InstanceNorm2d)  # no ReLU after the identity add
        assert first.in_channels == first.out_channels == 32  # 4 * base_channels


def test_block_adds_the_identity():
    block = ResnetBlock(8)
    x = torch.randn(1, 8, 12, 12)
    torch.testing.assert_close(block(x), x + block.conv_block(x))


def test_generator_widths_and_instance_norm_placement():
    generator = InpaintGenerator(13, 9, base_channels=16, n_residual_blocks=2)
    layers = leaves(generator)
    conv_layers = convs(generator)
    widths = [c.out_channels for c in conv_layers]
    assert widths == [16, 32, 64] + [64] * 4 + [32, 16, 9]
    assert [c.stride for c in conv_layers[:3]] == [(1, 1), (2, 2), (2, 2)]
    assert [type(c) for c in conv_layers[-3:]] == [nn.ConvTranspose2d, nn.ConvTranspose2d, nn.Conv2d]
    for conv in conv_layers[:-1]:
        following = layers[layers.index(conv) + 1]
        assert isinstance(following, nn.InstanceNorm2d)
        assert not following.affine and not following.track_running_stats
        assert conv.bias is None  # a bias before InstanceNorm would be subtracted again
    assert layers[-1] is conv_layers[-1] and conv_layers[-1].bias is not None
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in layers) == 5 + 2 * 2


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_generator_spectral_norm_on_all_convs_but_the_last(spectral_norm):
    generator = InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=2, spectral_norm=spectral_norm)
    flags = [hasattr(c, "weight_orig") for c in convs(generator)]
    assert len(flags) == 3 + 2 * 2 + 3
    assert flags == [spectral_norm] * (len(flags) - 1) + [False]


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_discriminator_spectral_norm_on_every_conv(spectral_norm):
    discriminator = PatchDiscriminator(3, 8, spectral_norm=spectral_norm)
    layers = convs(discriminator)
    assert [c.out_channels for c in layers] == [8, 16, 32, 64, 1]
    assert [c.stride for c in layers] == [(2, 2)] * 3 + [(1, 1)] * 2
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in layers)
    assert [hasattr(c, "weight_orig") for c in layers] == [spectral_norm] * 5
    assert all((c.bias is None) == spectral_norm for c in layers)
    slopes = [m.negative_slope for m in leaves(discriminator) if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2] * 4


def test_output_heads_squash_the_same_raw_output():
    torch.manual_seed(0)
    raw = InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=1, output="none")
    with torch.no_grad():
        raw.decoder[-1].weight.mul_(50)  # push raw outputs well outside [-1, 1]
    heads = {kind: InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=1, output=kind)
             for kind in ("tanh", "sigmoid")}
    x = torch.randn(2, 4, 32, 32)
    logits = raw(x)
    assert logits.min() < -1 and logits.max() > 1
    for kind, head in heads.items():
        head.load_state_dict(raw.state_dict())
        out = head(x)
        torch.testing.assert_close(out, getattr(torch, kind)(logits))
        low = -1 if kind == "tanh" else 0
        assert out.min() >= low and out.max() <= 1


def test_invalid_output_head():
    with pytest.raises(ValueError, match="tanh"):
        InpaintGenerator(4, 3, output="relu")


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_init_statistics(spectral_norm):
    torch.manual_seed(1)
    generator = InpaintGenerator(4, 3, base_channels=32, n_residual_blocks=2, spectral_norm=spectral_norm)
    for conv in convs(generator):
        weight = raw_weight(conv)
        if weight.numel() >= 10_000:
            assert abs(weight.std().item() - 0.02) < 0.001 and abs(weight.mean().item()) < 0.001
        if conv.bias is not None:
            assert torch.count_nonzero(conv.bias) == 0
        if hasattr(conv, "weight_orig"):
            # Spectral norm re-estimated after the init: the weight used is already of norm ~1.
            matrix = (conv.weight.transpose(0, 1) if isinstance(conv, nn.ConvTranspose2d) else conv.weight)
            sigma = torch.linalg.matrix_norm(matrix.flatten(1), ord=2).item()
            assert 0.95 < sigma < 1.1


def test_init_weights_reinitialises_spectral_norm_and_affine_norms():
    model = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(64, 64, 3)), nn.BatchNorm2d(64))
    init_weights(model, std=0.5)
    assert abs(model[0].weight_orig.std().item() - 0.5) < 0.02
    sigma = torch.linalg.matrix_norm(model[0].weight.flatten(1), ord=2).item()
    assert 0.95 < sigma < 1.1
    assert abs(model[1].weight.mean().item() - 1) < 0.2 and model[1].weight.std() > 0.3


def test_every_generator_parameter_gets_a_gradient():
    generator = InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=1, spectral_norm=True)
    generator(torch.randn(2, 4, 32, 32)).square().mean().backward()
    for name, parameter in generator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size", [(30, 32), (32, 34), (33, 33)])
def test_generator_rejects_sizes_not_divisible_by_4(size):
    generator = InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=1)
    with pytest.raises(ValueError, match=rf"divisible by 4.*{size[0]}x{size[1]}"):
        generator(torch.randn(1, 4, *size))


def test_generator_rejects_maps_too_small_for_the_dilation():
    generator = InpaintGenerator(4, 3, base_channels=8, n_residual_blocks=1, dilation=2)
    with pytest.raises(ValueError, match="H, W >= 12"):
        generator(torch.randn(1, 4, 8, 8))
    assert generator(torch.randn(1, 4, 12, 12)).shape == (1, 3, 12, 12)


def test_spectral_normed_networks_pickle_for_ddp_spawn():
    import pickle

    torch.manual_seed(0)
    discriminator = PatchDiscriminator(3, 8, spectral_norm=True)
    copy = pickle.loads(pickle.dumps(discriminator))
    image = torch.randn(1, 3, 32, 32)
    discriminator.eval(), copy.eval()
    assert torch.equal(copy(image)[0], discriminator(image)[0])
