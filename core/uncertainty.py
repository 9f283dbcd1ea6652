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
import statistics
import zlib
from dataclasses import dataclass
from typing import Mapping

import torch

__all__ = [
    "DEFAULT_RESAMPLES", "resample_indices", "percentile_interval", "intervals", "significant",
    "mean", "pearson", "spearman", "kendall_b", "resampled_ranks", "correlations",
    "DropTest", "peak_drop_test", "beats_every_earlier", "seed_interval", "seed_drop_test",
    "seeds_for_power", "resolvable_difference", "seed_drop_detectable", "MIN_RELIABLE_ITEMS", "interval_note", "summary_note",
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


# ------------------------------------------------------------------- the drop after a peak
@dataclass
class DropTest:
    """Has a metric dropped since its best evaluation?  All values oriented so that higher is better.

    ``drop``: the largest observed drop from an evaluation to the final one (peak - final), >= 0;
    ``interval``: a 95 % interval of the true largest drop, valid although the peak was picked
    after seeing every evaluation; ``p``: one-sided p-value of "no evaluation was better than the
    final one"; ``significant``: ``interval[0] > 0``; ``peak``: row of the peak.
    """

    drop: float
    interval: list[float] | None
    p: float | None
    significant: bool | None
    peak: int


def peak_drop_test(values, replicates, level: float = 0.95) -> DropTest:
    """Drop of the best of ``T`` evaluations below the last one, tested with the choice of the peak.

    ``values`` ``(T,)`` are the evaluations' metric values in order, ``replicates`` ``(T, B)``
    their bootstrap replicates drawn with the *same* resampled items at every evaluation (paired),
    both oriented so that higher is better. With ``d_t = value_t - value_T`` and its replicates
    ``d*_t``, the drop ``max_t d_t`` is tested by the max-type (studentized) bootstrap of White's
    Reality Check (White 2000, *Econometrica* 68: 1097-1126; Hansen 2005, *JBES* 23: 365-380, whose
    studentization is used; Romano & Wolf 2005, *Econometrica* 73: 1237-1282, stepwise version):
    the null distribution of ``max_t (d*_t - d_t) / s_t`` over all earlier evaluations, ``s_t``
    the bootstrap standard deviation of ``d*_t``, includes the act of picking the maximum. Its
    ``1 - alpha`` quantile (``alpha = (1 - level) / 2``), floored at Bonferroni's normal critical
    value ``z_{1 - alpha / (T - 1)}`` (see the comment in the code), is ``c``; it gives simultaneous one-sided bounds
    ``d_t >= d_t_hat - c s_t`` for every ``t`` at once, hence the interval of the largest drop
    ``[max_t(d_t_hat - c s_t), max_t(d_t_hat + c' s_t)]`` (``c'`` from the downward maxima), and a
    drop is significant when the lower end is above zero. Where no evaluation was picked after
    looking (``T = 2``) this is the paired bootstrap of peak minus final.

    The price of validity is power: the critical value grows slowly with the number of evaluations
    (about that of the maximum of ``T - 1`` correlated normals); ``benchmarks/calibrate_statistics.py``
    measures false-positive rate and power over items, evaluations and drift.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    r = torch.as_tensor(replicates, dtype=torch.float64).reshape(v.numel(), -1)
    T = v.numel()
    if T == 0:
        raise ValueError("peak_drop_test needs at least one evaluation")
    peak = int(torch.argmax(torch.where(torch.isfinite(v), v, torch.full_like(v, -math.inf))))
    drop = float(v[peak] - v[-1])
    if T < 2:
        return DropTest(0.0, [0.0, 0.0], 1.0, False, peak)
    # resamples where some evaluation is undefined (a constant input to a correlation) are left out
    keep = torch.isfinite(r).all(dim=0)
    if keep.sum() * 2 < r.shape[1] or not torch.isfinite(v).all():
        return DropTest(drop, None, None, None, peak)
    r = r[:, keep]
    d = v[:-1] - v[-1]
    dstar = r[:-1] - r[-1]
    sd = dstar.std(dim=1)
    live = sd > 1e-12 * (1 + v.abs().max())
    if not live.any():  # no evaluation differs from the final one on any resample: no sampling error
        return DropTest(drop, [max(drop, 0.0), max(drop, 0.0)], 1.0 if drop <= 0 else 0.0, drop > 0, peak)
    d, dstar, sd = d[live], dstar[live], sd[live]
    z = (dstar - d[:, None]) / sd[:, None]
    alpha = (1 - level) / 2
    # Floored at Bonferroni's normal critical value, which bounds the maximum whatever the
    # dependence (Boole's inequality): the bootstrap quantile of a maximum over many evaluations
    # came out liberal in simulation (3-10 % false positives at T = 50 over draws, against 2.5 %),
    # and Bonferroni's costs little here (2.84 vs 2.71 at T = 12, 3.28 vs 3.11 at T = 50).
    from scipy.stats import norm

    m = int(live.sum())
    bonferroni = float(norm.ppf(1 - alpha / m))
    c_up = max(float(torch.quantile(z.max(dim=0).values, 1 - alpha)), bonferroni)
    c_down = max(float(torch.quantile((-z).max(dim=0).values, 1 - alpha)), bonferroni)
    low = max(0.0, float((d - c_up * sd).max()))
    high = max(0.0, float((d + c_down * sd).max()))
    observed = float((d / sd).max())
    p_boot = float((1 + (z.max(dim=0).values >= observed).sum()) / (1 + z.shape[1]))
    p = min(1.0, max(p_boot, m * float(norm.sf(observed))))
    return DropTest(drop, [low, max(high, low)], p, low > 0, peak)


def beats_every_earlier(values, replicates, level: float = 0.95) -> bool:
    """Is the last evaluation better than *every* earlier one beyond noise?

    An intersection-union test (Berger 1982, *Technometrics* 24: 295-300): it holds when each
    paired bootstrap interval of last minus earlier lies above zero, and is valid at the one-sided
    level ``(1 - level) / 2`` with no correction for the number of evaluations. ``values`` ``(T,)``
    and ``replicates`` ``(T, B)`` oriented so that higher is better; False for ``T < 2``.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    r = torch.as_tensor(replicates, dtype=torch.float64).reshape(v.numel(), -1)
    if v.numel() < 2:
        return False
    return all(significant(percentile_interval(r[-1] - r[t], level)) for t in range(v.numel() - 1))


# ------------------------------------------------------------------------------ over seeds
def seed_interval(values, level: float = 0.95) -> tuple[float | None, list[float] | None]:
    """Mean and Student-t interval over seeds; ``(mean, None)`` for a single value.

    By hand rather than scipy's ``t.interval``: seeds that agree exactly (a metric that never
    moved) have zero spread, where scipy returns NaN and this gives the degenerate ``[mean, mean]``.
    """
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    from scipy.stats import t

    half = t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, [mean - half, mean + half]


def seed_drop_test(trajectories, level: float = 0.95) -> DropTest:
    """The drop after the peak over seeds, valid although the peak step is picked after looking.

    ``trajectories`` ``(k, T)``: each seed's values at the same ``T`` steps, oriented so that higher
    is better. With ``d_{i,t}`` = seed i's value at step t minus its final value, each step's mean
    difference gets a one-sided Student-t bound at level ``alpha / (T - 1)`` (Bonferroni over the
    candidate peak steps; Dunn 1961, *JASA* 56: 52-64), which holds for all steps at once whatever
    their correlation; the largest drop's interval and the verdict follow as in
    :func:`peak_drop_test`. ``drop`` is the mean trajectory's peak minus its final value.
    """
    from scipy.stats import t as student

    x = torch.as_tensor(trajectories, dtype=torch.float64)
    k, T = x.shape
    mean = x.mean(dim=0)
    peak = int(torch.argmax(mean))
    drop = float(mean[peak] - mean[-1])
    if T < 2 or k < 2:
        return DropTest(drop, None, None, None, peak)
    d = x[:, :-1] - x[:, -1:]
    m, se = d.mean(dim=0), d.std(dim=0) / math.sqrt(k)
    alpha = (1 - level) / 2 / (T - 1)
    q = float(student.ppf(1 - alpha, k - 1))
    live = se > 0
    low = max(0.0, float((m - q * se)[live].max())) if live.any() else max(0.0, float(m.max()))
    high = max(0.0, float((m + q * se).max()))
    p_steps = [float(student.sf(float(mi / si), k - 1)) for mi, si in zip(m[live], se[live])]
    p = min(1.0, (T - 1) * min(p_steps)) if p_steps else None
    return DropTest(drop, [low, max(low, high)], p, low > 0, peak)


def seeds_for_power(difference: float, spread: float, level: float = 0.95, power: float = 0.8,
                    max_seeds: int = 1000) -> int | None:
    """Seeds (paired differences) a two-sided t-test at ``level`` needs to resolve ``difference``
    with probability ``power`` when the per-seed differences spread with standard deviation
    ``spread`` (noncentral t; Cohen 1988, ch. 2). ``None`` past ``max_seeds`` or for no difference."""
    from scipy.stats import nct, t

    if not difference or not math.isfinite(difference) or not spread > 0:
        return None if not difference else 2
    effect = abs(difference) / spread
    for k in range(2, max_seeds + 1):
        q = t.ppf((1 + level) / 2, k - 1)
        if nct.sf(q, k - 1, effect * math.sqrt(k)) + nct.cdf(-q, k - 1, effect * math.sqrt(k)) >= power:
            return k
    return None


def resolvable_difference(spread: float, seeds: int, level: float = 0.95, power: float = 0.8) -> float | None:
    """The smallest difference that ``seeds`` paired seeds resolve with probability ``power``
    (two-sided t-test at ``level``) given the per-seed spread: the inverse of :func:`seeds_for_power`."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if seeds < 2 or not spread > 0:
        return None
    q = t.ppf((1 + level) / 2, seeds - 1)

    def gap(effect: float) -> float:
        nc = effect * math.sqrt(seeds)
        achieved = nct.sf(q, seeds - 1, nc) + nct.cdf(-q, seeds - 1, nc)
        return (1.0 if math.isnan(achieved) else achieved) - power  # NaN only far past any power asked

    top = 1.0
    while gap(top) < 0 and top < 1e4:
        top *= 2
    return brentq(gap, 1e-9, top) * spread if gap(top) >= 0 else None


def seed_drop_detectable(spread: float, seeds: int, evaluations: int, level: float = 0.95,
                         power: float = 0.8) -> float | None:
    """The smallest drop :func:`seed_drop_test` finds with probability ``power`` when the per-seed
    drops (value at the true peak step minus final) spread with standard deviation ``spread``: the
    one-sided t-test at ``alpha / (evaluations - 1)`` at the true peak step (noncentral t); the other
    steps can only add detections, so this is what a planner can count on."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if seeds < 2 or evaluations < 2 or not spread > 0:
        return None
    q = t.ppf(1 - (1 - level) / 2 / (evaluations - 1), seeds - 1)

    def gap(effect: float) -> float:
        achieved = nct.sf(q, seeds - 1, effect * math.sqrt(seeds))
        return (1.0 if math.isnan(achieved) else achieved) - power

    top = 1.0
    while gap(top) < 0 and top < 1e4:
        top *= 2
    return brentq(gap, 1e-9, top) * spread if gap(top) >= 0 else None


# ------------------------------------------------------------------ when intervals hold
#: Smallest number of items from which the 95 % percentile interval of each kind of statistic
#: covered its true value 93-97 % of the time at every size of the grid 25, 50, 100, 200, 400, 1000
#: (``benchmarks/calibrate_statistics.py --part coverage``; docs/calibration.md has the table):
#: a mean (2AFC, accuracy), the three correlations, a ratio of two counts (the shape bias) and a
#: relative drop between two means (the noise drop). Below it an interval is marked unreliable.
#: PLCC undercovers (91 % at 25-50 items, 93 % at 100). A probe names its metrics' statistic
#: (``MetricInfo.statistic``) or, for another kind, the count itself (``MetricInfo.min_items``).
MIN_RELIABLE_ITEMS = {"mean": 25, "srcc": 25, "plcc": 200, "krcc": 25, "ratio": 50, "relative_drop": 100}


def summary_note(peak_ci: list[float] | None, final_ci: list[float] | None, items: int | None,
                 reliable_from: int = 0) -> str | None:
    """:func:`interval_note` of a metric's final interval, else of its peak's (named as such)."""
    note = interval_note(final_ci, items, reliable_from)
    if note is None and interval_note(peak_ci, items, reliable_from) is not None:
        note = "at the peak, " + interval_note(peak_ci, items, reliable_from)
    return note


def interval_note(interval: list[float] | None, items: int | None, reliable_from: int = 0) -> str | None:
    """Why an interval should not be trusted (``None`` when nothing speaks against it): fewer items
    than its statistic needs (``reliable_from``, from :data:`MIN_RELIABLE_ITEMS`), or degenerate
    (zero width)."""
    if interval is None:
        return None
    if items is not None and items < reliable_from:
        return f"unreliable: {items} items, coverage holds from {reliable_from}"
    if interval[0] == interval[1]:
        return "degenerate: zero width (every resample gives the same value)"
    return None
