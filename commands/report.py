"""``perceptlab report``: alignment trajectories, peaks and task results of runs, side by side.

Reads, per run directory (``runs/<experiment>/version_<n>/``):
    * ``alignment.jsonl`` -- one line per evaluation ``{"epoch", "step", "metrics": {...}}``;
    * ``alignment_summary.json`` -- per metric ``{"peak_epoch", "peak_step", "peak", "final", "drop"}``;
    * TensorBoard scalars named ``test/...`` (perceptual-task results), when present.

Writes into ``--out``: ``report.md`` and one PNG per probe family (``nights``, ``iqa_fr``,
``iqa_nr``, ``shape_bias``, ``noise``, ``zeroshot``, ``retrieval``, ...) with every run's trajectory
and its peak marked; runs with zero-shot benchmark metrics also get per-dataset tables (runs side by
side, and each run minus the reference).

Runs are named ``NAME=PATH`` on the command line, or by ``<experiment>/<version>`` of the path.
Differences are each run minus the first one (``--reference NAME`` picks another).

Uncertainty
    * One run per name: each value comes with its 95 % bootstrap interval over the probe's items
      (``ci`` in ``alignment.jsonl``, ``peak_ci``/``final_ci``/``drop_ci`` in the summary), and the
      difference of two runs with the interval of a paired bootstrap: both runs were measured on the
      same items with the same resamples, so their replicates (``alignment_bootstrap.npz``) are
      subtracted resample by resample.
    * Several runs per name (seeds): ``NAME=PATH1,PATH2,...``. Trajectories are the mean over seeds
      with a shaded 95 % t-interval, the peak table gives mean and t-interval over seeds, and the
      differences are paired by seed (``seed_everything`` of each run's ``config.yaml``, else the
      order given) with the t-interval of the per-seed differences.
    * An effect is *resolved* when its interval excludes zero, *unresolved* otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path



@dataclass
class Run:
    name: str
    path: Path
    evaluations: list[dict] = field(default_factory=list)
    summary: dict[str, dict] = field(default_factory=dict)
    task_results: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    replicates: dict[str, object] = field(default_factory=dict)  # "<metric>@peak|final" -> (B,) array


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

    @property
    def task_results(self) -> dict[str, float]:
        return self.runs[0].task_results if len(self.runs) == 1 else \
            {k: statistics.fmean(r.task_results[k] for r in self.runs)
             for k in self.runs[0].task_results if all(k in r.task_results for r in self.runs)}


# ------------------------------------------------------------------------------- intervals
def seed_interval(values: list[float], level: float = 0.95) -> tuple[float | None, list[float] | None]:
    """Mean and Student-t interval over seeds; ``(value, None)`` for a single value."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    from scipy.stats import t

    # By hand rather than scipy's t.interval: seeds that agree exactly (a metric that never moved)
    # have zero spread, where scipy returns NaN and this gives the degenerate [mean, mean].
    half = t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, [mean - half, mean + half]


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
    import torch

    from perceptlab.core.uncertainty import percentile_interval

    a, b = run.replicates.get(key), ref.replicates.get(key)
    if a is None or b is None or a.shape != b.shape:
        return None
    seeds = [r.replicates.get("__bootstrap_seed__") for r in (run, ref)]
    if any(s is not None for s in seeds) and (None in seeds or int(seeds[0]) != int(seeds[1])):
        return None  # other resampled items: the replicates are not paired
    return percentile_interval(torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64), level)


def paired_by_seed(arm: Arm, ref: Arm) -> list[tuple[Run, Run]]:
    """Runs of ``arm`` and ``ref`` with the same seed; by position when seeds are not known."""
    if arm.seeds_known and ref.seeds_known:
        ref_seeds = {r.seed: r for r in ref.runs}
        return [(r, ref_seeds[r.seed]) for r in arm.runs if r.seed in ref_seeds]
    return list(zip(arm.runs, ref.runs))


