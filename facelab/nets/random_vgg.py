"""A fixed-seed random VGG16 trunk in torchvision's file layout: the stand-in perceptual network of
`make demo` on a machine without torchvision's ImageNet weights.

Barbershop's LPIPS, masked style and blend losses are distances between VGG16 feature maps. Random
convolutional features are a usable perceptual / texture space: Gram matrices of untrained deep (He et al.,
NeurIPS 2016, "A powerful generative model using random weights for the deep image representation") and
single-layer multi-scale networks (Ustyuzhaninov et al., ICLR 2017, "What does it take to generate natural
textures?") synthesise textures and transfer styles. They are not calibrated to human judgements: a
distance measured with them is not comparable to published LPIPS figures, and whoever uses this file says so
next to the figure.

The weights are He-normal (fan-in, as torchvision's `kaiming_normal_` for VGG) with zero biases, drawn from
a torch.Generator seeded by `seed`: the same file on every machine, never downloaded, never committed.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from facelab.io.files import atomic_write_bytes
from facelab.nets.vgg import _CONV_CHANNELS, load_vgg16_features_state

RANDOM_VGG16_SEED = 0


def random_vgg16_state(seed: int = RANDOM_VGG16_SEED) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 `features.N.weight` / `.bias` tensors with He-normal weights and zero biases."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_in, c_out) in sorted(_CONV_CHANNELS.items()):
        fan_in = c_in * 9  # 3x3 kernels
        weight = torch.randn(c_out, c_in, 3, 3, generator=generator) * (2.0 / fan_in) ** 0.5
        state[f"features.{index}.weight"] = weight
        state[f"features.{index}.bias"] = torch.zeros(c_out)
    return state


def write_random_vgg16(path: str | Path, seed: int = RANDOM_VGG16_SEED) -> Path:
    """Write the random trunk to `path` (atomically) unless a readable VGG16 file with the same tensors is
    there already; returns the path. Both VGG16Features and LPIPS's trunk load it as torchvision's file."""
    path = Path(path)
    state = random_vgg16_state(seed)
    if path.is_file():
        try:
            stored = load_vgg16_features_state(path)
            if all(torch.equal(stored[key], value) for key, value in state.items()):
                return path
        except ValueError:
            pass  # unreadable or another network's file: written again below
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path
