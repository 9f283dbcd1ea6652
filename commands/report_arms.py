"""What ``perceptlab report`` compares: runs (a run directory each) grouped into arms (one name of
the command line: one run, or the same run with several seeds), and the comparisons between them.

Every number comes with its 95 % interval:

* one run: the bootstrap over the probe's items that the run record holds; two runs' difference by
  a paired bootstrap (both measured on the same items with the same resamples, which the bootstrap
  file's seed records);
* several seeds: mean and Student-t interval over seeds, differences paired by seed;
* the drop after the peak: ``perceptlab.core.uncertainty.peak_drop_test`` for one run (the summary
  holds it) and ``seed_drop_test`` over seeds; both include the choice of the peak.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.callbacks.run_record import RunRecord, read_run
from perceptlab.core import uncertainty
from perceptlab.core.uncertainty import seed_interval


@dataclass
class Run(RunRecord):
    """A run directory's record, under the name it has in the report."""

    name: str = ""


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run directory (``FileNotFoundError`` naming it when it holds nothing)."""
    record = read_run(path)
    return Run(**vars(record), name=name or f"{record.path.parent.name}/{record.path.name}")


@dataclass
class Arm:
    """One name of the command line: a run, or the same run with several seeds."""

    name: str
    runs: list[Run]

    @property
    def path(self) -> str:
        return ", ".join(str(r.path) for r in self.runs)

    @property
    def seeds_known(self) -> bool:
        """Every run names its seed and no two the same (a test run records no training seed)."""
        seeds = [r.seed for r in self.runs]
        return None not in seeds and len(set(seeds)) == len(seeds)

    @property
    def evaluations(self) -> list[dict]:
        return self.runs[0].evaluations

    @property
    def summary(self) -> dict[str, dict]:
        return self.runs[0].summary

    def describe(self, metric: str) -> MetricInfo:
        """What ``metric`` is, as the first of the arm's runs that stored its description says."""
        return next((r.metric_info[metric] for r in self.runs if metric in r.metric_info), None) or \
            self.runs[0].describe(metric)

    @property
    def task_results(self) -> dict[str, float]:
        return self.runs[0].task_results if len(self.runs) == 1 else \
            {k: statistics.fmean(r.task_results[k] for r in self.runs)
             for k in self.runs[0].task_results if all(k in r.task_results for r in self.runs)}


def load_arm(name: str | None, paths: list[str]) -> Arm:
    if not paths:
        raise FileNotFoundError(f"{name}: no run directory given")
    runs = [load_run(p, name) for p in paths]
    arm = Arm(name or runs[0].name, runs)
    if arm.seeds_known:
        arm.runs.sort(key=lambda r: r.seed)  # shown in seed order, whatever order they were given in
    return arm


def resolved(interval: list[float] | None) -> str:
    """``yes (+)``/``yes (−)`` when the interval excludes zero, ``no`` when it covers it, ``–`` without one."""
    if interval is None:
        return "–"
    if interval[0] > 0:
        return "yes (+)"
    if interval[1] < 0:
        return "yes (−)"
    return "no"


def paired_bootstrap(run: Run, ref: Run, key: str, level: float = 0.95) -> list[float] | None:
    """Interval of run minus reference from their replicates of ``key`` (``<metric>@final``):
    the same resampled items in both (same probes, same ``bootstrap_seed``, which the file records),
    so the differences are paired resample by resample; ``None`` when the seeds differ."""
    a, b = run.replicates.get(key), ref.replicates.get(key)
    if a is None or b is None or a.shape != b.shape:
        return None
    seeds = [r.bootstrap_seed for r in (run, ref)]
    if any(s is not None for s in seeds) and (None in seeds or seeds[0] != seeds[1]):
        return None  # other resampled items: the replicates are not paired
    return uncertainty.percentile_interval(np.asarray(a, np.float64) - np.asarray(b, np.float64), level)


