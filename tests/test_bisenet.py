"""BiSeNet face parsing: checkpoint layout, loading and `parse`.

Layout facts (key names and shapes) come from zllrunning/face-parsing.PyTorch `model.py` (BiSeNet,
ContextPath, AttentionRefinementModule, FeatureFusionModule, BiSeNetOutput) and its `resnet.py`
(Resnet18: conv1 7x7 64, bn1, layer1..layer4 of two BasicBlocks with conv1/bn1/conv2/bn2 and a
`downsample` Sequential(1x1 conv, BN) when the width or stride changes). Barbershop's
`models/face_parsing/model.py` defines the same modules with the same widths (its seg.pth: 16 classes).
No real checkpoint is available offline, so random-init state dicts stand in for them.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from facelab.nets.bisenet import IMAGENET_MEAN, IMAGENET_STD, BiSeNet, load_bisenet, normalize, parse


def _save(state, tmp_path, name="bisenet.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _random_state(n_classes: int) -> OrderedDict:
    torch.manual_seed(n_classes)
    net = BiSeNet(n_classes)
    with torch.no_grad():  # running stats that differ from a fresh net's
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.01)
            elif name.endswith("running_var"):
                buffer.uniform_(0.01, 0.02)
    return net.state_dict()


def test_layout_matches_the_reference_checkpoint_keys():
    state = BiSeNet(19).state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["cp.resnet.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["cp.resnet.bn1.running_mean"] == (64,)
    assert shapes["cp.resnet.layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["cp.resnet.layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["cp.resnet.layer4.1.bn2.weight"] == (512,)
    assert shapes["cp.arm16.conv.conv.weight"] == (128, 256, 3, 3)
    assert shapes["cp.arm32.conv_atten.weight"] == (128, 128, 1, 1)
    assert shapes["cp.arm32.bn_atten.running_var"] == (128,)
    assert shapes["cp.conv_head32.conv.weight"] == (128, 128, 3, 3)
    assert shapes["cp.conv_avg.conv.weight"] == (128, 512, 1, 1)
    assert shapes["ffm.convblk.conv.weight"] == (256, 256, 1, 1)
    assert shapes["ffm.conv1.weight"] == (64, 256, 1, 1)
    assert shapes["ffm.conv2.weight"] == (256, 64, 1, 1)
    assert shapes["conv_out.conv.conv.weight"] == (256, 256, 3, 3)
    assert shapes["conv_out.conv_out.weight"] == (19, 256, 1, 1)
    assert shapes["conv_out16.conv_out.weight"] == (19, 64, 1, 1)
    assert shapes["conv_out32.conv.conv.weight"] == (64, 128, 3, 3)
    # layer1 keeps width and stride: no downsample; no separate spatial path (`sp`), no fc, bias-free convs.
    assert not any(".layer1." in key and "downsample" in key for key in state)
    assert not any(key.startswith("sp.") or "fc" in key for key in state)
    convs = [module for module in BiSeNet(19).modules() if isinstance(module, nn.Conv2d)]
    # ResNet 1 + 16 + 3 downsamples, ARMs 4, heads + conv_avg 3, FFM 3, outputs 6.
    assert len(convs) == 36 and all(conv.bias is None for conv in convs)
    # Count: ResNet-18 6 + 8 blocks x 12 + 3 downsamples x 6 = 120; two ARMs 24; two heads + conv_avg 18;
    # FFM 8; three outputs 21 (a BN has 5 entries: weight, bias, running mean/var, num_batches_tracked).
    assert len(state) == 191


@pytest.mark.parametrize(("n_classes", "size"), [(19, (64, 64)), (16, (64, 48))])
def test_saved_state_dicts_load_and_give_full_size_logits(tmp_path, n_classes, size):
    state = _random_state(n_classes)
    net = load_bisenet(_save(state, tmp_path))
    assert net.n_classes == n_classes and not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = net(images)
        main, aux16, aux32 = net(images, return_aux=True)
    assert logits.shape == (2, n_classes, *size)
    assert aux16.shape == aux32.shape == (2, n_classes, *size)
    assert torch.allclose(main, logits) and logits.std() > 0
    assert not torch.allclose(aux16, logits)


def test_a_narrower_parser_scales_every_width_and_loads_with_its_width_read_from_the_file(tmp_path):
    narrow = BiSeNet(19, width=32)
    full_shapes = {key: tuple(value.shape) for key, value in BiSeNet(19).state_dict().items()}
    for key, value in narrow.state_dict().items():  # channel counts halve; kernels, RGB and classes stay
        expected = [size // 2 if size in (64, 128, 256, 512) and i < 2 else size
                    for i, size in enumerate(full_shapes[key])]
        assert list(value.shape) == expected, key
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(narrow) < count(BiSeNet(19)) / 3.9
    torch.manual_seed(0)
    saved = BiSeNet(19, width=32).state_dict()
    net = load_bisenet(_save(saved, tmp_path))
    assert net.width == 32 and torch.equal(net.state_dict()["ffm.conv2.weight"], saved["ffm.conv2.weight"])
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_module_prefixed_state_dict_loads(tmp_path):
    state = _random_state(16)
    prefixed = OrderedDict((f"module.{key}", value) for key, value in state.items())
    net = load_bisenet(_save(prefixed, tmp_path))
    assert net.n_classes == 16
    assert torch.equal(net.state_dict()["cp.resnet.conv1.weight"], state["cp.resnet.conv1.weight"])


def test_state_dict_without_batch_counters_loads(tmp_path):
    state = _random_state(19)
    old = OrderedDict((key, value) for key, value in state.items() if not key.endswith("num_batches_tracked"))
    assert len(old) < len(state)
    net = load_bisenet(_save(old, tmp_path))
    assert torch.equal(net.state_dict()["ffm.conv1.weight"], state["ffm.conv1.weight"])


def test_missing_and_unexpected_keys_raise_value_error_listing_both(tmp_path):
    state = _random_state(19)
    del state["cp.arm16.conv_atten.weight"]
    state["cp.sp.conv1.conv.weight"] = torch.zeros(64, 3, 7, 7)
    path = _save(state, tmp_path, "broken.pth")
    with pytest.raises(ValueError) as error:
        load_bisenet(path)
    message = str(error.value)
    assert "cp.arm16.conv_atten.weight" in message
    assert "cp.sp.conv1.conv.weight" in message
    assert str(path) in message


def test_wrong_shape_raises_value_error(tmp_path):
    state = _random_state(19)
    state["ffm.conv1.weight"] = torch.zeros(32, 256, 1, 1)
    with pytest.raises(ValueError, match="ffm.conv1.weight"):
        load_bisenet(_save(state, tmp_path))


def test_missing_file_raises_file_not_found_naming_it_and_the_sources(tmp_path):
    path = tmp_path / "nowhere" / "seg.pth"
    with pytest.raises(FileNotFoundError) as error:
        load_bisenet(path)
    message = str(error.value)
    assert str(path) in message
    assert "79999_iter.pth" in message and "seg.pth" in message and "never downloads" in message


def test_normalize_maps_minus_one_one_to_imagenet_statistics():
    images = torch.stack([torch.full((3, 2, 2), -1.0), torch.full((3, 2, 2), 1.0)])
    out = normalize(images)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], -mean / std)
    assert torch.allclose(out[1, :, 0, 0], (1 - mean) / std)


class _Identity(nn.Module):
    """Logits = the (normalised) input channels, so the argmax reveals the normalisation."""

    def forward(self, x):
        return x


def test_parse_normalises_before_argmax():
    # Grey 0 in [-1, 1] is 0.5 in [0, 1]: normalised (0.066, 0.196, 0.418) -> class 2; raw ties -> class 0.
    images = torch.zeros(1, 3, 2, 2)
    images[0, 0, 0, 0] = 0.2  # (0.6, 0.5, 0.5) normalised: (0.502, 0.196, 0.418) -> class 0
    labels = parse(_Identity(), images)
    assert labels.dtype == torch.long and labels.shape == (1, 2, 2)
    assert labels.tolist() == [[[0, 2], [2, 2]]]


def test_parse_returns_labels_in_range(tmp_path):
    net = load_bisenet(_save(_random_state(16), tmp_path))
    labels = parse(net, torch.rand(2, 3, 64, 64) * 2 - 1)
    assert labels.dtype == torch.long and labels.shape == (2, 64, 64)
    assert labels.min() >= 0 and labels.max() < 16
