"""Per-item network weights: one flat weight vector per item of a batch, applied with
`torch.func.functional_call`, so that B items each carry their own fine-tuned copy of a frozen network
(PTI's generator tuned on one photo, Roich et al. 2021) and an item's result never depends on its batch-mates.

A flat vector `[P]` holds every parameter of the network in `named_parameters()` order; `[B, P]` is one per
item. The vector is the unit that is optimised (Adam acts per element, so each item's row moves only with its
own gradient), checkpointed and cached; `unflatten` turns a row back into views of the parameter shapes, so
gradients flow from the network's output to the row.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def parameter_layout(network: nn.Module) -> list[tuple[str, torch.Size]]:
    """(name, shape) of each parameter, in the order a flat vector holds them."""
    return [(name, parameter.shape) for name, parameter in network.named_parameters()]


@torch.no_grad()
def flatten_weights(network: nn.Module) -> torch.Tensor:
    """The network's own parameters as one flat vector `[P]`."""
    return torch.cat([parameter.detach().reshape(-1) for parameter in network.parameters()])


def unflatten(flat: torch.Tensor, layout: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    """A flat vector `[P]` as `{name: view of the parameter's shape}` (differentiable)."""
    sizes = [shape.numel() for _, shape in layout]
    assert flat.ndim == 1 and flat.numel() == sum(sizes), (
        f"a flat weight vector of {sum(sizes)} values expected, got {tuple(flat.shape)}"
    )
    pieces = torch.split(flat, sizes)
    return {name: piece.view(shape) for (name, shape), piece in zip(layout, pieces, strict=True)}


def call_per_item(
    network: nn.Module,
    weights: torch.Tensor,  # [B, P] one flat weight vector per item
    inputs: torch.Tensor,  # [B, ...] each item's input
    **kwargs,
) -> torch.Tensor:
    """`network(inputs[i:i+1], **kwargs)` with item i's weights, for each item, stacked `[B, ...]`.

    One forward pass per item: a batch of items with different weights is B networks. Buffers (e.g. a
    StyleGAN2's constant noise) are the network's own."""
    assert weights.ndim == 2 and weights.shape[0] == inputs.shape[0], (
        f"weights [B, P] and inputs [B, ...] of one B expected, got {tuple(weights.shape)} and "
        f"{tuple(inputs.shape)}"
    )
    layout = parameter_layout(network)
    outputs = [
        functional_call(network, unflatten(weights[index], layout), (inputs[index : index + 1],), kwargs)
        for index in range(inputs.shape[0])
    ]
    return torch.cat(outputs)