def difference(arm: Arm, ref: Arm, metric: str, which: str) -> tuple[float | None, list[float] | None, int]:
    """``arm − ref`` of a summary value (``peak`` or ``final``): with one run each, the value and its
    paired-bootstrap interval; with seeds, the mean of the per-seed differences and its t-interval.
    Returns (difference, interval, pairs)."""
    pairs = [(a.summary.get(metric, {}).get(which), b.summary.get(metric, {}).get(which), a, b)
             for a, b in paired_by_seed(arm, ref)]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if not pairs:
        return None, None, 0
    if len(pairs) == 1:
        a, b, run, ref_run = pairs[0]
        return float(a) - float(b), paired_bootstrap(run, ref_run, f"{metric}@{which}"), 1
    mean, interval = seed_interval([float(a) - float(b) for a, b, _, _ in pairs])
    return mean, interval, len(pairs)


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run directory; raises ``FileNotFoundError`` naming it when it holds nothing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory not found: {path}")
    run = Run(name=name or f"{path.parent.name}/{path.name}", path=path)
    jsonl = path / "alignment.jsonl"
    if jsonl.is_file():
        run.evaluations = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    summary = path / "alignment_summary.json"
    if summary.is_file():
        run.summary = json.loads(summary.read_text())
    run.task_results = read_test_scalars(path)
    run.seed = read_seed(path)
    bootstrap = path / "alignment_bootstrap.npz"
    if bootstrap.is_file():
        import numpy as np

        with np.load(bootstrap) as z:
            run.replicates = {k: z[k] for k in z.files}
    if not run.evaluations and not run.summary and not run.task_results:
        raise FileNotFoundError(
            f"{path} has no alignment.jsonl, alignment_summary.json or test/* TensorBoard scalars"
        )
    return run


def read_seed(path: Path) -> int | None:
    """``seed_everything`` of the run's ``config.yaml`` (LightningCLI writes it), if any."""
    config = path / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    try:
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed_everything")
    except yaml.YAMLError:
        return None
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None


def read_test_scalars(path: Path) -> dict[str, float]:
    """Last value of every ``test/...`` scalar in the run's TensorBoard event files."""
    events = sorted(path.glob("events.out.tfevents.*"))
    if not events:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, float] = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("test/"):
                out[tag] = float(acc.Scalars(tag)[-1].value)
    return out


def is_reference_line(metric: str) -> bool:
    """Classical FR-IQA correlations (``iqa_fr/<dataset>/<psnr|ssim|...>/<stat>``): model-free,
    constant over training, drawn as reference lines rather than tracked for peaks."""
    parts = metric.split("/")
    return parts[0] == "iqa_fr" and len(parts) == 4


BENCHMARK_FAMILIES = ("zeroshot", "retrieval")


def plotted(metric: str) -> bool:
    """Benchmark sets plot their headline numbers only (top-1, recall@1); other families all."""
    if family(metric) not in BENCHMARK_FAMILIES:
        return True
    return metric.endswith(("/acc1", "/image_retrieval_recall@1", "/text_retrieval_recall@1"))


def final_metrics(arm: Arm) -> dict[str, float]:
    """Each metric at the last evaluation, averaged over the arm's seeds."""
    finals = [r.evaluations[-1]["metrics"] for r in arm.runs if r.evaluations]
    keys = {k for m in finals for k in m}
    out = {}
    for k in keys:
        mean, _ = seed_interval([m.get(k) for m in finals])
        out[k] = mean
    return out


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


