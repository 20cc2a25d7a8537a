"""Convolutions and linear layers that give an item the same bits whatever its batch-mates (on a CPU).

oneDNN's and BLAS's batched kernels round a row differently with the batch size (about 1e-6 relative for a
conv2d with a small feature map), and a latent fit's Adam steps amplify that past the promise that an
item's result does not depend on the items fitted beside it. A frozen network inside a latent fit (LPIPS,
the style VGG, the parser) is therefore switched, layer by layer, to run each item alone on a CPU: a
layer of these networks is compute-bound at one item there, so this costs little. On a GPU the layers run
batched as before. StyleGAN2's modulated layers do the same by themselves (`facelab.nets.stylegan2`).
"""

from __future__ import annotations

import torch
from torch import nn


def one_at_a_time(forward, x: torch.Tensor) -> torch.Tensor:
    """`forward(x)`, on a CPU run on each item of the batch `x` alone and concatenated (elsewhere, or for a
    batch of one, in one call)."""
    if x.device.type != "cpu" or x.shape[0] < 2:
        return forward(x)
    return torch.cat([forward(item) for item in x.split(1)])


class ItemByItemConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return one_at_a_time(super().forward, x)


class ItemByItemLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return one_at_a_time(super().forward, x)


_SWITCHED = {nn.Conv2d: ItemByItemConv2d, nn.Linear: ItemByItemLinear}


def item_by_item(network: nn.Module) -> nn.Module:
    """Switch every `nn.Conv2d` / `nn.Linear` of `network` (in place) to its item-by-item form; returns it.
    Weights, state-dict keys and results on a batch of one are unchanged."""
    for layer in network.modules():
        switched = _SWITCHED.get(type(layer))
        if switched is not None:
            layer.__class__ = switched
    return network
