"""What a probe's metric is: the description every probe gives of each metric it computes.

A probe declares it next to the code that computes the metric (:meth:`Probe.describe
<perceptlab.callbacks.probes.base.Probe.describe>`); the suite stores the descriptions with the
run (``alignment_metrics.json``, ``perceptlab.callbacks.run_record``), and everything that reads a
run — the peak summary's interval notes, the TensorBoard layout and figure, ``perceptlab report``'s
figures and tables — reads them from there. A run made with a user's own probe therefore reports
without importing that probe, and nothing outside the probes keys a table by a probe's name.

Runs written before the descriptions existed are described by :func:`legacy_info`, the name rules
the shipped probes followed then (kept here, with the probes, so the old run directories still report).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from perceptlab.core.uncertainty import MIN_RELIABLE_ITEMS

DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class MetricInfo:
    """One metric's description.

    Args:
        probe: the name of the probe that computes it (its metric prefix).
        family: the group it is drawn in: one ``perceptlab report`` figure and one TensorBoard
            custom-scalars category per family.
        direction: ``"max"`` when a larger value is more human-like / better, else ``"min"``.
        statistic: the kind of statistic, which sets how many items its bootstrap interval needs
            (``perceptlab.core.uncertainty.MIN_RELIABLE_ITEMS``: ``mean``, ``srcc``, ``plcc``,
            ``krcc``, ``ratio``, ``relative_drop``); any other name is allowed with ``min_items``.
        min_items: items from which its 95 % interval covers (measured by simulation, see
            docs/calibration.md); ``None``: the statistic's measured count (0 when unknown).
        headline: the probe's main metric (console line, its own TensorBoard chart with the band).
        reference: a model-free constant (a classical metric's correlation): drawn beside the
            metric it is a reference for (``chart``), not tracked for peaks.
        chart: the TensorBoard chart it is drawn in (``None``: the probe's).
        panel: the panel of the suite's trajectory figure (``None``: its chart).
        plot: drawn in ``perceptlab report``'s figures (a benchmark's secondary numbers are not).
        table: a ``perceptlab report`` table (its title) that shows the metric at the last
            evaluation, at ``row`` and ``column``; ``order`` sorts the columns (the first column
            also gets each run's difference from the reference run).
        footer: a line under the tables that lists this metric for every run (``footer: values``).
    """

    probe: str
    family: str
    direction: str = "max"
    statistic: str = "mean"
    min_items: int | None = None
    headline: bool = False
    reference: bool = False
    chart: str | None = None
    panel: str | None = None
    plot: bool = True
    table: str | None = None
    row: str | None = None
    column: str | None = None
    order: int = 0
    footer: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"MetricInfo.direction must be one of {DIRECTIONS}, got {self.direction!r}")

    @property
    def reliable_from(self) -> int:
        """Items from which the metric's interval is to be trusted."""
        return self.min_items if self.min_items is not None else MIN_RELIABLE_ITEMS.get(self.statistic, 0)

    @property
    def chart_name(self) -> str:
        return self.chart or self.probe

    @property
    def panel_name(self) -> str:
        return self.panel or self.chart_name

    def to_json(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what ``alignment_metrics.json`` holds)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in defaults or defaults[k] != v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MetricInfo":
        """The inverse of :meth:`to_json`; fields a later version added are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------ runs of earlier versions
# The metric-name rules of the shipped probes before they described their metrics (one place, with
# the probes): what a run directory without alignment_metrics.json means.
_HEADLINE_SUFFIXES = ("", "/2afc", "/srcc", "/drop")
_CORRELATIONS = ("srcc", "plcc", "krcc")
_BENCHMARK = {"zeroshot": ("Zero-shot classification", (("acc1", "top-1"), ("acc5", "top-5"))),
              "retrieval": ("Image-text retrieval", (("mean_recall@1", "mean R@1"), ("image_retrieval_recall@1", "image R@1"),
                                                     ("image_retrieval_recall@5", "image R@5"),
                                                     ("text_retrieval_recall@1", "text R@1"),
                                                     ("text_retrieval_recall@5", "text R@5")))}


def _owner(metric: str, probe_names: Iterable[str]) -> str | None:
    owners = [p for p in probe_names if metric == p or metric.startswith(p + "/")]
    return max(owners, key=len) if owners else None


def legacy_info(metric: str, probe_names: Iterable[str] = (), metrics: Iterable[str] = ()) -> MetricInfo:
    """The description of a metric of a run written before probes described their metrics
    (``metrics``: all of the run's, which decide each probe's headline)."""
    parts = metric.split("/")
    family, last = parts[0], parts[-1]
    if family in _BENCHMARK or metric == "benchmark/average":
        return benchmark_info(metric, "benchmark")
    probe = _owner(metric, probe_names) or "/".join(parts[:2])
    if family == "iqa_fr" and len(parts) == 4:
        return MetricInfo(probe=probe, family=family, statistic=last, reference=True,
                          chart="/".join(parts[:2] + [last]), panel="/".join(parts[:2]))
    statistic = last if last in _CORRELATIONS else "mean"
    if family == "shape_bias" and len(parts) <= 2:
        statistic = "ratio"
    if family == "noise" and "drop" in last:
        statistic = "relative_drop"
    direction = "min" if (family == "noise" and "drop" in last) or (family == "shape_bias" and last == "texture_acc") else "max"
    present = set(metrics) | {metric}
    headline = next((probe + s for s in _HEADLINE_SUFFIXES if probe + s in present), None) == metric
    chart = metric if last in _CORRELATIONS else None
    panel = "/".join(parts[:2]) if family.startswith("iqa_") else None
    return MetricInfo(probe=probe, family=family, direction=direction, statistic=statistic, headline=headline,
                      chart=chart, panel=panel)


def benchmark_info(metric: str, probe: str, headline: str | None = None) -> MetricInfo:
    """A CLIP_benchmark metric (``zeroshot/<dataset>/<key>``, ``retrieval/<dataset>/<key>``, the
    probe's overall ``<probe>/average``): its table, row and column; the secondary numbers (top-5,
    per-class recall, recall@5 and @10) are tabled but not plotted."""
    parts = metric.split("/")
    family = parts[0]
    if family not in _BENCHMARK:
        return MetricInfo(probe=probe, family=family, headline=metric == headline,
                          footer="Average of each task's main metric (DataComp's)")
    title, columns = _BENCHMARK[family]
    key, row = parts[-1], "/".join(parts[1:-1])
    order = next((i for i, (k, _) in enumerate(columns) if k == key), None)
    plot = key in ("acc1", "image_retrieval_recall@1", "text_retrieval_recall@1", "mean_recall@1")
    return MetricInfo(probe=probe, family=family, headline=metric == headline, plot=plot, chart="/".join(parts[:2]),
                      table=None if order is None else title, row=row,
                      column=None if order is None else columns[order][1], order=order or 0)
