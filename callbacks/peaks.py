"""Peak tracking of alignment trajectories: the summary, the checkpoint at the peak, TensorBoard views.

The early-peak phenomenon (alignment with low-level human judgements rising early in CLIP training
and falling afterwards) is read off three numbers per metric: the best value and when it happened,
the final value, and how much was lost in between. :class:`PeakTracker` keeps them for every
metric; the suite writes them to ``alignment_summary.json`` (a ``MetricSummary`` of
``perceptlab.callbacks.run_record`` per metric)::

    {"<metric>": {"direction": "max", "peak": 0.81, "peak_epoch": 2, "peak_step": 300,
                  "final": 0.74, "final_epoch": 9, "final_step": 1500, "drop": 0.07,
                  "drop_ci": [0.01, 0.12], "drop_p": 0.004, "drop_significant": true,
                  "baseline": 0.62, "evaluations": 11, "items": 2120, ...}, ...}

``direction`` says which way is more human-like / better (``max`` or ``min``); the peak is the
best value in that direction (the first one on ties). ``drop`` = how far the final value fell
behind the peak in that direction, >= 0. Epochs and steps are those of ``alignment.jsonl`` (the
baseline before training has epoch -1 and step 0). Non-finite values (an undefined correlation)
are left out of peak and final.

Is the drop real?  The peak is the best of ``T`` noisy evaluations, picked after looking at all
of them, and then compared with the final value on the same items: testing it as if it had been
named in advance calls a flat trajectory "dropped" far more often than promised, the more so the
more evaluations (the winner's curse). ``drop_ci``, ``drop_p`` and ``drop_significant`` come from
``perceptlab.core.uncertainty.peak_drop_test``, a max-type bootstrap over *every* evaluation's
replicates (the same resampled items at each evaluation), whose null distribution includes the
choice of the peak: on a flat trajectory it calls a drop significant at most at the one-sided
nominal rate (2.5 %), for any number of evaluations (measured: docs/calibration.md). The tracker
therefore keeps each metric's replicates of every evaluation (``B`` floats per evaluation).
A new peak is ``beyond_noise`` when it beats every earlier evaluation beyond noise
(``uncertainty.beats_every_earlier``, an intersection-union test). ``change`` = final - baseline
(what training did to the metric, signed) with its paired interval ``change_ci``. ``ci_note`` says
when the intervals should not be trusted (too few items for the metric family, or zero width).
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.callbacks.run_record import MetricSummary, finite
from perceptlab.core import uncertainty


@dataclass
class _Trajectory:
    """One metric's evaluations in step order: values and (when measured) bootstrap replicates."""

    direction: str
    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    replicates: list[torch.Tensor | None] = field(default_factory=list)
    baseline: int | None = None  # row of the baseline evaluation
    items: int | None = None
    reliable_from: int = 0  # items from which the metric's interval covers (MetricInfo.reliable_from)

    def oriented(self, x):
        return x if self.direction == "max" else -x

    def all_replicates(self) -> torch.Tensor | None:
        if not self.replicates or any(r is None for r in self.replicates):
            return None
        shapes = {tuple(r.shape) for r in self.replicates}
        return torch.stack(self.replicates) if len(shapes) == 1 else None


