"""Functional core of the StyleGAN2 generator in plain PyTorch (no custom CUDA ops).

The arithmetic follows NVlabs stylegan2-ada-pytorch (`training/networks.py`, `torch_utils/ops/upfirdn2d.py`,
`conv2d_resample.py`, `bias_act.py`): an FIR filter normalised to sum 1 and scaled by `up**2` when
upsampling, the 3x3 upsampling conv as a stride-2 transposed conv followed by the filter with one pixel of
padding per side, and leaky ReLU (slope 0.2) with gain sqrt(2) and an optional clamp after the gain.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from facelab.nets.item_by_item import one_at_a_time

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def setup_filter(taps: list[float] | tuple[float, ...] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable low-pass filter `[k, k]` from 1-D taps, normalised to sum 1 (as NVlabs `setup_filter`)."""
    kernel_1d = torch.as_tensor(taps, dtype=torch.float32)
    kernel = torch.outer(kernel_1d, kernel_1d)
    return kernel / kernel.sum()


def fir_filter(
    x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], gain: float = 1.0
) -> torch.Tensor:
    """Pad (before, after) on H and W, then convolve every channel with `kernel` [k, k] times `gain` (NVlabs
    upfirdn2d with up=down=1, a true convolution: the kernel is flipped). x: [B, C, H, W] -> [B, C, H', W'].

    One depthwise conv (groups = channels), as NVlabs' reference op: on CPUs its backward and double
    backward (R1) are 3-9x faster than folding the channels into the batch for a one-channel conv, and
    faster than two 1-D passes (benchmarks/bench_stylegan2_training.py)."""
    channels = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = (kernel * gain).flip([0, 1]).to(x.dtype)
    return F.conv2d(x, weight[None, None].repeat(channels, 1, 1, 1), groups=channels)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Zero-insertion upsampling by `up`, symmetric padding (before, after) on H and W, then FIR filtering
    with the kernel [k, k] (`fir_filter`). x: [B, C, H, W]."""
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    return fir_filter(x, kernel, pad, gain)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Upsample `[B, C, H, W]` to `[B, C, H*up, W*up]` with the FIR filter, gain up**2 (NVlabs)."""
    taps = kernel.shape[-1]
    return upfirdn2d(x, kernel, up=up, pad=((taps + up - 1) // 2, (taps - up) // 2), gain=up**2)


def bias_lrelu(x: torch.Tensor, bias: torch.Tensor, gain: float = LRELU_GAIN,
               clamp: float | None = None) -> torch.Tensor:
    """x + bias, leaky ReLU (0.2), times `gain`, then clamp to +-clamp when given (NVlabs `bias_act`)."""
    x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    x = F.leaky_relu(x, LRELU_SLOPE) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def bias_linear(x: torch.Tensor, bias: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """x + bias, then clamp to +-clamp when given (NVlabs `bias_act` with act='linear')."""
    x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (the paper's PixelNorm on z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,                    # [batch_size, in_channels, in_height, in_width]
    weight: torch.Tensor,               # [out_channels, in_channels, kernel_height, kernel_width]
    styles: torch.Tensor,               # Modulation coefficients [batch_size, in_channels].
    noise: torch.Tensor | None = None,  # Added after (de)modulation: [B, 1, out_h, out_w] or [out_h, out_w].
    up: int = 1,                        # 1 or 2; 2 = transposed conv followed by `resample_filter`.
    padding: int = 0,                   # Padding of the 3x3 convolution (1 in StyleGAN2).
    resample_filter: torch.Tensor | None = None,  # [k, k] filter from `setup_filter`, needed when up=2.
    demodulate: bool = True,            # Scale each sample's output filters to unit norm?
    fused: bool = True,                 # One grouped conv with per-sample weights, or the shared weight.
) -> torch.Tensor:
    """Per-sample modulated (and demodulated) convolution; returns [B, O, H', W'].

    The two forms are equal up to float rounding (NVlabs `modulated_conv2d`'s `fused_modconv`):
    - fused: each sample's weight W * s (demodulated) in one grouped conv, as NVlabs runs the generator in
      eval mode;
    - not fused: the shared weight between two scalings, conv(x * s, W) * d, as NVlabs trains. facelab's
      generator always takes this form, so a latent's image is the same whether or not a gradient is
      taken. When gradients reach the styles (a latent fit), it skips the per-sample weight gradient that
      the fused form pays for (a second conv's worth of work per layer): a config-F step at 256 px is 1.5x
      faster per item on a CPU. The demodulation coefficients come from sum_i s_i^2 sum_k W_oik^2, not
      from the per-sample weights.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape  # [OIkk]
    assert x.ndim == 4 and x.shape[1] == in_channels, f"x {tuple(x.shape)} vs weight {tuple(weight.shape)}"
    assert styles.shape == (batch_size, in_channels), f"styles {tuple(styles.shape)}"
    if not fused:
        return _modulated_conv2d_shared(x, weight, styles, noise, up, padding, resample_filter, demodulate)

    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, 1, 1)  # [NOIkk]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [NO]
        w = w * dcoefs.reshape(batch_size, out_channels, 1, 1, 1)

    x = x.reshape(1, batch_size * in_channels, *x.shape[2:])
    if up == 1:
        w = w.reshape(batch_size * out_channels, in_channels, kh, kw)
        x = F.conv2d(x, w.to(x.dtype), padding=padding, groups=batch_size)
    else:
        assert up == 2 and resample_filter is not None, "only up=2 with a resample filter is supported"
        # Transposed conv takes weights [in, out/groups, k, k] per group.
        w = w.transpose(1, 2).reshape(batch_size * in_channels, out_channels, kh, kw)
        x = F.conv_transpose2d(x, w.to(x.dtype), stride=2, groups=batch_size)
        x = _upsampling_filter(x, resample_filter, padding, kw)
    x = x.reshape(batch_size, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _modulated_conv2d_shared(x, weight, styles, noise, up, padding, resample_filter, demodulate):
    """`modulated_conv2d` with `fused=False`: conv(x * s, W) * d (+ noise).

    On a CPU the convolution runs item by item: oneDNN rounds a batched convolution's rows differently
    depending on the batch size (about 1e-6 relative), which a latent fit's steps amplify past the promise
    that an item's result does not depend on its batch-mates, and the batch buys nothing there (a config-F
    layer is compute-bound at one item). On a GPU the batch shares one convolution."""
    batch_size, in_channels = styles.shape
    x = x * styles.to(x.dtype).reshape(batch_size, in_channels, 1, 1)
    if up == 1:
        conv = partial(F.conv2d, weight=weight.to(x.dtype), padding=padding)
    else:
        assert up == 2 and resample_filter is not None, "only up=2 with a resample filter is supported"
        conv = partial(F.conv_transpose2d, weight=weight.transpose(0, 1).to(x.dtype), stride=2)
    x = one_at_a_time(conv, x)
    if up == 2:
        x = _upsampling_filter(x, resample_filter, padding, weight.shape[-1])
    if demodulate:
        # sum_i s_i^2 sum_k W_oik^2 as a broadcast sum, whose rows do not depend on the batch (a matmul's may)
        energy = styles.square().unsqueeze(1) * weight.square().sum(dim=[2, 3]).unsqueeze(0)  # [B, O, I]
        dcoefs = (energy.sum(dim=2) + 1e-8).rsqrt()  # [B, O]
        x = x * dcoefs.to(x.dtype).reshape(*dcoefs.shape, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _upsampling_filter(x: torch.Tensor, resample_filter: torch.Tensor, padding: int, kernel: int):
    """The FIR filter after the stride-2 transposed conv. NVlabs conv2d_resample pads
    ((f + up - 1) // 2 + p - (k - 1), (f - up) // 2 + p - (k - up)) per side, up = 2."""
    taps, up = resample_filter.shape[-1], 2
    pad0 = (taps + up - 1) // 2 + padding - (kernel - 1)
    pad1 = (taps - up) // 2 + padding - (kernel - up)
    return upfirdn2d(x, resample_filter, pad=(pad0, pad1), gain=up**2)
