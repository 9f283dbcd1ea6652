"""Simulated alignment trajectories with a known truth, for measuring the statistics' error rates.

A probe is ``n`` items measured at ``T`` evaluations. Each item has a persistent difficulty
``a_i ~ N(0, 1.5)`` and, at each evaluation, a drift ``e_{i,t}`` (a stationary AR(1) over
evaluations with correlation ``persistence`` and standard deviation ``drift``): the model changes
between evaluations and so does which items it gets right, while the population's mean stays
put. The item is right with probability ``0.15 + 0.7 sigmoid(a_i + e_{i,t}) + peak_t``, so the
true metric is ``m + peak_t`` with ``m`` the population mean (about 0.5 here) and ``peak_t`` the
planted trajectory: 0 everywhere for a flat model, or rising linearly from the baseline to
``height`` at the peak evaluation (a quarter of the way in) and falling linearly back to 0 at the
final one, so that the true drop (peak minus final) is exactly ``height``.

This is the data the suite feeds :class:`perceptlab.callbacks.peaks.PeakTracker`: per-item
outcomes at each evaluation, their mean (2AFC / accuracy) and its bootstrap replicates over the
*same* resampled items at every evaluation (``uncertainty.resample_indices``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from perceptlab.core import uncertainty


@dataclass
class Trajectory:
    """Per-item outcomes ``(T, n)`` in {0, 1}, their means ``(T,)`` and replicates ``(T, B)``."""

    outcomes: torch.Tensor
    values: torch.Tensor
    replicates: torch.Tensor
    true_drop: float
    peak_row: int | None


def planted_peak(T: int, height: float) -> torch.Tensor:
    """``(T,)``: 0 at the first and last evaluation, ``height`` at row ``round((T - 1) / 4)``
    (at least 1 when ``T > 2``), linear in between."""
    peak = torch.zeros(T, dtype=torch.float64)
    if height == 0 or T < 2:
        return peak
    top = max(1, round((T - 1) / 4)) if T > 2 else 0
    for t in range(T):
        peak[t] = height * (t / top if t <= top and top > 0 else (T - 1 - t) / (T - 1 - top))
    return peak


def simulate(n: int, T: int, height: float = 0.0, drift: float = 0.5, persistence: float = 0.8,
             resamples: int = 500, seed: int = 0, bootstrap_seed: int = 0) -> Trajectory:
    """One simulated probe trajectory (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    e = torch.randn(n, generator=g, dtype=torch.float64) * drift
    bump = planted_peak(T, height)
    idx = uncertainty.resample_indices(n, resamples, bootstrap_seed, "sim")
    outcomes, values, reps = [], [], []
    for t in range(T):
        if t:
            e = persistence * e + math.sqrt(1 - persistence ** 2) * drift * torch.randn(n, generator=g, dtype=torch.float64)
        p = 0.15 + 0.7 * torch.sigmoid(a + e) + bump[t]
        y = (torch.rand(n, generator=g, dtype=torch.float64) < p).double()
        outcomes.append(y)
        values.append(y.mean())
        reps.append(uncertainty.mean(y, idx))
    peak_row = int(torch.argmax(bump)) if height else None
    return Trajectory(torch.stack(outcomes), torch.stack(values), torch.stack(reps), float(height), peak_row)


def naive_drop_significant(values: torch.Tensor, replicates: torch.Tensor, level: float = 0.95) -> bool:
    """The test as it was before selection was accounted for: the paired bootstrap interval of
    (observed peak - final), as if the peak had been named in advance. Kept to measure its error."""
    peak = int(torch.argmax(values))
    return uncertainty.significant(uncertainty.percentile_interval(replicates[peak] - replicates[-1], level))


def error_rates(n: int, T: int, height: float, reps: int, drift: float = 0.5, resamples: int = 500,
                seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Share of ``reps`` simulated trajectories whose drop is called significant, by the valid
    test (``valid``) and the naive one (``naive``), with their Monte-Carlo standard errors."""
    valid = naive = 0
    for r in range(reps):
        sim = simulate(n, T, height, drift=drift, resamples=resamples, seed=seed * 100_003 + r, bootstrap_seed=r)
        valid += bool(uncertainty.peak_drop_test(sim.values, sim.replicates, level).significant)
        naive += naive_drop_significant(sim.values, sim.replicates, level)
    out = {"valid": valid / reps, "naive": naive / reps}
    out.update({f"{k}_se": math.sqrt(max(v * (1 - v), 1e-12) / reps) for k, v in list(out.items())})
    return out


# ----------------------------------------------------------------- coverage of per-item intervals
COVERAGE_KINDS = ("mean", "srcc", "plcc", "krcc", "ratio", "relative_drop")  # uncertainty.MIN_RELIABLE_ITEMS' keys


def _truth(kind: str, rho: float = 0.5) -> float:
    if kind == "mean":
        return 0.65
    if kind == "plcc":
        return rho
    if kind == "srcc":
        return 6 / math.pi * math.asin(rho / 2)
    if kind == "krcc":
        return 2 / math.pi * math.asin(rho)
    if kind == "ratio":
        return 0.3 / (0.3 + 0.2)
    if kind == "relative_drop":
        return 1 - (0.7 * 0.8 + 0.3 * 0.2) / 0.7
    raise ValueError(f"unknown kind {kind!r}; expected one of {COVERAGE_KINDS}")


def _replicates(kind: str, n: int, g: torch.Generator, idx: torch.Tensor, rho: float = 0.5) -> torch.Tensor:
    """One sample of ``n`` items with a known truth and its bootstrap replicates, computed by the
    same ``uncertainty`` functions the probes use."""
    if kind == "mean":  # 2AFC / accuracy: each item right with probability 0.65
        return uncertainty.mean((torch.rand(n, generator=g, dtype=torch.float64) < 0.65).double(), idx)
    if kind in ("srcc", "plcc", "krcc"):  # model score vs human score, bivariate normal with correlation rho
        x = torch.randn(n, generator=g, dtype=torch.float64)
        y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, generator=g, dtype=torch.float64)
        fn = {"srcc": uncertainty.spearman, "plcc": uncertainty.pearson, "krcc": uncertainty.kendall_b}[kind]
        return fn(x, y, idx)
    if kind == "ratio":  # each cue-conflict image: shape 0.3, texture 0.2, another class 0.5
        u = torch.rand(n, generator=g, dtype=torch.float64)
        shape, texture = (u < 0.3).double(), ((u >= 0.3) & (u < 0.5)).double()
        s, t = shape[idx].sum(-1), texture[idx].sum(-1)
        return s / (s + t)
    if kind == "relative_drop":  # clean right 0.7; under noise right 0.8 if clean right, else 0.2
        clean = (torch.rand(n, generator=g, dtype=torch.float64) < 0.7).double()
        noisy = (torch.rand(n, generator=g, dtype=torch.float64) < torch.where(clean > 0, 0.8, 0.2)).double()
        return 1 - uncertainty.mean(noisy, idx) / uncertainty.mean(clean, idx)
    raise ValueError(f"unknown kind {kind!r}; expected one of {COVERAGE_KINDS}")


def coverage(kind: str, n: int, reps: int, resamples: int = 500, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Share of ``reps`` samples of ``n`` items whose percentile interval covers the true value."""
    g = torch.Generator().manual_seed(seed)
    truth, hits, defined = _truth(kind), 0, 0
    for r in range(reps):
        interval = uncertainty.percentile_interval(_replicates(kind, n, g, uncertainty.resample_indices(n, resamples, r, kind)), level)
        if interval is None:
            continue
        defined += 1
        hits += interval[0] <= truth <= interval[1]
    rate = hits / max(defined, 1)
    return {"coverage": rate, "se": math.sqrt(rate * (1 - rate) / max(defined, 1)), "defined": defined / reps}
