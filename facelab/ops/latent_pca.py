"""The PCA of a generator's W space behind Barbershop's P-norm prior (PULSE's "P space").

Barbershop samples z ~ N(0, I), maps it through the mapping network, inverts the last LeakyReLU(0.2) with
LeakyReLU(5) and fits a full PCA (sklearn IncrementalPCA, `explained_variance_` with N - 1) to the result
(models/Net.py `build_PCA_model`, 1,000,000 samples; utils/PCA_utils.py). Here the same statistics come from
an exact eigen-decomposition of the sample covariance in float64, accumulated in batches, and are cached
per generator file, sample count and seed, since they cost tens of seconds for 10^6 samples on a CPU.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from facelab.io.files import atomic_write_bytes

log = logging.getLogger("facelab")


@dataclass
class LatentPCA:
    """mean `[w_dim]`, components `[w_dim, w_dim]` (rows, by decreasing variance), stdev `[w_dim]`."""

    mean: torch.Tensor
    components: torch.Tensor
    stdev: torch.Tensor

    def to(self, device) -> LatentPCA:
        return LatentPCA(self.mean.to(device), self.components.to(device), self.stdev.to(device))


@torch.no_grad()
def estimate_pca(mapping, samples: int, seed: int = 0, batch: int = 65536) -> LatentPCA:
    """PCA of LeakyReLU(5)(w) for `samples` draws of z (seeded), w = mapping(z) without truncation."""
    device = next(mapping.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    w_dim = mapping.w_dim
    total = torch.zeros(w_dim, dtype=torch.float64, device=device)
    outer = torch.zeros(w_dim, w_dim, dtype=torch.float64, device=device)
    for start in range(0, samples, batch):
        count = min(batch, samples - start)
        z = torch.randn(count, mapping.z_dim, generator=generator).to(device)
        w = F.leaky_relu(mapping(z)[:, 0], negative_slope=5.0).double()  # [count, w_dim]
        total += w.sum(0)
        outer += w.T @ w
    mean = total / samples
    covariance = (outer - samples * torch.outer(mean, mean)) / (samples - 1)  # ddof 1, as sklearn
    variances, vectors = torch.linalg.eigh(covariance)  # ascending
    order = variances.flip(0).clamp_min(0)
    return LatentPCA(mean.float(), vectors.flip(1).T.contiguous().float(), order.sqrt().float())


def generator_pca(
    mapping, generator_path: str | Path, samples: int, seed: int = 0, cache_dir: str | Path | None = None
) -> tuple[str, LatentPCA]:
    """(the generator file's SHA-256, its W-space PCA), cached under `cache_dir` (default
    `$FACELAB_CACHE/pca` or `~/.cache/facelab/pca`) by generator file, sample count and seed."""
    from facelab.fit.cache import file_digest
    from facelab.io.files import user_cache_dir

    digest = file_digest(generator_path)
    folder = Path(cache_dir) if cache_dir else user_cache_dir("pca")
    pca_file = folder / f"{digest[:24]}-{samples}-{seed}.pt"
    return digest, load_or_estimate_pca(mapping, pca_file, samples, seed)


def load_or_estimate_pca(mapping, cache_file: str | Path, samples: int, seed: int = 0) -> LatentPCA:
    """The cached PCA at `cache_file` (named by the caller after the generator file, samples and seed), else
    estimate it and write it atomically. An unreadable cache file is re-estimated with a warning."""
    cache_file = Path(cache_file)
    if cache_file.is_file():
        try:
            stored = torch.load(cache_file, map_location="cpu", weights_only=True)
            return LatentPCA(stored["mean"], stored["components"], stored["stdev"])
        except Exception as error:
            log.warning("PCA cache %s is unreadable (%s); estimating it again.", cache_file, error)
    log.info(
        "Estimating the W-space PCA of the generator from %d samples (cached at %s).", samples, cache_file
    )
    pca = estimate_pca(mapping, samples, seed)
    buffer = io.BytesIO()
    torch.save({"mean": pca.mean.cpu(), "components": pca.components.cpu(), "stdev": pca.stdev.cpu()}, buffer)
    atomic_write_bytes(cache_file, buffer.getvalue())
    return pca