class PeakTracker:
    """Per-metric peak, final value and drop over a sequence of evaluations, with intervals that
    stay valid when the evaluations come with replicates."""

    def __init__(self, level: float = 0.95) -> None:
        self.entries: dict[str, _Trajectory] = {}
        self.level = level
        self.surpassed: list[str] = []  # metrics whose previous peak the last evaluation beat
        self.beyond_noise: list[str] = []  # ... and that beat every earlier evaluation beyond noise

    def update(self, epoch: int, step: int, metrics: Mapping[str, float | None],
               directions: Mapping[str, str], baseline: bool = False,
               replicates: Mapping[str, torch.Tensor] | None = None,
               items: Mapping[str, int] | None = None, reliable_from: Mapping[str, int] | None = None) -> list[str]:
        """Add one evaluation (kept in step order; a later one at the same step goes after it).
        ``reliable_from``: per metric, the items from which its interval is to be trusted.
        Returns the metrics that reached a new peak with it (noise or not); those that beat every
        earlier evaluation beyond noise are in :attr:`beyond_noise` afterwards."""
        improved: list[str] = []
        self.surpassed, self.beyond_noise = [], []
        for name, value in metrics.items():
            value = finite(value)
            if value is None:
                continue
            e = self.entries.setdefault(name, _Trajectory(directions.get(name, "max")))
            if reliable_from is not None and name in reliable_from:
                e.reliable_from = int(reliable_from[name])
            rep = None if replicates is None or replicates.get(name) is None else \
                torch.as_tensor(replicates[name]).detach().float().cpu()
            previous = self._peak_row(e)
            row = bisect.bisect_right(e.steps, step)
            for attr, x in (("steps", int(step)), ("epochs", int(epoch)), ("values", value), ("replicates", rep)):
                getattr(e, attr).insert(row, x)
            if e.baseline is not None and e.baseline >= row:
                e.baseline += 1
            if baseline:
                e.baseline = row
            if items is not None and items.get(name) is not None:
                e.items = int(items[name])
            if self._peak_row(e) == row and (previous is None or e.values[previous] != value):
                improved.append(name)
                if previous is not None:
                    self.surpassed.append(name)
                    reps = e.all_replicates()
                    if reps is not None and row == len(e.values) - 1 and uncertainty.beats_every_earlier(
                            e.oriented(torch.tensor(e.values)), e.oriented(reps), self.level):
                        self.beyond_noise.append(name)
        return improved

    @staticmethod
    def _peak_row(e: _Trajectory) -> int | None:
        if not e.values:
            return None
        best = max(e.values) if e.direction == "max" else min(e.values)
        return e.values.index(best)  # the first one on ties

    def _summary_of(self, name: str, e: _Trajectory) -> MetricSummary:
        peak, final = self._peak_row(e), len(e.values) - 1
        reps = e.all_replicates()

        def ci(row):
            rep = e.replicates[row] if row is not None else None
            return None if rep is None else uncertainty.percentile_interval(rep, self.level)

        s: MetricSummary = {
            "direction": e.direction, "peak": e.values[peak], "peak_epoch": e.epochs[peak], "peak_step": e.steps[peak],
            "final": e.values[final], "final_epoch": e.epochs[final], "final_step": e.steps[final],
            "drop": e.oriented(e.values[peak] - e.values[final]),
            "baseline": None if e.baseline is None else e.values[e.baseline],
            "evaluations": len(e.values), "items": e.items,
            "peak_ci": ci(peak), "final_ci": ci(final), "baseline_ci": ci(e.baseline),
        }
        if reps is not None:
            test = uncertainty.peak_drop_test(e.oriented(torch.tensor(e.values)), e.oriented(reps.double()), self.level)
            s.update(drop_ci=test.interval, drop_p=test.p, drop_significant=test.significant)
        else:
            s.update(drop_ci=None, drop_p=None, drop_significant=None)
        s["change"] = None if e.baseline is None else e.values[final] - e.values[e.baseline]
        base_rep = None if e.baseline is None else e.replicates[e.baseline]
        s["change_ci"] = None if base_rep is None or e.replicates[final] is None else \
            uncertainty.percentile_interval(e.replicates[final] - base_rep, self.level)
        note = uncertainty.summary_note(s["peak_ci"], s["final_ci"], e.items, e.reliable_from)
        s["ci_note"], s["ci_reliable"] = note, None if s["final_ci"] is None else note is None
        return s

    def summary(self) -> dict[str, MetricSummary]:
        return {name: self._summary_of(name, e) for name, e in sorted(self.entries.items())}

    def marks(self) -> dict[str, dict[str, int]]:
        """Row of each metric's peak, final and baseline evaluation among its replicates."""
        out = {}
        for name, e in self.entries.items():
            if e.all_replicates() is None:
                continue
            out[name] = {"peak": self._peak_row(e), "final": len(e.values) - 1}
            if e.baseline is not None:
                out[name]["baseline"] = e.baseline
        return out

    def trajectories(self) -> dict[str, tuple[list[int], torch.Tensor]]:
        """Steps and ``(T, B)`` replicates of every metric measured with replicates throughout."""
        return {name: (list(e.steps), reps) for name, e in self.entries.items()
                if (reps := e.all_replicates()) is not None}

    def replicates_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every metric's replicates of every evaluation (float32 ``(T, B)``), for checkpoints."""
        return {name: {"trajectory": reps.float()} for name, (_, reps) in self.trajectories().items()}

    @classmethod
    def from_history(cls, history: Iterable[Mapping], directions: Mapping[str, str],
                     replicates: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                     level: float = 0.95, items: Mapping[str, int] | None = None,
                     reliable_from: Mapping[str, int] | None = None) -> "PeakTracker":
        """Rebuild from ``alignment.jsonl`` records; ``replicates`` (:meth:`replicates_state`)
        puts back each metric's replicates, row by row in the order of its finite values."""
        tracker = cls(level)
        rows: dict[str, int] = {}
        for record in history:
            reps = {}
            for name, value in record["metrics"].items():
                if finite(value) is None:
                    continue
                stacked = (replicates or {}).get(name, {}).get("trajectory")
                row = rows.get(name, 0)
                if stacked is not None and row < len(stacked):
                    reps[name] = torch.as_tensor(stacked[row])
                rows[name] = row + 1
            tracker.update(record["epoch"], record["step"], record["metrics"], directions,
                           baseline=record.get("trigger") == "baseline", replicates=reps or None, items=items,
                           reliable_from=reliable_from)
        return tracker


