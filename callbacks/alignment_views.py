"""What the alignment suite shows while a run goes: one console line per evaluation and the
logger scalars (values, interval ends, a TensorBoard layout and trajectory figure)."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from lightning.pytorch.loggers import TensorBoardLogger

from perceptlab.callbacks.peaks import custom_scalars_layout, interval_tags, summary_scalars
from perceptlab.callbacks.probes.metric_info import MetricInfo


def headline_metrics(info: Mapping[str, MetricInfo], metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """Each probe's main metric (``MetricInfo.headline``) among ``metrics``, in the order measured."""
    return {k: v for k, v in metrics.items() if k in info and info[k].headline}


def describe(record: Mapping, headline: Mapping[str, float | None], surpassed: Iterable[str] = (),
             beyond_noise: Iterable[str] = ()) -> str:
    """One console line for an evaluation, e.g. ``alignment at step 25 (epoch 0, step) in 12.3 s:
    nights/2afc 0.6823 [0.651, 0.712]*, ...`` over the ``headline`` metrics: of those that beat
    their previous peak (``surpassed``), ``*`` marks the ones that beat every earlier evaluation
    beyond noise (``beyond_noise``), ``~`` the others; without intervals ``*`` marks every one."""
    surpassed, beyond_noise = set(surpassed), set(beyond_noise)
    ci = record.get("ci") or {}

    def mark(k: str) -> str:
        if k not in surpassed:
            return ""
        return "*" if k in beyond_noise or not ci else "~"

    def interval(k: str) -> str:
        return "" if ci.get(k) is None else f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]"

    parts = [f"{k} {'n/a' if v is None else f'{v:.4f}'}{interval(k)}{mark(k)}" for k, v in headline.items()]
    legend = ""
    if any(mark(k) for k in headline):
        legend = "   (* new peak beyond noise, ~ new best within noise)" if ci else "   (* new peak)"
    where = f"of {record['model']} " if "model" in record else ""
    return (f"alignment {where}at step {record['step']} (epoch {record['epoch']}, {record['trigger']}) in "
            f"{sum(record['seconds'].values()):.1f} s: " + ", ".join(parts) + legend)


def log_record(loggers, record: Mapping, prefix: str, info: Mapping[str, MetricInfo],
               layout: bool = False, figure: Callable | None = None, summary: Mapping | None = None) -> None:
    """Log an evaluation to every logger at its step: ``<prefix>/<metric>``, the interval ends
    ``<prefix>_ci/<metric>/low|high``, ``<prefix>/seconds`` and the peak summary so far
    (``<prefix>_peak/<metric>/peak|peak_step|final|drop|drop_p|drop_significant``, so that a
    tracker without the run directory has the verdict too); for TensorBoard also the
    custom-scalars layout (``layout``: once per run) and the trajectory ``figure`` (a callable).
    Reference lines (model-free constants) are left out: they are in the figure and the run record."""
    reference = {k for k, i in info.items() if i.reference}
    scalars = {f"{prefix}/{k}": v for k, v in record["metrics"].items() if v is not None and k not in reference}
    scalars.update(summary_scalars({k: v for k, v in (summary or {}).items() if k not in reference}, prefix))
    scalars[f"{prefix}/seconds"] = sum(record["seconds"].values())
    for k, interval in (record.get("ci") or {}).items():
        if interval is not None and record["metrics"].get(k) is not None and k not in reference:
            scalars.update(zip(interval_tags(k, prefix), interval))
    for logger in loggers:
        logger.log_metrics(scalars, step=record["step"])
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            if layout:
                intervals = [k for k, v in (record.get("ci") or {}).items() if v is not None]
                described = {k: info[k] for k in record["metrics"] if k in info}
                writer.add_custom_scalars(custom_scalars_layout(described, prefix, intervals))
            if figure is not None:
                writer.add_figure(f"{prefix}/trajectories", figure(), global_step=record["step"])
            writer.flush()
