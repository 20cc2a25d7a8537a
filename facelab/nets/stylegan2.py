"""StyleGAN2 config-F generator (skip architecture) in plain PyTorch, with NVlabs parameter names.

Arithmetic and state-dict keys follow NVlabs stylegan2-ada-pytorch `training/networks.py`, so the
`G_ema.state_dict()` of an NVlabs pickle (stylegan2-ada-pytorch, or the stylegan3 repo's
`networks_stylegan2`) loads with `strict=True`. Module names follow the paper (and rosinality's
`model.py`). It runs in float32 only: NVlabs' fp16 blocks (`num_fp16_res`) change precision, not the
function. The moving average `w_avg` is never updated here (this generator is used frozen).

Synthesis hooks for latent editing: `return_features` gives each block's output `{res: x}`,
`stop_after=res` ends after that block, `start_at=res` resumes after it from given features (Barbershop's
FS space starts after the 32x32 block; DragGAN reads the 128x128 block's features).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from facelab.nets.item_by_item import one_at_a_time
from facelab.nets.stylegan2_ops import (
    bias_linear,
    bias_lrelu,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: weight gain lr_mul / sqrt(fan_in), bias gain lr_mul."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        assert activation in ("linear", "lrelu")
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.matmul((self.weight * self.weight_gain).t())
        bias = self.bias * self.bias_gain
        return bias_lrelu(x, bias) if self.activation == "lrelu" else x + bias


class MappingNetwork(nn.Module):
    """z -> w: PixelNorm then `num_layers` lrelu FC layers (lr x0.01), broadcast to num_ws, truncation."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_multiplier: float = 0.01):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B, {self.z_dim}], got {tuple(z.shape)}"
        x = normalize_2nd_moment(z.to(torch.float32))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [B, num_ws, w_dim]
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            head = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([head, ws[:, cutoff:]], dim=1)
        return ws


class ModulatedConv2d(nn.Module):
    """Style-modulated (optionally demodulated) conv; `up=2` is the transposed conv + [1,3,3,1] blur."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 3, up: int = 1,
                 demodulate: bool = True, style_gain: float = 1.0):
        super().__init__()
        self.up, self.demodulate, self.padding, self.style_gain = up, demodulate, kernel_size // 2, style_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return modulated_conv2d(x, self.weight, self.styles(w), noise=noise, up=self.up, padding=self.padding,
                                resample_filter=getattr(self, "resample_filter", None),
                                demodulate=self.demodulate, fused=False)

    def styles(self, w: torch.Tensor) -> torch.Tensor:
        """The modulation [B, in_channels] of latents [B, w_dim]. On a CPU item by item, as the convolution
        (`modulated_conv2d`, fused=False): a batched matmul rounds a row differently by batch size."""
        return one_at_a_time(self.affine, w) * self.style_gain


class SynthesisLayer(ModulatedConv2d):
    """One style block: modulated conv, noise (const/random/none) x noise_strength, bias, lrelu x sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None, resample_filter: tuple[float, ...] = (1, 3, 3, 1)):
        super().__init__(in_channels, out_channels, w_dim, kernel_size=3, up=up)
        self.resolution, self.conv_clamp = resolution, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        assert noise_mode in ("const", "random", "none"), f"unknown noise_mode {noise_mode!r}"
        in_resolution = self.resolution // self.up
        assert x.shape[1:] == (self.weight.shape[1], in_resolution, in_resolution), f"x {tuple(x.shape)}"
        noise = None
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [res, res], broadcast over batch and channels
        return bias_lrelu(super().forward(x, w, noise=noise), self.bias, clamp=self.conv_clamp)


