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
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

SUMMARY_KEYS = ("direction", "peak", "peak_epoch", "peak_step", "final", "final_epoch", "final_step",
                "drop", "baseline", "evaluations")


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


class PeakTracker:
    """Per-metric peak, final value and drop over a sequence of evaluations."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def update(self, epoch: int, step: int, metrics: Mapping[str, float | None],
               directions: Mapping[str, str], baseline: bool = False) -> list[str]:
        """Add one evaluation; returns the metrics that reached a new peak with it."""
        improved = []
        for name, value in metrics.items():
            value = finite(value)
            if value is None:
                continue
            direction = directions.get(name, "max")
            e = self.entries.setdefault(name, {"direction": direction, "peak": None, "evaluations": 0,
                                               "baseline": None})
            e["evaluations"] += 1
            if baseline:
                e["baseline"] = value
            better = e["peak"] is None or (value > e["peak"] if direction == "max" else value < e["peak"])
            if better:
                e.update(peak=value, peak_epoch=epoch, peak_step=step)
                improved.append(name)
            e.update(final=value, final_epoch=epoch, final_step=step)
            e["drop"] = e["peak"] - value if direction == "max" else value - e["peak"]
        return improved

    @classmethod
    def from_history(cls, history: Iterable[Mapping], directions: Mapping[str, str]) -> "PeakTracker":
        tracker = cls()
        for record in history:
            tracker.update(record["epoch"], record["step"], record["metrics"], directions,
                           baseline=record.get("trigger") == "baseline")
        return tracker

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
    against the training step, its peak marked with a star; constant metrics (reference lines such
    as PSNR's correlation) dashed."""
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
            s = summary.get(m)
            if s and s.get("peak_step") is not None and not constant:
                ax.plot([s["peak_step"]], [s["peak"]], marker="*", markersize=12, color=line.get_color())
        ax.set_title(chart, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(charts):]:
        ax.axis("off")
    fig.suptitle(f"{title} (star = peak)")
    fig.tight_layout()
    return fig
