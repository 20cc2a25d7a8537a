"""Distribution metrics on deep features: FID from running moments, KID from a bounded sample.

FID needs only the mean and covariance of each feature set, so `FeatureMoments` keeps float64 sums of the
features and of their outer products per group: memory is `groups x (D + D^2)` numbers whatever the number
of images, and sums add across processes. The covariance is the unbiased one (divide by N - 1), as numpy's
`np.cov` in pytorch-fid and torchmetrics.

KID (Binkowski et al. 2018) needs the features themselves (an unbiased MMD over pairs), so it cannot be
a fixed-size sum. `KernelSample` keeps a uniform sample of at most `capacity` (real, fake) feature pairs:
each sample gets a pseudo-random priority from its key (its position in the evaluation order) and the
`capacity` lowest priorities are kept (a bottom-k sample). The kept set depends only on the keys, not on
batching, order or the number of processes, so merging the samples of several processes gives exactly the
sample one process would keep. Below `capacity` images every image is used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0 = 100, 1000, 3, 1.0  # torch-fidelity / KID paper defaults
_MASK64 = (1 << 64) - 1


def key_priority(keys: torch.Tensor) -> torch.Tensor:
    """`[B]` int64 keys -> `[B]` float64 priorities in [0, 1), a fixed hash (splitmix64's finaliser)."""
    priorities = []
    for key in keys.tolist():
        z = (key * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        priorities.append((z ^ (z >> 31)) / 2.0**64)
    return torch.tensor(priorities, dtype=torch.float64)


class FeatureMoments(nn.Module):
    """Float64 running sums of features and outer products for `groups` groups of one feature set."""

    def __init__(self, groups: int, dim: int):
        super().__init__()
        self.register_buffer("total", torch.zeros(groups, dim, dtype=torch.float64))
        self.register_buffer("outer", torch.zeros(groups, dim, dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(groups, dtype=torch.int64))

    def reset(self) -> None:
        for buffer in (self.total, self.outer, self.count):
            buffer.zero_()

    def update(self, features: torch.Tensor, groups: torch.Tensor) -> None:  # [B, D], [B] (-1: none)
        """Add each row of `features` to its group."""
        features = features.to(self.total)
        for group in groups.unique().tolist():
            if group < 0:
                continue
            rows = features[groups == group]
            self.total[group] += rows.sum(dim=0)
            self.outer[group] += rows.T @ rows
            self.count[group] += rows.shape[0]

    def mean_covariance(self, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean `[D]` and unbiased covariance `[D, D]` of one group (needs at least 2 samples)."""
        count = int(self.count[group])
        if count < 2:
            raise ValueError(f"A covariance needs at least 2 samples, this group has {count}.")
        mean = self.total[group] / count
        covariance = (self.outer[group] - count * torch.outer(mean, mean)) / (count - 1)
        return mean, covariance


def frechet_distance(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), in float64.

    tr (C1 C2)^(1/2) is computed as the sum of square roots of the eigenvalues of C1^(1/2) C2 C1^(1/2), a
    symmetric matrix with the same spectrum, so a symmetric eigensolver suffices (no complex sqrtm).
    """
    mean1, mean2, cov1, cov2 = (t.double() for t in (mean1, mean2, cov1, cov2))
    values, vectors = torch.linalg.eigh(cov1)
    root1 = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root1 @ cov2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean1 - mean2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_root
    return float(distance)


def polynomial_mmd2(
    real: torch.Tensor, fake: torch.Tensor, degree: int = KID_DEGREE, coef0: float = KID_COEF0
) -> float:
    """Unbiased MMD^2 with the kernel (x . y / d + coef0)^degree between `[m, D]` and `[m, D]`."""
    real, fake = real.double(), fake.double()
    m, dim = real.shape
    k_rr = (real @ real.T / dim + coef0) ** degree
    k_ff = (fake @ fake.T / dim + coef0) ** degree
    k_rf = (real @ fake.T / dim + coef0) ** degree
    same = (k_rr.sum() - k_rr.trace() + k_ff.sum() - k_ff.trace()) / (m * (m - 1))
    return float(same - 2 * k_rf.sum() / (m * m))


class KernelSample(nn.Module):
    """A bottom-k uniform sample of (real, fake) feature pairs, at most `capacity` of them."""

    def __init__(self, capacity: int, dim: int):
        super().__init__()
        self.capacity = capacity
        self.register_buffer("priority", torch.full((capacity,), math.inf, dtype=torch.float64))
        self.register_buffer("real", torch.zeros(capacity, dim))
        self.register_buffer("fake", torch.zeros(capacity, dim))

    def reset(self) -> None:
        self.priority.fill_(math.inf)
        self.real.zero_()
        self.fake.zero_()

    @property
    def size(self) -> int:
        return int(torch.isfinite(self.priority).sum())

    def update(self, real: torch.Tensor, fake: torch.Tensor, keys: torch.Tensor) -> None:  # [B,D], [B,D], [B]
        """Offer a batch; it replaces the kept pairs of highest priority if its priorities are lower."""
        self.insert(key_priority(keys).to(self.priority.device), real, fake)

    def insert(self, priority: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> None:
        combined = torch.cat([self.priority, priority])
        keep = torch.topk(combined, self.capacity, largest=False, sorted=False).indices
        kept_new = keep[keep >= self.capacity] - self.capacity
        if kept_new.numel() == 0:
            return
        # Only the slots whose old pair fell out are rewritten: no copy of the whole sample per batch.
        kept_old = torch.zeros(self.capacity, dtype=torch.bool, device=keep.device)
        kept_old[keep[keep < self.capacity]] = True
        free_slots = (~kept_old).nonzero().squeeze(1)
        self.priority[free_slots] = priority[kept_new]
        self.real[free_slots] = real[kept_new].to(self.real)
        self.fake[free_slots] = fake[kept_new].to(self.fake)

    def ordered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept (real, fake) pairs sorted by priority: a canonical order whatever the insertion order."""
        order = torch.argsort(self.priority)[: self.size]
        return self.real[order], self.fake[order]

    def kid(
        self, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
    ) -> tuple[float, float]:
        """(mean, std) of the unbiased polynomial MMD^2 over random subsets (torch-fidelity's estimator).

        With fewer kept pairs than `subset_size`, subsets use all of them (still unbiased, more variance)."""
        real, fake = self.ordered()
        count = real.shape[0]
        if count < 2:
            return math.nan, math.nan
        size = min(subset_size, count)
        generator = torch.Generator().manual_seed(seed)
        values = []
        for _ in range(subsets):
            real_rows = torch.randperm(count, generator=generator)[:size].to(real.device)
            fake_rows = torch.randperm(count, generator=generator)[:size].to(real.device)
            values.append(polynomial_mmd2(real[real_rows], fake[fake_rows]))
        values = torch.tensor(values, dtype=torch.float64)
        return float(values.mean()), float(values.std(unbiased=False))
