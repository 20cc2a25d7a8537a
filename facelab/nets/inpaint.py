"""EdgeConnect's networks (Nazeri et al. 2019, knazeri/edge-connect): the two-stage generators and the
PatchGAN-like discriminator, shared by both stages of HOG-guided inpainting.

Generator: an encoder that downsamples twice (7x7, then two strided 4x4 convs), a middle of residual blocks
with dilated 3x3 convs at 1/4 resolution, a decoder that upsamples twice and ends in a 7x7 conv. Stage 1
(EdgeConnect's edge generator, here the face-shape/HOG predictor) puts spectral norm on every conv but the
last and ends in a sigmoid; stage 2 (the image generator) has no spectral norm and ends in tanh because our
images live in [-1, 1] (EdgeConnect's ends in (tanh + 1) / 2 for [0, 1] images).

Discriminator: five 4x4 convs, strides 2-2-2-1-1, spectral norm on all of them; it returns raw logits (the
GAN loss applies the sigmoid, see `facelab.losses.adversarial`) and the hidden activations for feature
matching.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import remove_spectral_norm, spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

OUTPUTS = ("tanh", "sigmoid", "none")
_AFFINE_NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)


def _maybe_spectral_norm(module: nn.Module, enabled: bool) -> nn.Module:
    """EdgeConnect's hook-based spectral norm (one power iteration per training forward). Unlike the
    parametrization API it pickles, which `trainer.strategy=ddp_spawn` needs to send the model to workers."""
    return _spectral_norm(module) if enabled else module


def _spectral_norm(module: nn.Module, warm_up_iterations: int = 15) -> nn.Module:
    """Spectral norm whose power iteration has already converged, so the first training step divides by
    the right sigma (the hook starts from random vectors and does one iteration per forward)."""
    spectral_norm(module)
    hook = next(h for h in module._forward_pre_hooks.values() if isinstance(h, SpectralNorm))
    with torch.no_grad():
        for _ in range(warm_up_iterations):
            hook.compute_weight(module, do_power_iteration=True)  # updates weight_u / weight_v in place
        setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=False))
    return module


def _is_spectral_normed(layer: nn.Module) -> bool:
    return hasattr(layer, "weight_orig")


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """EdgeConnect's norm: no affine parameters, statistics of the current image only (also at test time)."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """EdgeConnect's 'normal' init: conv/linear weights ~ N(0, std), biases 0, norm scales ~ N(1, std)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            _init_weight(layer, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, _AFFINE_NORMS) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, std)
            nn.init.zeros_(layer.bias)
    return module


def _init_weight(layer: nn.Module, std: float) -> None:
    if not _is_spectral_normed(layer):
        nn.init.normal_(layer.weight, 0.0, std)
        return
    # Spectral norm keeps power-iteration vectors estimated from the weight it was given; re-registering it
    # after the init re-estimates them, so the first forward already divides by the right sigma.
    remove_spectral_norm(layer)
    nn.init.normal_(layer.weight, 0.0, std)
    _spectral_norm(layer)


class ResnetBlock(nn.Module):
    """EdgeConnect's residual block: x + (pad-conv3x3 dilated-IN-ReLU-pad-conv3x3-IN)(x), no last ReLU."""

    def __init__(self, channels: int, dilation: int = 2, spectral_norm: bool = False):
        super().__init__()
        self.dilation = dilation
        # No conv bias: the InstanceNorm right after subtracts any per-channel constant again.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(dilation),
            _maybe_spectral_norm(nn.Conv2d(channels, channels, 3, dilation=dilation, bias=False),
                                 spectral_norm),
            instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            _maybe_spectral_norm(nn.Conv2d(channels, channels, 3, bias=False), spectral_norm),
            instance_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, H, W]
        return x + self.conv_block(x)


def _conv_norm_relu(conv: nn.Module, channels: int, spectral_norm: bool) -> list[nn.Module]:
    return [_maybe_spectral_norm(conv, spectral_norm), instance_norm(channels), nn.ReLU(inplace=True)]


class InpaintGenerator(nn.Module):
    """EdgeConnect's generator (both stages): encoder, dilated residual middle, decoder; H, W % 4 == 0."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 64,
                 n_residual_blocks: int = 8, dilation: int = 2, spectral_norm: bool = False,
                 output: Literal["tanh", "sigmoid", "none"] = "tanh"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}; choose one of {OUTPUTS}.")
        self.output = output
        self.dilation = dilation
        b, sn = base_channels, spectral_norm
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3),
            *_conv_norm_relu(nn.Conv2d(in_channels, b, 7, bias=False), b, sn),
            *_conv_norm_relu(nn.Conv2d(b, 2 * b, 4, stride=2, padding=1, bias=False), 2 * b, sn),
            *_conv_norm_relu(nn.Conv2d(2 * b, 4 * b, 4, stride=2, padding=1, bias=False), 4 * b, sn),
        )
        self.middle = nn.Sequential(*[ResnetBlock(4 * b, dilation, sn) for _ in range(n_residual_blocks)])
        self.decoder = nn.Sequential(
            *_conv_norm_relu(nn.ConvTranspose2d(4 * b, 2 * b, 4, stride=2, padding=1, bias=False), 2 * b, sn),
            *_conv_norm_relu(nn.ConvTranspose2d(2 * b, b, 4, stride=2, padding=1, bias=False), b, sn),
            nn.ReflectionPad2d(3),
            nn.Conv2d(b, out_channels, 7),  # never spectral-normed: it sets the output scale
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, in_channels, H, W] -> [B, out_channels, H, W]
        height, width = x.shape[-2:]
        if height % 4 or width % 4:
            raise ValueError(f"InpaintGenerator needs H and W divisible by 4 (two stride-2 downsamplings), "
                             f"got {height}x{width}; pad or resize the input.")
        if min(height, width) // 4 <= self.dilation:
            # Reflection padding cannot pad by more than the size of the 1/4-resolution map minus one.
            raise ValueError(f"InpaintGenerator with dilation {self.dilation} needs H, W >= "
                             f"{4 * (self.dilation + 1)}, got {height}x{width}.")
        x = self.decoder(self.middle(self.encoder(x)))
        if self.output == "tanh":
            return torch.tanh(x)
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        return x


class PatchDiscriminator(nn.Module):
    """EdgeConnect's discriminator: five 4x4 convs (strides 2,2,2,1,1), LeakyReLU 0.2, spectral norm."""

    def __init__(self, in_channels: int, base_channels: int = 64, spectral_norm: bool = True):
        super().__init__()
        b = base_channels
        widths = [in_channels, b, 2 * b, 4 * b, 8 * b]
        strides = [2, 2, 2, 1]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                # The bias is dropped under spectral norm, as EdgeConnect does.
                _maybe_spectral_norm(nn.Conv2d(c_in, c_out, 4, stride, padding=1, bias=not spectral_norm),
                                     spectral_norm),
                nn.LeakyReLU(0.2),
            )
            for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides, strict=True)
        )
        self.classifier = _maybe_spectral_norm(nn.Conv2d(8 * b, 1, 4, 1, padding=1, bias=not spectral_norm),
                                               spectral_norm)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # x [B, in_channels, H, W]
        """(logits `[B, 1, H/8 - 2, W/8 - 2]`, the four hidden activations). EdgeConnect's feature list also
        ends with the final map; append the logits for its exact feature-matching loss."""
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.classifier(x), features