def benchmark_tables(arms: list[Arm], reference: str) -> list[str]:
    """Markdown tables of the zero-shot and retrieval benchmark at each run's last evaluation: a row
    per dataset, the runs side by side (mean over seeds), and each run minus the reference with its
    interval (as the papers' tables, with their uncertainty)."""
    by_name = {a.name: a for a in arms}
    finals = {a.name: final_metrics(a) for a in arms if any(r.evaluations for r in a.runs)}
    finals = {n: m for n, m in finals.items() if any(family(k) in BENCHMARK_FAMILIES for k in m)}
    if not finals:
        return []
    names = list(finals)
    others = [n for n in names if n != reference] if reference in finals else []
    lines = ["## Zero-shot benchmark (last evaluation)", "",
             "CLIP_benchmark's metrics on its webdataset sets; averages as in `perceptlab.callbacks.probes.benchmark`.",
             "Δ: run − reference with its 95 % interval (paired bootstrap over items for one seed, t over seeds for several).", ""]
    for fam, columns in (("zeroshot", (("acc1", "top-1"), ("acc5", "top-5"))),
                         ("retrieval", (("mean_recall@1", "mean R@1"), ("image_retrieval_recall@1", "image R@1"), ("image_retrieval_recall@5", "image R@5"),
                                        ("text_retrieval_recall@1", "text R@1"), ("text_retrieval_recall@5", "text R@5")))):
        datasets = sorted({"/".join(k.split("/")[1:-1]) for m in finals.values() for k in m if family(k) == fam},
                          key=lambda d: (d == "average", d))
        if not datasets:
            continue
        head = [f"{n} {label}" for n in names for _, label in columns]
        head += [f"Δ {label} ({n} − {reference})" for n in others for _, label in columns[:1]]
        lines += [f"### {'Zero-shot classification' if fam == 'zeroshot' else 'Image-text retrieval'}", "",
                  "| dataset | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for ds in datasets:
            cells = [_fmt(finals[n].get(f"{fam}/{ds}/{key}")) for n in names for key, _ in columns]
            key = columns[0][0]
            for n in others:
                value, interval = final_difference(by_name[n], by_name[reference], f"{fam}/{ds}/{key}")
                cells.append(_with_interval(value, interval))
            lines.append(f"| {ds} | " + " | ".join(cells) + " |")
        lines.append("")
    overall = {n: m.get("benchmark/average") for n, m in finals.items() if m.get("benchmark/average") is not None}
    if overall:
        lines += ["Average of each task's main metric (DataComp's): "
                  + ", ".join(f"{n} {_fmt(v)}" for n, v in overall.items()), ""]
    return lines


def family(metric: str) -> str:
    """Probe family of a metric name: ``iqa_fr/tid2013/srcc`` -> ``iqa_fr``."""
    return metric.split("/", 1)[0]


def _with_interval(value, interval, digits: int = 3) -> str:
    """``0.7123 [0.690, 0.735]``; the value alone without an interval."""
    if value is None:
        return "–"
    if interval is None:
        return _fmt(value)
    return f"{_fmt(value)} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}"
    return str(value)


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


def plot_family(arms: list[Arm], fam: str, out: Path) -> Path | None:
    """One PNG per probe family: a panel per metric, a line per run (the mean over seeds) with its
    95 % band, the peak as a star (one run) ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({m for a in arms for r in a.runs for e in r.evaluations for m in e["metrics"]
                      if family(m) == fam and not is_reference_line(m) and plotted(m)})
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
    """Value of every classical reference metric (first evaluation that has it)."""
    out: dict[str, float] = {}
    for arm in arms:
        for e in arm.evaluations:
            for m, v in e["metrics"].items():
                if is_reference_line(m):
                    out.setdefault(m, v)
    return out


def _draw_reference_lines(ax, runs: list[Arm], metric: str) -> None:
    parts = metric.split("/")
    if parts[0] != "iqa_fr" or len(parts) != 3:
        return
    ds, stat = parts[1], parts[2]
    for i, (m, v) in enumerate(sorted(reference_lines(runs).items())):
        mp = m.split("/")
        if mp[1] == ds and mp[3] == stat:
            ax.axhline(v, linestyle=":", color=f"C{(i % 7) + 3}", linewidth=1)
            ax.annotate(mp[2], (1.0, v), xycoords=("axes fraction", "data"), fontsize=6, ha="right", va="bottom")


def mean_peak_drop(arm: Arm, metric: str) -> tuple[int | None, float | None, list[float] | None]:
    """The drop over seeds at one step: the peak step of the mean trajectory, and the mean over
    seeds of (value there − final value), oriented like the drop, with its t-interval.

    Each seed's own peak minus final is never negative (the peak is the best value), so a t-interval
    over those drops excludes zero as soon as every seed has noise; one step for all seeds, chosen on
    the mean trajectory, leaves the per-seed differences free to fall either way."""
    directions = {r.summary.get(metric, {}).get("direction", "max") for r in arm.runs}
    direction = directions.pop() if len(directions) == 1 else "max"
    steps, values, _, _ = trajectory(arm, metric)
    if not steps:
        return None, None, None
    best = (max if direction == "max" else min)(range(len(steps)), key=lambda i: values[i])
    step = steps[best]
    per_seed = []
    for run in arm.runs:
        at = {e["step"]: e["metrics"].get(metric) for e in run.evaluations}
        final = run.summary.get(metric, {}).get("final")
        if at.get(step) is None or final is None:
            continue
        per_seed.append(at[step] - final if direction == "max" else final - at[step])
    mean, interval = seed_interval(per_seed)
    return step, mean, interval


def peak_table(arms: list[Arm]) -> list[dict]:
    """Rows ``{run, metric, seeds, peak_step, peak, peak_ci, final, final_ci, drop, drop_ci,
    drop_resolved}``: one run's summary with its bootstrap intervals; for several seeds, the mean
    of the seeds' peaks and finals with t-intervals, the drop at the mean trajectory's peak step
    (:func:`mean_peak_drop`) and ``significant_seeds`` (seeds whose own paired drop interval
    excludes zero)."""
    rows = []
    for arm in arms:
        metrics = sorted({m for r in arm.runs for m in r.summary if not is_reference_line(m)})
        for metric in metrics:
            summaries = [r.summary[metric] for r in arm.runs if metric in r.summary]
            if len(arm.runs) == 1:
                s = summaries[0]
                row = {"run": arm.name, "metric": metric, "seeds": 1,
                       **{k: s.get(k) for k in ("peak_epoch", "peak_step", "peak", "peak_ci", "final",
                                                "final_ci", "drop", "drop_ci")}}
            else:
                step, drop, drop_ci = mean_peak_drop(arm, metric)
                row = {"run": arm.name, "metric": metric, "seeds": len(summaries), "peak_epoch": None,
                       "peak_step": f"{step} ({', '.join(str(s.get('peak_step')) for s in summaries)})",
                       "drop": drop, "drop_ci": drop_ci}
                for key in ("peak", "final"):
                    row[key], row[f"{key}_ci"] = seed_interval([s.get(key) for s in summaries])
                row["significant_seeds"] = sum(bool(s.get("drop_significant")) for s in summaries)
            row["drop_resolved"] = resolved(row.get("drop_ci"))
            rows.append(row)
    return rows


def differences(arms: list[Arm], reference: str) -> list[dict]:
    """Each arm minus the reference on peak and final of every shared metric, with intervals."""
    ref = next(a for a in arms if a.name == reference)
    rows = []
    for arm in arms:
        if arm is ref:
            continue
        shared = set.intersection(*(set(r.summary) for r in arm.runs + ref.runs))
        for metric in sorted(m for m in shared if not is_reference_line(m)):
            peak, peak_ci, pairs = difference(arm, ref, metric, "peak")
            final, final_ci, _ = difference(arm, ref, metric, "final")
            rows.append({
                "metric": metric, "run": arm.name, "pairs": pairs,
                "peak_diff": peak, "peak_diff_ci": peak_ci, "final_diff": final, "final_diff_ci": final_ci,
                "final_resolved": resolved(final_ci), "peak_resolved": resolved(peak_ci),
            })
    return rows


def write_report(arms: list[Arm | Run], out: str | Path, reference: str | None = None,
                 title: str = "perceptlab report") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [a if isinstance(a, Arm) else Arm(a.name, [a]) for a in arms]
    reference = reference or arms[0].name
    if reference not in {a.name for a in arms}:
        raise ValueError(f"--reference {reference!r} is not one of the runs: {[a.name for a in arms]}")
    lines = [f"# {title}", ""]
    lines += ["Runs:", ""] + [
        f"- **{a.name}**: `{a.path}` ({len(a.evaluations)} evaluations"
        + (f", {len(a.runs)} seeds" + (f": {', '.join(str(r.seed) for r in a.runs)}" if a.seeds_known else "")
           if len(a.runs) > 1 else "") + ")"
        for a in arms] + [""]
    lines += [
        "Each alignment metric is measured by the alignment suite at every evaluation (the first one before",
        "training). *Peak* is its best value (highest, or lowest for drops and losses), *final* the last",
        "value, *drop* = peak − final in the metric's better direction (positive: alignment was lost after",
        "the peak).", "",
        "Brackets are 95 % intervals: for one run, a bootstrap over the probe's items (the drop's is paired:",
        "the same resampled items at peak and final); for several seeds, a t-interval over the seeds. An",
        "effect is *resolved* when its interval excludes zero.", "",
        "With several seeds, *peak step* is the step where the mean trajectory peaks (each seed's own peak",
        "step in brackets), *peak* and *final* are means of the seeds' own values, and *drop* is the mean",
        "over seeds of the value at the mean trajectory's peak step minus the final value: one step for",
        "all seeds, because each seed's own peak minus final is never negative and would look resolved",
        "from noise alone. *Drop significant (seeds)* counts the seeds whose own paired bootstrap drop",
        "interval lies above zero.", "",
    ]
    families = sorted({family(m) for a in arms for r in a.runs for e in r.evaluations for m in e["metrics"]})
    if families:
        lines += ["## Trajectories", ""]
        for fam in families:
            png = plot_family(arms, fam, out)
            if png:
                lines += [f"### {fam}", "", f"![{fam}]({png.name})", ""]
    rows = peak_table(arms)
    if rows:
        seeded = any(r["seeds"] > 1 for r in rows)
        lines += ["## Peaks", "",
                  "| run | metric | seeds | peak step | peak | final | drop | drop resolved |"
                  + (" drop significant (seeds) |" if seeded else ""),
                  "|---|---|---:|---:|---:|---:|---:|---|" + ("---:|" if seeded else "")]
        for r in rows:
            line = (f"| {r['run']} | {r['metric']} | {r['seeds']} | {_fmt(r['peak_step'])} | "
                    f"{_with_interval(r['peak'], r.get('peak_ci'))} | {_with_interval(r['final'], r.get('final_ci'))} | "
                    f"{_with_interval(r['drop'], r.get('drop_ci'))} | {r['drop_resolved']} |")
            if seeded:
                line += f" {r['significant_seeds']} of {r['seeds']} |" if r["seeds"] > 1 else " – |"
            lines.append(line)
        lines.append("")
    refs = reference_lines(arms)
    if refs:
        lines += ["## Classical full-reference IQA (model-free reference lines)", "",
                  "Correlation with MOS of pyiqa's classical metrics on the same pairs; constant over training,",
                  "drawn as dotted lines in the iqa_fr plots.", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {m} | {_fmt(v)} |" for m, v in sorted(refs.items())]
        lines.append("")
    diffs = differences(arms, reference) if len(arms) > 1 else []
    if diffs:
        lines += [f"## Differences (run − {reference})", "",
                  "| metric | run | pairs | Δ peak | Δ final | Δ final resolved |",
                  "|---|---|---:|---:|---:|---|"]
        lines += [f"| {d['metric']} | {d['run']} | {d['pairs']} | {_with_interval(d['peak_diff'], d['peak_diff_ci'])} | "
                  f"{_with_interval(d['final_diff'], d['final_diff_ci'])} | {d['final_resolved']} |" for d in diffs]
        lines.append("")
    lines += benchmark_tables(arms, reference)
    task_arms = [a for a in arms if a.task_results]
    if task_arms:
        lines += ["## Perceptual-task results (test set)", "",
                  "Several seeds: mean and t-interval over seeds.", "",
                  "| run | metric | value |", "|---|---|---:|"]
        for a in task_arms:
            for k in sorted(a.task_results):
                mean, interval = seed_interval([r.task_results.get(k) for r in a.runs])
                lines.append(f"| {a.name} | {k} | {_with_interval(mean, interval)} |")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def parse_run_args(items: list[str]) -> list[tuple[str | None, list[str]]]:
    """``NAME=PATH[,PATH...]`` or ``PATH`` -> ``(name or None, [paths])``."""
    pairs = []
    for item in items:
        name, sep, paths = item.partition("=")
        if sep and not Path(item).exists():
            pairs.append((name, [p for p in paths.split(",") if p]))
        else:
            pairs.append((None, [item]))
    return pairs


def load_arm(name: str | None, paths: list[str]) -> Arm:
    if not paths:
        raise FileNotFoundError(f"{name}: no run directory given")
    runs = [load_run(p, name) for p in paths]
    arm = Arm(name or runs[0].name, runs)
    if arm.seeds_known:
        arm.runs.sort(key=lambda r: r.seed)  # shown in seed order, whatever order they were given in
    return arm


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="perceptlab report",
                                     description="Plots and a Markdown summary of alignment trajectories and peaks.")
    parser.add_argument("runs", nargs="+",
                        help="run directories, optionally NAME=PATH; NAME=PATH1,PATH2,... for several seeds of one run")
    parser.add_argument("--out", required=True, help="output directory for report.md and PNGs")
    parser.add_argument("--reference", default=None, help="run name the differences are taken against (default: first)")
    parser.add_argument("--title", default="perceptlab report")
    ns = parser.parse_args(argv)
    arms = [load_arm(name, paths) for name, paths in parse_run_args(ns.runs)]
    path = write_report(arms, ns.out, reference=ns.reference, title=ns.title)
    print(f"report written to {path.resolve()}")
    return path