class ToRGB(ModulatedConv2d):
    """Modulated 1x1 conv to RGB without demodulation; the weight gain 1/sqrt(fan_in) goes on the styles."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__(in_channels, img_channels, w_dim, kernel_size=1, demodulate=False,
                         style_gain=1 / math.sqrt(in_channels))
        self.conv_clamp = conv_clamp
        self.bias = nn.Parameter(torch.zeros([img_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return bias_linear(super().forward(x, w), self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const input | conv0 with 2x upsampling), conv1, ToRGB added to the upsampled image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 conv_clamp: float | None = None, resample_filter: tuple[float, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.img_channels = img_channels
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp, resample_filter=resample_filter)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp, resample_filter=resample_filter)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,    # [B, in_channels, res/2, res/2], None for the first block
        img: torch.Tensor | None,  # [B, img_channels, res/2, res/2] RGB so far, None for the first block
        ws: torch.Tensor,          # [B, num_conv + num_torgb, w_dim]
        noise_mode: str = "const",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert ws.shape[1] == self.num_conv + self.num_torgb, f"block {self.resolution}: ws {tuple(ws.shape)}"
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            half = self.resolution // 2
            assert x is not None and x.shape[1:] == (self.in_channels, half, half), f"block {self.resolution}"
            x = self.conv0(x.to(torch.float32), next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        rgb = self.torgb(x, next(w_iter))
        img = rgb if img is None else img + rgb
        return x, img  # [B, out_channels, res, res], [B, img_channels, res, res]


class SynthesisNetwork(nn.Module):
    """ws -> image through blocks b4 ... b{img_resolution}; channels min(channel_base // res, channel_max)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None,
                 resample_filter: tuple[float, ...] = (1, 3, 3, 1)):
        super().__init__()
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0, "resolution: a power of 2"
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        self.channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.first_w_index: dict[int, int] = {}  # index in ws of each block's first latent
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, self.channels[res], w_dim, res, img_channels,
                                   conv_clamp=conv_clamp, resample_filter=resample_filter)
            setattr(self, f"b{res}", block)
            self.first_w_index[res] = self.num_ws
            self.num_ws += block.num_conv  # a block's ToRGB shares the next block's first latent
        self.num_ws += 1  # the last ToRGB's own latent

    def forward(
        self,
        ws: torch.Tensor,                            # [B, num_ws, w_dim], or the tail used after `start_at`
        noise_mode: str = "const",
        return_features: bool = False,               # also return {res: block output [B, C_res, res, res]}
        start_at: int | None = None,                 # resume after block `start_at` ...
        start_features: torch.Tensor | None = None,  # ... from its output [B, C_res, res, res]
        start_img: torch.Tensor | None = None,       # ... and its RGB [B, img_channels, res, res] or None
        stop_after: int | None = None,               # end after this block
    ):
        """The image [B, img_channels, H, W]; `(img, features)` with return_features; with `stop_after` and
        no return_features, that block's features; with both, `(img so far, features)`."""
        offset = 0
        if start_at is not None:
            resumable = self.block_resolutions[:-1]
            assert start_at in resumable, f"start_at must be one of {resumable}"
            assert start_features is not None, "start_at needs start_features (that block's output)"
            offset = self.first_w_index[start_at * 2]
            if ws.shape[1] == self.num_ws - offset:  # only the latents that are still used
                ws = torch.cat([ws.new_zeros(ws.shape[0], offset, ws.shape[2]), ws], dim=1)
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), (
            f"ws must be [B, {self.num_ws}, {self.w_dim}] (or its last {self.num_ws - offset} latents after "
            f"start_at), got {tuple(ws.shape)}")
        assert stop_after is None or stop_after in self.block_resolutions, f"bad stop_after {stop_after}"
        ws = ws.to(torch.float32)
        x, img = (start_features, start_img) if start_at is not None else (None, None)
        features: dict[int, torch.Tensor] = {}
        for res in self.block_resolutions:
            if start_at is not None and res <= start_at:
                continue
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, self.first_w_index[res], block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode)
            features[res] = x
            if res == stop_after:
                break
        if return_features:
            return img, features
        return x if stop_after is not None else img


class Generator(nn.Module):
    """StyleGAN2 generator: `mapping` (z -> ws) then `synthesis` (ws -> image in about [-1, 1])."""

    def __init__(
        self,
        z_dim: int = 512,                    # Input latent (Z) dimensionality.
        w_dim: int = 512,                    # Intermediate latent (W) dimensionality.
        img_resolution: int = 1024,          # Output resolution, a power of two in 4..1024.
        img_channels: int = 3,               # Number of output colour channels.
        mapping_layers: int = 8,             # Number of FC layers in the mapping network.
        channel_base: int = 32768,           # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max: int = 512,
        conv_clamp: float | None = None,     # Clamp conv outputs to +-X; None for config F (ffhq.pkl).
        mapping_lr_multiplier: float = 0.01, # Equalised-lr multiplier of the mapping layers.
    ):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.config = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                           mapping_layers=mapping_layers, channel_base=channel_base, channel_max=channel_max,
                           conv_clamp=conv_clamp, mapping_lr_multiplier=mapping_lr_multiplier)
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base=channel_base,
                                          channel_max=channel_max, conv_clamp=conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_layers=mapping_layers,
                                      lr_multiplier=mapping_lr_multiplier)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)  # [B, img_channels, H, W]
