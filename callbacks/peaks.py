"""Peak tracking of alignment trajectories: summary file, checkpoint at the peak, TensorBoard views.

The early-peak phenomenon (alignment with low-level human judgements rising early in CLIP training
and falling afterwards) is read off three numbers per metric: the best value and when it happened,
the final value, and how much was lost in between. :class:`PeakTracker` keeps them for every
metric and writes them to ``alignment_summary.json``::

    {"<metric>": {"direction": "max", "peak": 0.81, "peak_epoch": 2, "peak_step": 300,
                  "final": 0.74, "final_epoch": 9, "final_step": 1500, "drop": 0.07,
                  "baseline": 0.62, "evaluations": 11}, ...}

``direction`` says which way is more human-like / better (``max`` or ``min``); the peak is the
best value in that direction (the first one on ties). ``drop`` = how far the final value fell
behind the peak in that direction (peak - final for ``max``, final - peak for ``min``), >= 0.
Epochs and steps are those of ``alignment.jsonl`` (the baseline before training has epoch -1 and
step 0). Non-finite values (an undefined correlation) are left out of peak and final.

Is the peak real? With bootstrap replicates of each evaluation (``perceptlab.core.uncertainty``;
the same resampled items at every evaluation), the summary also holds ``peak_ci`` and
``final_ci`` (95 % intervals over items) and a paired bootstrap of the drop: ``drop_ci``, the
interval of peak minus final over the same resamples, and ``drop_significant``, true when that
interval lies wholly above zero. The peak is picked after looking at all evaluations, so with many
evaluations a drop that only just clears zero is weaker evidence than its interval says; a new
peak is also tested against the previous best when it happens (``beyond_noise``). ``change`` =
final - baseline (what training did to the metric, signed) with its paired interval ``change_ci``.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from perceptlab.core import uncertainty

SUMMARY_KEYS = ("direction", "peak", "peak_epoch", "peak_step", "final", "final_epoch", "final_step",
                "drop", "baseline", "evaluations", "peak_ci", "final_ci", "drop_ci", "drop_significant",
                "baseline_ci", "change", "change_ci")


def finite(value: Any) -> float | None:
    """``float(value)`` when finite, else ``None`` (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_json_atomic(path: str | os.PathLike, obj: Any, lines: bool = False) -> None:
    """Write JSON (or JSON lines from a list) to ``path`` via a temporary file and a rename, so a
    reader or a crash never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        if lines:
            for record in obj:
                f.write(json.dumps(record, allow_nan=False) + "\n")
        else:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
    os.replace(tmp, path)


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write numpy arrays to a compressed ``.npz`` at ``path`` via a temporary file and a rename."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


class PeakTracker:
    """Per-metric peak, final value and drop over a sequence of evaluations, with their bootstrap
    intervals when the evaluations come with replicates."""

    def __init__(self, level: float = 0.95) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.level = level
        self.surpassed: list[str] = []  # metrics whose previous peak the last evaluation beat
        self.beyond_noise: list[str] = []  # ... by more than noise (paired gain interval above zero)

    def update(self, epoch: int, step: int, metrics: Mapping[str, float | None],
               directions: Mapping[str, str], baseline: bool = False,
               replicates: Mapping[str, torch.Tensor] | None = None) -> list[str]:
        """Add one evaluation; returns the metrics that reached a new peak with it (a better value,
        noise or not). Those whose gain over the previous peak has a paired interval wholly above
        zero are in :attr:`beyond_noise` afterwards."""
        improved = []
        self.surpassed, self.beyond_noise = [], []
        for name, value in metrics.items():
            value = finite(value)
            if value is None:
                continue
            direction = directions.get(name, "max")
            e = self.entries.setdefault(name, {"direction": direction, "peak": None, "evaluations": 0,
                                               "baseline": None})
            e["evaluations"] += 1
            rep = None if replicates is None else replicates.get(name)
            if baseline:
                e["baseline"] = value
                e["baseline_replicates"] = rep
                e["baseline_ci"] = None if rep is None else uncertainty.percentile_interval(rep, self.level)
            better = e["peak"] is None or (value > e["peak"] if direction == "max" else value < e["peak"])
            if better:
                previous = e.get("peak_replicates")
                if e["peak"] is not None:
                    self.surpassed.append(name)
                if e["peak"] is not None and rep is not None and previous is not None:
                    gain = self._oriented(rep - previous, direction)
                    if uncertainty.significant(uncertainty.percentile_interval(gain, self.level)):
                        self.beyond_noise.append(name)
                e.update(peak=value, peak_epoch=epoch, peak_step=step, peak_replicates=rep,
                         peak_ci=None if rep is None else uncertainty.percentile_interval(rep, self.level))
                improved.append(name)
            e.update(final=value, final_epoch=epoch, final_step=step, final_replicates=rep,
                     final_ci=None if rep is None else uncertainty.percentile_interval(rep, self.level))
            e["drop"] = e["peak"] - value if direction == "max" else value - e["peak"]
            if e["baseline"] is not None:
                e["change"] = value - e["baseline"]
            self._drop_interval(e)
        return improved

    @staticmethod
    def _oriented(difference: torch.Tensor, direction: str) -> torch.Tensor:
        return difference if direction == "max" else -difference

    def _drop_interval(self, e: dict) -> None:
        """Paired bootstrap of peak minus final (same resampled items at both evaluations)."""
        peak, final, base = e.get("peak_replicates"), e.get("final_replicates"), e.get("baseline_replicates")
        e["change_ci"] = None if final is None or base is None else uncertainty.percentile_interval(final - base, self.level)
        if peak is None or final is None:
            e["drop_ci"], e["drop_significant"] = None, None
            return
        e["drop_ci"] = uncertainty.percentile_interval(self._oriented(peak - final, e["direction"]), self.level)
        e["drop_significant"] = uncertainty.significant(e["drop_ci"])

    @classmethod
    def from_history(cls, history: Iterable[Mapping], directions: Mapping[str, str],
                     replicates: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                     level: float = 0.95) -> "PeakTracker":
        """Rebuild from ``alignment.jsonl`` records; ``replicates`` (:meth:`replicates_state`) puts
        back the peak and final replicates, which the records do not hold."""
        tracker = cls(level)
        for record in history:
            tracker.update(record["epoch"], record["step"], record["metrics"], directions,
                           baseline=record.get("trigger") == "baseline")
        for name, reps in (replicates or {}).items():
            e = tracker.entries.get(name)
            if e is None:
                continue
            for which in ("peak", "final", "baseline"):
                if which == "baseline" and e.get("baseline") is None:
                    continue
                rep = reps.get(which)
                e[f"{which}_replicates"] = rep
                e[f"{which}_ci"] = None if rep is None else uncertainty.percentile_interval(rep, level)
            tracker._drop_interval(e)
        return tracker

    def replicates_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The peak, final and baseline replicates of every metric (float32), for checkpoints."""
        out = {}
        for name, e in self.entries.items():
            reps = {w: e[f"{w}_replicates"].float() for w in ("peak", "final", "baseline")
                    if e.get(f"{w}_replicates") is not None}
            if reps:
                out[name] = reps
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: {k: e.get(k) for k in SUMMARY_KEYS} for name, e in sorted(self.entries.items())}


