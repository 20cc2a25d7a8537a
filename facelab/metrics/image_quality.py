"""Per-image full-reference metrics on `[B, C, H, W]` images in [0, 1] (data_range 1): PSNR, SSIM, L1, RMSE,
EdgeConnect's normalised MAE. Each returns one value per image, `[B]`, so callers can average per image
(as inpainting papers report) and group images by hole ratio.

PSNR and SSIM equal `skimage.metrics.peak_signal_noise_ratio(data_range=1)` and
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
channel_axis=...)` per image. A perfect image has infinite PSNR; `psnr` caps it at `cap_db` (100 dB by
default, `None` keeps inf) so a mean over images stays finite. 100 dB is above any real pair of 8-bit
images: one pixel of one channel off by 1/255 in a 256 x 256 RGB image is already 101.1 dB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 256 levels an 8-bit PNG keeps, as papers score saved files."""
    return images.mul(255).round().div(255)


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ValueError(
            f"Expected two [B, C, H, W] tensors of one shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}."
        )


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B]` mean of squared differences over channels and pixels."""
    _check_pair(prediction, target)
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def psnr(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    cap_db: float | None = PSNR_CAP_DB,
) -> torch.Tensor:
    """`[B]` peak signal-to-noise ratio in dB, capped at `cap_db` (a perfect image gives the cap, or inf)."""
    mse = mean_squared_error(prediction, target).double()  # float64: 10 log10 of tiny MSEs stays exact
    value = 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf
    return value if cap_db is None else value.clamp_max(cap_db)


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B]` root mean squared error."""
    return mean_squared_error(prediction, target).sqrt()


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B]` mean absolute error over channels and pixels (the L1 / MAE of mmagic and most tables)."""
    _check_pair(prediction, target)
    return (prediction.float() - target.float()).abs().flatten(1).mean(dim=1)


def edgeconnect_mae(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B]` EdgeConnect's MAE, sum|a - b| / sum(a + b) per image (scripts/metrics.py `compare_mae`)."""
    _check_pair(prediction, target)
    difference = (prediction.float() - target.float()).abs().flatten(1).sum(dim=1)
    total = (prediction.float() + target.float()).flatten(1).sum(dim=1)
    return difference / total.clamp_min(torch.finfo(torch.float32).tiny)


def gaussian_radius(sigma: float, truncate: float = 3.5) -> int:
    """Kernel radius of scipy.ndimage.gaussian_filter (skimage SSIM's truncate 3.5): 5 for sigma 1.5."""
    return int(truncate * sigma + 0.5)


def _window_1d(window: str, win_size: int, sigma: float, dtype, device) -> torch.Tensor:
    if window == "gaussian":
        radius = gaussian_radius(sigma)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    elif window == "uniform":
        if win_size % 2 == 0 or win_size < 3:
            raise ValueError(f"A uniform SSIM window must be odd and >= 3, got {win_size}.")
        weights = torch.ones(win_size, dtype=torch.float64)
    else:
        raise ValueError(f"SSIM window {window!r}: choose 'gaussian' or 'uniform'.")
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def _filter_valid(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable depthwise filter without padding: exactly the region skimage keeps after cropping its
    reflect-padded border, so no padding mode has to be matched."""
    channels, size = images.shape[1], kernel.numel()
    rows = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    columns = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    # Depthwise convolutions run several times faster on the CPU in channels-last layout (same numbers).
    images = images.contiguous(memory_format=torch.channels_last)
    return F.conv2d(F.conv2d(images, rows, groups=channels), columns, groups=channels)


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window: str = "gaussian",
    sigma: float = 1.5,
    win_size: int = 11,
    sample_covariance: bool = False,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """`[B]` mean SSIM over channels and the valid window positions (Wang et al. 2004).

    `window="gaussian"` uses a sigma-1.5 Gaussian of radius 5 (11 x 11; `win_size` is then implied by
    sigma, as in skimage); `window="uniform"` a `win_size` box (EdgeConnect: 51, with sample covariance).
    """
    _check_pair(prediction, target)
    dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    x, y = prediction.to(dtype), target.to(dtype)
    kernel = _window_1d(window, win_size, sigma, dtype, x.device)
    size = kernel.numel()
    if min(x.shape[-2:]) < size:
        raise ValueError(
            f"SSIM with a {size}x{size} window needs images at least that large, got {tuple(x.shape[-2:])}."
        )
    channels = x.shape[1]
    moments = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y, xx, yy, xy = moments.split(channels, dim=1)
    # skimage: use_sample_covariance rescales by NP / (NP - 1), NP the number of window pixels.
    pixels = size * size
    cov_norm = pixels / (pixels - 1) if sample_covariance else 1.0
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_xy, mu_squares = mu_x * mu_y, mu_x * mu_x + mu_y * mu_y
    numerator = (2 * mu_xy + c1) * (2 * cov_norm * (xy - mu_xy) + c2)
    denominator = (mu_squares + c1) * (cov_norm * (xx + yy - mu_squares) + c2)  # var_x + var_y
    return (numerator / denominator).flatten(1).mean(dim=1)
