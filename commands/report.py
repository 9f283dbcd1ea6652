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
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path



@dataclass
class Run:
    name: str
    path: Path
    evaluations: list[dict] = field(default_factory=list)
    summary: dict[str, dict] = field(default_factory=dict)
    task_results: dict[str, float] = field(default_factory=dict)


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
    if not run.evaluations and not run.summary and not run.task_results:
        raise FileNotFoundError(
            f"{path} has no alignment.jsonl, alignment_summary.json or test/* TensorBoard scalars"
        )
    return run


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


def benchmark_tables(runs: list[Run], reference: str) -> list[str]:
    """Markdown tables of the zero-shot and retrieval benchmark at each run's last evaluation: a row
    per dataset, the runs side by side, and each run minus the reference (as the papers' tables)."""
    finals = {r.name: r.evaluations[-1]["metrics"] for r in runs if r.evaluations}
    finals = {n: m for n, m in finals.items() if any(family(k) in BENCHMARK_FAMILIES for k in m)}
    if not finals:
        return []
    names = list(finals)
    others = [n for n in names if n != reference] if reference in finals else []
    lines = ["## Zero-shot benchmark (last evaluation)", "",
             "CLIP_benchmark's metrics on its webdataset sets; averages as in `perceptlab.callbacks.probes.benchmark`.", ""]
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
            cells += [_fmt(_diff(finals[n].get(f"{fam}/{ds}/{key}"), finals[reference].get(f"{fam}/{ds}/{key}")))
                      for n in others]
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


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}"
    return str(value)