# ------------------------------------------------------------------------------- TensorBoard
def interval_tags(metric: str, prefix: str = "alignment") -> tuple[str, str]:
    """The logger tags of a metric's interval ends (``alignment_ci/<metric>/low`` and ``/high``)."""
    return f"{prefix}_ci/{metric}/low", f"{prefix}_ci/{metric}/high"


#: The peak summary's fields logged as scalars (``<prefix>_peak/<metric>/<field>``; booleans as 0/1).
SUMMARY_SCALARS = ("peak", "peak_step", "final", "drop", "drop_p", "drop_significant")


def summary_scalars(summary: dict, prefix: str = "alignment") -> dict[str, float]:
    """The peak summary so far as logger scalars: what CSV, MLflow or W&B show of the verdict."""
    out = {}
    for metric, entry in summary.items():
        for field in SUMMARY_SCALARS:
            value = entry.get(field)
            if value is not None:
                out[f"{prefix}_peak/{metric}/{field}"] = float(value)
    return out


def custom_scalars_layout(info: Mapping[str, MetricInfo], prefix: str = "alignment",
                          intervals: Iterable[str] = ()) -> dict:
    """TensorBoard custom-scalars layout of the metrics ``info`` describes: one category per
    family; in it one chart per headline metric, drawn with its interval band (a ``Margin`` chart)
    when it has one, and one chart per remaining ``MetricInfo.chart`` (each correlation on its
    own, a probe's other metrics together). Reference lines are not logged as scalars (a
    model-free constant is no trajectory): they are drawn in the trajectory figure and the report."""
    intervals = set(intervals)
    headlines = {m for m, i in info.items() if i.headline}
    charts: dict[str, dict[str, list]] = {}
    for metric in sorted(info):
        described = info[metric]
        if described.reference:
            continue
        family = described.family
        tag = f"{prefix}/{metric}"
        if described.headline:
            entry = ["Margin", [tag, *interval_tags(metric, prefix)]] if metric in intervals else \
                ["Multiline", [f"^{re.escape(tag)}$"]]
            charts.setdefault(family, {})[metric] = entry
            continue
        chart = described.chart_name
        if chart in headlines:  # a probe's headline has its own chart; its siblings share another
            chart = f"{chart} (more)"
        entry = charts.setdefault(family, {}).setdefault(chart, ["Multiline", []])
        entry[1].append(f"^{re.escape(tag)}$")
    return {f"{prefix}: {family}": dict(sorted(by_chart.items())) for family, by_chart in sorted(charts.items())}


def trajectory_figure(history: list[Mapping], summary: Mapping[str, Mapping], info: Mapping[str, MetricInfo],
                      title: str = "alignment"):
    """A matplotlib figure: one panel per ``MetricInfo.panel`` (an IQA data set's correlations and
    their reference lines share one: a figure of one panel per statistic grew to 27 panels and 2.5 s
    of drawing per evaluation), every metric's trajectory
    against the training step with its 95 % interval shaded (when the records have ``ci``), its peak
    marked with a star; constant metrics (reference lines such as PSNR's correlation) dashed."""
    # A bare Figure: no pyplot global state, no GUI backend, nothing to close (it is garbage-collected).
    from matplotlib.figure import Figure

    names = sorted({m for r in history for m in r["metrics"]} & set(info))
    charts: dict[str, list[str]] = {}
    for m in names:
        charts.setdefault(info[m].panel_name, []).append(m)
    n = max(1, len(charts))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    # 72 dpi and fixed margins: tight_layout and a 100-dpi canvas took 3 s per evaluation for 27
    # panels, on the training's critical path (the other ranks wait at the next barrier).
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows), dpi=72)
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
        ax.legend(fontsize=7, loc="lower left")  # "best" searches the data for a place: slow
    for ax in list(axes.flat)[len(charts):]:
        ax.axis("off")
    fig.suptitle(f"{title} (star = peak, band = 95% interval over items)")
    inch = 1 / (3.4 * rows)  # margins in figure fractions: room for titles, tick labels, the step axis
    fig.subplots_adjust(left=0.6 / (5.2 * cols), right=1 - 0.2 / (5.2 * cols), top=1 - 0.75 * inch,
                        bottom=0.5 * inch, hspace=0.45, wspace=0.25)
    return fig