def paired_by_seed(arm: Arm, ref: Arm) -> list[tuple[Run, Run]]:
    """Runs of ``arm`` and ``ref`` with the same seed; by position when seeds are not known."""
    if arm.seeds_known and ref.seeds_known:
        ref_seeds = {r.seed: r for r in ref.runs}
        return [(r, ref_seeds[r.seed]) for r in arm.runs if r.seed in ref_seeds]
    return list(zip(arm.runs, ref.runs))


def difference(arm: Arm, ref: Arm, metric: str, which: str) -> tuple[float | None, list[float] | None, list[float]]:
    """``arm − ref`` of a summary value (``peak`` or ``final``): with one run each, the value and its
    paired-bootstrap interval; with seeds, the mean of the per-seed differences and its t-interval.
    Returns (difference, interval, the per-seed differences)."""
    pairs = [(a.summary.get(metric, {}).get(which), b.summary.get(metric, {}).get(which), a, b)
             for a, b in paired_by_seed(arm, ref)]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if not pairs:
        return None, None, []
    diffs = [float(a) - float(b) for a, b, _, _ in pairs]
    if len(pairs) == 1:
        _, _, run, ref_run = pairs[0]
        return diffs[0], paired_bootstrap(run, ref_run, f"{metric}@{which}"), diffs
    mean, interval = seed_interval(diffs)
    return mean, interval, diffs


def final_metrics(arm: Arm) -> dict[str, float]:
    """Each metric at the last evaluation, averaged over the arm's seeds."""
    finals = [r.evaluations[-1]["metrics"] for r in arm.runs if r.evaluations]
    return {k: seed_interval([m.get(k) for m in finals])[0] for k in {k for m in finals for k in m}}


def final_difference(arm: Arm, ref: Arm, metric: str) -> tuple[float | None, list[float] | None]:
    """``arm − ref`` at the last evaluation, with its interval (see :func:`difference`)."""
    pairs = [(a.evaluations[-1]["metrics"].get(metric), b.evaluations[-1]["metrics"].get(metric), a, b)
             for a, b in paired_by_seed(arm, ref) if a.evaluations and b.evaluations]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if not pairs:
        return None, None
    if len(pairs) == 1:
        a, b, run, ref_run = pairs[0]
        last = run.summary.get(metric, {}).get("final_step") == run.evaluations[-1]["step"] and \
            ref_run.summary.get(metric, {}).get("final_step") == ref_run.evaluations[-1]["step"]
        return float(a) - float(b), paired_bootstrap(run, ref_run, f"{metric}@final") if last else None
    return seed_interval([float(a) - float(b) for a, b, _, _ in pairs])