def plot_family(runs: list[Run], fam: str, out: Path) -> Path | None:
    """One PNG per probe family: a panel per metric, a line per run, the peak as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({m for r in runs for e in r.evaluations for m in e["metrics"]
                      if family(m) == fam and not is_reference_line(m) and plotted(m)})
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for run in runs:
            pts = [(e["step"], e["metrics"][metric]) for e in run.evaluations if metric in e["metrics"]]
            if not pts:
                continue
            steps, values = zip(*pts)
            (line,) = ax.plot(steps, values, marker=".", label=run.name)
            peak = run.summary.get(metric)
            if peak and peak.get("peak_step") is not None:
                ax.plot([peak["peak_step"]], [peak["peak"]], marker="*", markersize=13, color=line.get_color(),
                        markeredgecolor="black")
        _draw_reference_lines(ax, runs, metric)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{fam}: trajectories (star = peak)")
    fig.tight_layout()
    path = out / f"{fam.replace('/', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reference_lines(runs: list[Run]) -> dict[str, float]:
    """Value of every classical reference metric (first evaluation that has it)."""
    out: dict[str, float] = {}
    for run in runs:
        for e in run.evaluations:
            for m, v in e["metrics"].items():
                if is_reference_line(m):
                    out.setdefault(m, v)
    return out


def _draw_reference_lines(ax, runs: list[Run], metric: str) -> None:
    parts = metric.split("/")
    if parts[0] != "iqa_fr" or len(parts) != 3:
        return
    ds, stat = parts[1], parts[2]
    for i, (m, v) in enumerate(sorted(reference_lines(runs).items())):
        mp = m.split("/")
        if mp[1] == ds and mp[3] == stat:
            ax.axhline(v, linestyle=":", color=f"C{(i % 7) + 3}", linewidth=1)
            ax.annotate(mp[2], (1.0, v), xycoords=("axes fraction", "data"), fontsize=6, ha="right", va="bottom")


def peak_table(runs: list[Run]) -> list[dict]:
    """Rows ``{run, metric, peak_epoch, peak_step, peak, final, drop}`` straight from the summaries."""
    rows = []
    for run in runs:
        for metric in sorted(m for m in run.summary if not is_reference_line(m)):
            s = run.summary[metric]
            rows.append({"run": run.name, "metric": metric, **{k: s.get(k) for k in
                         ("peak_epoch", "peak_step", "peak", "final", "drop")}})
    return rows


def differences(runs: list[Run], reference: str) -> list[dict]:
    """Each run minus the reference run, on peak and final of every shared metric."""
    ref = next(r for r in runs if r.name == reference)
    rows = []
    for run in runs:
        if run is ref:
            continue
        for metric in sorted(m for m in set(run.summary) & set(ref.summary) if not is_reference_line(m)):
            a, b = run.summary[metric], ref.summary[metric]
            rows.append({
                "metric": metric, "run": run.name,
                "peak_diff": _diff(a.get("peak"), b.get("peak")),
                "final_diff": _diff(a.get("final"), b.get("final")),
                "peak_step": a.get("peak_step"), "ref_peak_step": b.get("peak_step"),
            })
    return rows


def _diff(a, b):
    if a is None or b is None:
        return None
    return float(a) - float(b)


def write_report(runs: list[Run], out: str | Path, reference: str | None = None, title: str = "perceptlab report") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reference = reference or runs[0].name
    if reference not in {r.name for r in runs}:
        raise ValueError(f"--reference {reference!r} is not one of the runs: {[r.name for r in runs]}")
    lines = [f"# {title}", ""]
    lines += ["Runs:", ""] + [f"- **{r.name}**: `{r.path}` ({len(r.evaluations)} evaluations)" for r in runs] + [""]
    lines += [
        "Each alignment metric is measured by the alignment suite at every evaluation (the first one before",
        "training). *Peak* is its best value (highest, or lowest for drops and losses), *final* the last",
        "value, *drop* = peak − final in the metric's better direction (positive: alignment was lost after",
        "the peak).", "",
    ]
    families = sorted({family(m) for r in runs for e in r.evaluations for m in e["metrics"]})
    if families:
        lines += ["## Trajectories", ""]
        for fam in families:
            png = plot_family(runs, fam, out)
            if png:
                lines += [f"### {fam}", "", f"![{fam}]({png.name})", ""]
    rows = peak_table(runs)
    if rows:
        lines += ["## Peaks", "", "| run | metric | peak epoch | peak step | peak | final | drop |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['run']} | {r['metric']} | {_fmt(r['peak_epoch'])} | {_fmt(r['peak_step'])} | "
                  f"{_fmt(r['peak'])} | {_fmt(r['final'])} | {_fmt(r['drop'])} |" for r in rows]
        lines.append("")
    refs = reference_lines(runs)
    if refs:
        lines += ["## Classical full-reference IQA (model-free reference lines)", "",
                  "Correlation with MOS of pyiqa's classical metrics on the same pairs; constant over training,",
                  "drawn as dotted lines in the iqa_fr plots.", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {m} | {_fmt(v)} |" for m, v in sorted(refs.items())]
        lines.append("")
    diffs = differences(runs, reference) if len(runs) > 1 else []
    if diffs:
        lines += [f"## Differences (run − {reference})", "",
                  "| metric | run | Δ peak | Δ final | peak step | peak step of reference |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {d['metric']} | {d['run']} | {_fmt(d['peak_diff'])} | {_fmt(d['final_diff'])} | "
                  f"{_fmt(d['peak_step'])} | {_fmt(d['ref_peak_step'])} |" for d in diffs]
        lines.append("")
    lines += benchmark_tables(runs, reference)
    task_runs = [r for r in runs if r.task_results]
    if task_runs:
        lines += ["## Perceptual-task results (test set)", "", "| run | metric | value |", "|---|---|---:|"]
        for r in task_runs:
            lines += [f"| {r.name} | {k} | {_fmt(v)} |" for k, v in sorted(r.task_results.items())]
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def parse_run_args(items: list[str]) -> list[tuple[str | None, str]]:
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        pairs.append((name, path) if sep and not Path(item).exists() else (None, item))
    return pairs


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="perceptlab report",
                                     description="Plots and a Markdown summary of alignment trajectories and peaks.")
    parser.add_argument("runs", nargs="+", help="run directories, optionally NAME=PATH")
    parser.add_argument("--out", required=True, help="output directory for report.md and PNGs")
    parser.add_argument("--reference", default=None, help="run name the differences are taken against (default: first)")
    parser.add_argument("--title", default="perceptlab report")
    ns = parser.parse_args(argv)
    runs = [load_run(path, name) for name, path in parse_run_args(ns.runs)]
    path = write_report(runs, ns.out, reference=ns.reference, title=ns.title)
    print(f"report written to {path.resolve()}")
    return path