# ------------------------------------------------------------------------------- TensorBoard
def chart_of(metric: str, probe_names: Iterable[str] = ()) -> str:
    """The chart a metric belongs to: the name of the probe that produced it (the longest probe
    name prefixing it), else its first two name components (``iqa_fr/tid2013``)."""
    owners = [p for p in probe_names if metric == p or metric.startswith(p + "/")]
    if owners:
        return max(owners, key=len)
    return "/".join(metric.split("/")[:2])


def custom_scalars_layout(metrics: Iterable[str], probe_names: Iterable[str] = (), prefix: str = "alignment") -> dict:
    """TensorBoard custom-scalars layout: one category per probe family, one multi-line chart per
    probe holding all its metrics (e.g. SRCC, PLCC, KRCC and the classical reference lines)."""
    probe_names = list(probe_names)
    charts: dict[str, dict[str, list[str]]] = {}
    for metric in sorted(metrics):
        chart = chart_of(metric, probe_names)
        charts.setdefault(chart.split("/")[0], {}).setdefault(chart, []).append(metric)
    return {
        f"{prefix}: {family}": {
            chart: ["Multiline", [f"^{re.escape(f'{prefix}/{m}')}$" for m in names]]
            for chart, names in sorted(by_chart.items())
        }
        for family, by_chart in sorted(charts.items())
    }


def trajectory_figure(history: list[Mapping], summary: Mapping[str, Mapping], probe_names: Iterable[str] = (),
                      title: str = "alignment"):
    """A matplotlib figure: one panel per probe (see :func:`chart_of`), every metric's trajectory
    against the training step with its 95 % interval shaded (when the records have ``ci``), its peak
    marked with a star; constant metrics (reference lines such as PSNR's correlation) dashed."""
    # A bare Figure: no pyplot global state, no GUI backend, nothing to close (it is garbage-collected).
    from matplotlib.figure import Figure

    probe_names = list(probe_names)
    names = sorted({m for r in history for m in r["metrics"]})
    charts: dict[str, list[str]] = {}
    for m in names:
        charts.setdefault(chart_of(m, probe_names), []).append(m)
    n = max(1, len(charts))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (chart, metrics) in zip(axes.flat, sorted(charts.items())):
        for m in metrics:
            points = [(r["step"], r["metrics"].get(m)) for r in history if finite(r["metrics"].get(m)) is not None]
            if not points:
                continue
            steps, values = zip(*points)
            constant = len(set(values)) == 1 and len(values) > 1
            label = m[len(chart) + 1:] or m.split("/")[-1]
            (line,) = ax.plot(steps, values, "--" if constant else "-o", markersize=3, label=label,
                              linewidth=1 if constant else 1.5)
            band = [((r.get("ci") or {}).get(m), r["step"]) for r in history if finite(r["metrics"].get(m)) is not None]
            if not constant and all(ci is not None for ci, _ in band):
                ax.fill_between([s for _, s in band], [ci[0] for ci, _ in band], [ci[1] for ci, _ in band],
                                color=line.get_color(), alpha=0.15, linewidth=0)
            s = summary.get(m)
            if s and s.get("peak_step") is not None and not constant:
                ax.plot([s["peak_step"]], [s["peak"]], marker="*", markersize=12, color=line.get_color())
        ax.set_title(chart, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(charts):]:
        ax.axis("off")
    fig.suptitle(f"{title} (star = peak, band = 95% interval over items)")
    fig.tight_layout()
    return fig