def trajectory(arm: Arm, metric: str) -> tuple[list[int], list[float], list[float] | None, list[float] | None]:
    """Steps, values and the band of an arm's trajectory: one run's values with their bootstrap
    intervals, or the mean over seeds with the t-interval (steps every seed evaluated)."""
    per_run = [{e["step"]: (e["metrics"].get(metric), (e.get("ci") or {}).get(metric)) for e in r.evaluations
                if e["metrics"].get(metric) is not None} for r in arm.runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    values, low, high = [], [], []
    for step in steps:
        if len(per_run) == 1:
            value, interval = per_run[0][step]
        else:
            value, interval = seed_interval([p[step][0] for p in per_run])
        values.append(value)
        low.append(interval[0] if interval else value)
        high.append(interval[1] if interval else value)
    banded = any(lo != hi for lo, hi in zip(low, high))
    return steps, values, (low if banded else None), (high if banded else None)


def seeds_drop(arm: Arm, metric: str) -> tuple[int | None, uncertainty.DropTest | None, float | None]:
    """The drop after the peak over seeds (``uncertainty.seed_drop_test``) at the steps every seed
    evaluated: the mean trajectory's peak step, the test (which accounts for choosing it), and the
    drop these seeds would find 80 % of the time given the spread of the seeds' drops at that step
    (``uncertainty.seed_drop_detectable``)."""
    directions = {r.summary.get(metric, {}).get("direction", "max") for r in arm.runs}
    sign = -1.0 if directions == {"min"} else 1.0
    per_run = [{e["step"]: e["metrics"].get(metric) for e in r.evaluations if e["metrics"].get(metric) is not None}
               for r in arm.runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    if len(steps) < 2:
        return None, None, None
    values = [[sign * p[s] for s in steps] for p in per_run]
    test = uncertainty.seed_drop_test(values)
    drops = [v[test.peak] - v[-1] for v in values]
    detectable = uncertainty.seed_drop_detectable(statistics.stdev(drops), len(drops), len(steps)) if len(drops) > 1 else None
    return steps[test.peak], test, detectable


def peak_table(arms: list[Arm]) -> list[dict]:
    """Rows ``{run, metric, seeds, peak_step, peak, peak_ci, final, final_ci, drop, drop_ci, drop_p,
    drop_resolved, ci_note}``: one run's summary; for several seeds, the mean of the seeds' peaks and
    finals with t-intervals and the seed-level drop test (:func:`seeds_drop`), plus
    ``significant_seeds`` (seeds whose own drop test is significant)."""
    rows = []
    for arm in arms:
        metrics = sorted({m for r in arm.runs for m in r.summary if not arm.describe(m).reference})
        for metric in metrics:
            summaries = [r.summary[metric] for r in arm.runs if metric in r.summary]
            if len(arm.runs) == 1:
                s = summaries[0]
                note = uncertainty.summary_note(s.get("peak_ci"), s.get("final_ci"), s.get("items"),
                                                   arm.describe(metric).reliable_from)
                row = {"run": arm.name, "metric": metric, "seeds": 1, "ci_note": note,
                       **{k: s.get(k) for k in ("peak_epoch", "peak_step", "peak", "peak_ci", "final",
                                                "final_ci", "drop", "drop_ci", "drop_p")}}
            else:
                step, test, detectable = seeds_drop(arm, metric)
                row = {"run": arm.name, "metric": metric, "seeds": len(summaries), "peak_epoch": None,
                       "peak_step": f"{step} ({', '.join(str(s.get('peak_step')) for s in summaries)})",
                       "drop": None if test is None else test.drop, "drop_ci": None if test is None else test.interval,
                       "drop_p": None if test is None else test.p, "ci_note": None, "drop_detectable": detectable}
                for key in ("peak", "final"):
                    row[key], row[f"{key}_ci"] = seed_interval([s.get(key) for s in summaries])
                row["significant_seeds"] = sum(bool(s.get("drop_significant")) for s in summaries)
            row["drop_resolved"] = resolved(row.get("drop_ci"))
            rows.append(row)
    return rows


def differences(arms: list[Arm], reference: str) -> list[dict]:
    """Each arm minus the reference on peak and final of every shared metric, with intervals and,
    for seeds, what a planner needs: the seeds that would resolve the observed final difference at
    80 % power and the difference the present seeds resolve (both from the per-seed spread)."""
    ref = next(a for a in arms if a.name == reference)
    rows = []
    for arm in arms:
        if arm is ref:
            continue
        shared = set.intersection(*(set(r.summary) for r in arm.runs + ref.runs))
        for metric in sorted(m for m in shared if not ref.describe(m).reference):
            peak, peak_ci, _ = difference(arm, ref, metric, "peak")
            final, final_ci, diffs = difference(arm, ref, metric, "final")
            spread = statistics.stdev(diffs) if len(diffs) > 1 else None
            rows.append({
                "metric": metric, "run": arm.name, "pairs": len(diffs),
                "peak_diff": peak, "peak_diff_ci": peak_ci, "final_diff": final, "final_diff_ci": final_ci,
                "final_resolved": resolved(final_ci), "peak_resolved": resolved(peak_ci),
                "seeds_needed": None if spread is None else uncertainty.seeds_for_power(final, spread),
                "resolvable": None if spread is None else uncertainty.resolvable_difference(spread, len(diffs)),
            })
    return rows
