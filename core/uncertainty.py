"""Bootstrap intervals over items: resampling, vectorised statistics, percentile intervals.

Every alignment metric is a statistic of per-item outputs (2AFC of each triplet, the model's
score and the human score of each image, the prediction of each image). Its sampling error is
estimated by the nonparametric bootstrap: ``B`` resamples of the items with replacement, the
statistic on each, and the 2.5 % / 97.5 % quantiles of the ``B`` values (percentile interval).

Written here rather than taken from ``scipy.stats.bootstrap`` because the suite needs the
replicates themselves, drawn with the *same* resample indices at every evaluation and in every run
measured on the same items: the difference of two evaluations' replicates is then a paired
bootstrap of the difference (peak minus final, run minus reference) at no extra cost, and the
replicates of several data sets can be averaged into the interval of an average. scipy returns
intervals of one call and draws its own indices.

The resample indices depend only on the seed, the group name (usually the probe or data set) and
the number of items (:func:`resample_indices`), so they never touch the global generators.

The statistics take per-item values ``(n,)`` and indices ``(B, n)`` and return ``(B,)``; each
equals the plain statistic (torchmetrics, DreamSim's 2AFC) computed on ``values[idx[b]]``
(tested). Kendall's tau-b is computed from resample counts with one ``(B, n) @ (n, n)`` product
instead of ``B`` quadratic loops.
"""
from __future__ import annotations

import math
import zlib
from typing import Mapping

import torch

__all__ = [
    "DEFAULT_RESAMPLES", "resample_indices", "percentile_interval", "intervals", "significant",
    "mean", "pearson", "spearman", "kendall_b", "resampled_ranks", "correlations",
]

DEFAULT_RESAMPLES = 1000


def resample_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, key: str = "") -> torch.Tensor:
    """``(n_resamples, n)`` item indices drawn with replacement, fixed by ``(seed, key, n)``.

    A private generator: the global random state is neither read nor changed.
    """
    if n < 1:
        return torch.zeros(n_resamples, 0, dtype=torch.long)
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode()) + 7919 * n) % (2**63 - 1))
    return torch.randint(n, (n_resamples, n), generator=g)


def percentile_interval(replicates: torch.Tensor, level: float = 0.95) -> list[float] | None:
    """``[low, high]``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the finite
    replicates; ``None`` when fewer than half of them are finite (the statistic is mostly undefined)."""
    r = torch.as_tensor(replicates, dtype=torch.float64).flatten()
    r = r[torch.isfinite(r)]
    if r.numel() == 0 or r.numel() * 2 < torch.as_tensor(replicates).numel():
        return None
    alpha = (1 - level) / 2
    low, high = torch.quantile(r, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return [low, high]


def intervals(replicates: Mapping[str, torch.Tensor], level: float = 0.95) -> dict[str, list[float] | None]:
    """:func:`percentile_interval` of every metric's replicates."""
    return {name: percentile_interval(r, level) for name, r in replicates.items()}


def significant(interval: list[float] | None) -> bool:
    """An interval of a gain or a drop that lies wholly above zero."""
    return interval is not None and interval[0] > 0


# ----------------------------------------------------------------------------------- statistics
def mean(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each resample ``(B,)``."""
    return torch.as_tensor(values, dtype=torch.float64)[idx].mean(dim=-1)


def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=-1, keepdim=True)
    y = y - y.mean(dim=-1, keepdim=True)
    denominator = (x.square().sum(dim=-1) * y.square().sum(dim=-1)).sqrt()
    r = (x * y).sum(dim=-1) / denominator
    return torch.where(denominator > 0, r, torch.full_like(r, math.nan))


def pearson(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each resample ``(B,)``; NaN where an input is constant."""
    x, y = (torch.as_tensor(v, dtype=torch.float64) for v in (x, y))
    return _pearson_rows(x[idx], y[idx])


def resampled_ranks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Ranks of ``x[idx]`` within each resample ``(B, n)``, 1-based, ties sharing their average rank
    (as torchmetrics' Spearman). From the counts of each distinct value in each resample and their
    running sum, so ``O(B n)`` rather than a sort per resample."""
    values, group = torch.unique(torch.as_tensor(x, dtype=torch.float64).flatten(), return_inverse=True)
    counts = torch.zeros(idx.shape[0], values.numel(), dtype=torch.float64).scatter_add_(
        1, group[idx], torch.ones(idx.shape, dtype=torch.float64))
    below = counts.cumsum(dim=1) - counts  # resampled values smaller than each distinct value
    rank_of_value = below + (counts + 1) / 2
    return rank_of_value.gather(1, group[idx])


def spearman(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each resample ``(B,)`` (Pearson of average ranks)."""
    return _pearson_rows(resampled_ranks(x, idx), resampled_ranks(y, idx))


def kendall_b(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """Kendall's tau-b of each resample ``(B,)``.

    With ``c`` the count of each item in a resample, ``S = sign(x_i - x_j) sign(y_i - y_j)`` and
    ``T_x = [x_i != x_j]``: tau-b = ``c S c / sqrt((c T_x c)(c T_y c))``; copies of one item are
    tied in both and count in neither. Blocks of ``block`` items bound the memory to
    ``block x n`` per matrix.
    """
    x, y = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (x, y))
    n = x.numel()
    counts = torch.zeros(idx.shape[0], n, dtype=torch.float32).scatter_add_(
        1, idx, torch.ones(idx.shape, dtype=torch.float32))
    total = {"s": 0.0, "tx": 0.0, "ty": 0.0}
    for start in range(0, n, block):
        sl = slice(start, start + block)
        dx = torch.sign(x[sl, None] - x[None, :])
        dy = torch.sign(y[sl, None] - y[None, :])
        for key, matrix in (("s", dx * dy), ("tx", dx.abs()), ("ty", dy.abs())):
            # counts (<= n) times a 0/+-1 matrix: exact in float32; the sums are taken in float64
            partial = counts @ matrix.to(torch.float32).T  # (B, block)
            total[key] = total[key] + (partial.to(torch.float64) * counts[:, sl].to(torch.float64)).sum(dim=-1)
    denominator = (total["tx"] * total["ty"]).sqrt()
    tau = total["s"] / denominator
    return torch.where(denominator > 0, tau, torch.full_like(tau, math.nan))


def correlations(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"srcc", "plcc", "krcc"}`` of each resample, as ``perceptlab.core.scores.correlations``."""
    return {"srcc": spearman(pred, target, idx), "plcc": pearson(pred, target, idx), "krcc": kendall_b(pred, target, idx)}
