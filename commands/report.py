"""``perceptlab report``: alignment trajectories, peaks and task results of runs, side by side.

Reads, per run directory (``runs/<experiment>/version_<n>/``):
    * ``alignment.jsonl`` -- one line per evaluation ``{"epoch", "step", "metrics": {...}}``;
    * ``alignment_summary.json`` -- per metric ``{"peak_epoch", "peak_step", "peak", "final", "drop"}``;
    * TensorBoard scalars named ``test/...`` (perceptual-task results), when present.

Writes into ``--out``: ``report.md`` and one PNG per family of metrics (``nights``, ``iqa_fr``,
``iqa_nr``, ``shape_bias``, ``noise``, ``zeroshot``, ``retrieval``, ...) with every run's trajectory
and its peak marked; metrics their probe tables (the zero-shot benchmark's, per data set) also get
tables at the last evaluation (runs side by side, and each run minus the reference). What each
metric is comes from the run (``alignment_metrics.json``, written by the probes that measured it).

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
      order given) with the t-interval of the per-seed differences, the seeds that would resolve
      an unresolved one at 80 % power and the difference the present seeds resolve.
    * The drop after the peak is tested with the choice of the peak included (the summary's
      ``drop_ci`` for one run, ``uncertainty.seed_drop_test`` over seeds), so a flat trajectory is
      called dropped at most at the nominal rate however many evaluations there were.
    * An effect is *resolved* when its interval excludes zero, *unresolved* otherwise.

Parts: reading is ``perceptlab.callbacks.run_record``; statistics ``perceptlab.core.uncertainty``;
arms and comparisons ``report_arms``; figures ``report_plots``; tables ``report_tables``.
"""
from __future__ import annotations

from pathlib import Path

from perceptlab.commands.report_arms import Arm, Run, load_arm
from perceptlab.commands.report_plots import plot_family, reference_lines
from perceptlab.commands.report_tables import difference_section, metric_tables, peak_section, reference_section, task_section

EXPLANATION = [
    "Each alignment metric is measured by the alignment suite at every evaluation (the first one before",
    "training). *Peak* is its best value (highest, or lowest for drops and losses), *final* the last",
    "value, *drop* = peak − final in the metric's better direction (positive: alignment was lost after",
    "the peak).", "",
    "Brackets are 95 % intervals: for one run, a bootstrap over the probe's items; for several seeds, a",
    "t-interval over the seeds. An effect is *resolved* when its interval excludes zero.", "",
    "The drop's interval and p-value account for the peak being picked after seeing every evaluation",
    "(for one run a max-type bootstrap over all evaluations; over seeds, Bonferroni-adjusted t bounds",
    "over the candidate peak steps), so a flat trajectory is called dropped at most 2.5 % of the time",
    "whatever the number of evaluations (docs/calibration.md). The interval is of the largest drop,",
    "which is never below zero.", "",
    "With several seeds, *peak step* is where the mean trajectory peaks (each seed's own peak step in",
    "brackets), *peak* and *final* are means of the seeds' own values, and *drop* is the mean",
    "trajectory's peak minus its final value. *Drop significant (seeds)* counts the seeds whose own",
    "drop test is significant.", "",
]


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
    lines += EXPLANATION
    families = sorted({a.describe(m).family for a in arms for r in a.runs for e in r.evaluations for m in e["metrics"]})
    if families:
        lines += ["## Trajectories", ""]
        for fam in families:
            png = plot_family(arms, fam, out)
            if png:
                lines += [f"### {fam}", "", f"![{fam}]({png.name})", ""]
    lines += peak_section(arms)
    lines += reference_section(reference_lines(arms))
    lines += difference_section(arms, reference)
    lines += metric_tables(arms, reference)
    lines += task_section(arms)
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


def report(runs: list[str], out: str, reference: str | None = None, title: str = "perceptlab report") -> Path:
    """Plots and a Markdown summary of alignment trajectories and peaks, runs side by side.

    Args:
        runs: run directories, optionally NAME=PATH; NAME=PATH1,PATH2,... for several seeds of one run.
        out: output directory for report.md and the PNGs.
        reference: run name the differences are taken against (default: the first).
        title: the report's title.
    """
    arms = [load_arm(name, paths) for name, paths in parse_run_args(runs)]
    path = write_report(arms, out, reference=reference, title=title)
    print(f"report written to {path.resolve()}")
    return path


def main(argv: list[str] | None = None) -> Path:
    from perceptlab.commands.cli import run_function

    return run_function(report, argv, prog="perceptlab report")
