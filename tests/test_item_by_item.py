"""facelab.nets.item_by_item: a frozen network's item gets the same bits alone as in a batch (CPU)."""

from __future__ import annotations

import torch
from torch import nn

from facelab.nets.item_by_item import ItemByItemConv2d, ItemByItemLinear, item_by_item
from facelab.nets.vgg import VGG16Features
from tests.fit_models import save_random_vgg16


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(),
        nn.Linear(64 * 16 * 16, 10),
    ).requires_grad_(False)


def test_layers_are_switched_in_place_with_the_same_weights_and_keys():
    network = _network()
    keys, outputs = list(network.state_dict()), network(torch.ones(1, 32, 16, 16))
    assert item_by_item(network) is network
    assert [type(m) for m in network if isinstance(m, (nn.Conv2d, nn.Linear))] == [
        ItemByItemConv2d, ItemByItemConv2d, ItemByItemLinear,
    ]
    assert list(network.state_dict()) == keys
    assert torch.equal(network(torch.ones(1, 32, 16, 16)), outputs)  # a batch of one: unchanged


def test_an_item_gets_the_same_bits_alone_and_in_a_batch_with_its_gradient():
    batch = torch.randn(5, 32, 16, 16)
    network = item_by_item(_network())
    results = []
    for images in (batch, batch[3:4]):
        images = images.clone().requires_grad_(True)
        out = network(images)
        out.mul(torch.arange(10.0)).sum().backward()
        results.append((out.detach(), images.grad))
    (out_5, grad_5), (out_1, grad_1) = results
    assert torch.equal(out_5[3:4], out_1) and torch.equal(grad_5[3:4], grad_1)
    # the batched result agrees to rounding: the switch changes no arithmetic
    torch.testing.assert_close(out_5, _network()(batch), rtol=1e-5, atol=1e-5)


def test_a_tapped_vgg_returns_the_same_taps_item_by_item(tmp_path):
    save_random_vgg16(tmp_path / "vgg16.pth")
    vgg = VGG16Features(("relu1_2", "relu2_2"), tmp_path / "vgg16.pth", imagenet_input=False)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    batched = vgg(images)
    alone = item_by_item(vgg)(images[2:3])
    together = vgg(images)
    for name in batched:
        assert torch.equal(together[name][2:3], alone[name])
        torch.testing.assert_close(together[name], batched[name], rtol=1e-5, atol=1e-5)
