"""``perceptlab report``'s figures: one PNG per probe family, every arm's trajectory with its band."""
from __future__ import annotations

import math
from pathlib import Path

from perceptlab.commands.report_arms import Arm, trajectory


def plot_family(arms: list[Arm], fam: str, out: Path) -> Path | None:
    """One PNG per family (``MetricInfo.family``): a panel per plotted metric, a line per run (the
    mean over seeds) with its 95 % band, the peak as a star (one run), the reference lines of the
    same probe and statistic dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({m for a in arms for r in a.runs for e in r.evaluations for m in e["metrics"]
                      if (i := a.describe(m)).family == fam and not i.reference and i.plot})
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for arm in arms:
            steps, values, low, high = trajectory(arm, metric)
            if not steps:
                continue
            label = arm.name if len(arm.runs) == 1 else f"{arm.name} (mean of {len(arm.runs)})"
            (line,) = ax.plot(steps, values, marker=".", label=label)
            if low is not None:
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
            peak = arm.summary.get(metric) if len(arm.runs) == 1 else None
            if peak and peak.get("peak_step") is not None:
                ax.plot([peak["peak_step"]], [peak["peak"]], marker="*", markersize=13, color=line.get_color(),
                        markeredgecolor="black")
        _draw_reference_lines(ax, arms, metric)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{fam}: trajectories (band = 95% interval, star = peak)")
    fig.tight_layout()
    path = out / f"{fam.replace('/', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reference_lines(arms: list[Arm]) -> dict[str, float]:
    """Value of every reference line (``MetricInfo.reference``; first evaluation that has it)."""
    out: dict[str, float] = {}
    for arm in arms:
        for e in arm.evaluations:
            for m, v in e["metrics"].items():
                if arm.describe(m).reference:
                    out.setdefault(m, v)
    return out


def _draw_reference_lines(ax, arms: list[Arm], metric: str) -> None:
    """The reference lines whose ``chart`` is ``metric``'s (a reference names the chart of the
    metric it is a reference for), dotted, labelled by their own name. Runs recorded before
    2026-12-07 named a full-reference set's classical lines ``<probe>/reference/<statistic>``."""
    info = arms[0].describe(metric)
    for i, (m, v) in enumerate(sorted(reference_lines(arms).items())):
        ref = arms[0].describe(m)
        if ref.probe == info.probe and ref.chart_name in (info.chart_name, f"{info.probe}/reference/{info.statistic}"):
            label = m[len(ref.probe) + 1:].rsplit("/", 1)[0] if m.startswith(ref.probe + "/") else m
            ax.axhline(v, linestyle=":", color=f"C{(i % 7) + 3}", linewidth=1)
            ax.annotate(label, (1.0, v), xycoords=("axes fraction", "data"), fontsize=6, ha="right", va="bottom")


