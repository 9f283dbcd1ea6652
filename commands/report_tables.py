"""``perceptlab report``'s Markdown tables: peaks, differences with planning, benchmarks, tasks."""
from __future__ import annotations

import math

from perceptlab.commands.report_arms import Arm, differences, final_difference, final_metrics, peak_table
from perceptlab.core.uncertainty import seed_interval


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




def _p(value) -> str:
    return "–" if value is None else (f"{value:.3f}" if value >= 0.001 else "<0.001")


def peak_section(arms: list[Arm]) -> list[str]:
    rows = peak_table(arms)
    if not rows:
        return []
    seeded = any(r["seeds"] > 1 for r in rows)
    lines = ["## Peaks", "",
             "| run | metric | seeds | peak step | peak | final | drop | drop p | drop resolved |"
             + (" drop significant (seeds) | detectable (80 %) |" if seeded else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if seeded else "")]
    notes = []
    for r in rows:
        mark = ""
        if r.get("ci_note"):
            notes.append(f"{r['run']} {r['metric']}: {r['ci_note']}")
            mark = " †"
        line = (f"| {r['run']} | {r['metric']}{mark} | {r['seeds']} | {_fmt(r['peak_step'])} | "
                f"{_with_interval(r['peak'], r.get('peak_ci'))} | {_with_interval(r['final'], r.get('final_ci'))} | "
                f"{_with_interval(r['drop'], r.get('drop_ci'))} | {_p(r.get('drop_p'))} | {r['drop_resolved']} |")
        if seeded:
            line += f" {r['significant_seeds']} of {r['seeds']} | {_fmt(r.get('drop_detectable'))} |" if r["seeds"] > 1 else " – | – |"
        lines.append(line)
    lines.append("")
    if seeded:
        lines += ["*Detectable (80 %)*: the drop these seeds would find 80 % of the time, given the observed",
                  "spread of the seeds' drops (value at the peak step minus final; `uncertainty.seed_drop_detectable`).", ""]
    if notes:
        lines += ["† intervals not to be trusted:", ""] + [f"- {n}" for n in notes] + [""]
    return lines


def difference_section(arms: list[Arm], reference: str) -> list[str]:
    diffs = differences(arms, reference) if len(arms) > 1 else []
    if not diffs:
        return []
    seeded = any(d["pairs"] > 1 for d in diffs)
    lines = [f"## Differences (run − {reference})", ""]
    if seeded:
        lines += ["*Seeds for 80 %*: paired seeds a two-sided t-test needs to resolve the observed Δ final with",
                  "80 % power, given the observed seed-to-seed spread of the differences; *resolvable now*: the",
                  "smallest |Δ| the present seeds resolve with 80 % power (both from that spread, itself uncertain).", ""]
    lines += ["| metric | run | pairs | Δ peak | Δ final | Δ final resolved |" + (" seeds for 80 % | resolvable now |" if seeded else ""),
              "|---|---|---:|---:|---:|---|" + ("---:|---:|" if seeded else "")]
    for d in diffs:
        line = (f"| {d['metric']} | {d['run']} | {d['pairs']} | {_with_interval(d['peak_diff'], d['peak_diff_ci'])} | "
                f"{_with_interval(d['final_diff'], d['final_diff_ci'])} | {d['final_resolved']} |")
        if seeded:
            needed = "–" if d["final_resolved"].startswith("yes") else (
                "> 1000" if d["seeds_needed"] is None and d["resolvable"] is not None else _fmt(d["seeds_needed"]))
            line += f" {needed} | {_fmt(d['resolvable'])} |"
        lines.append(line)
    return lines + [""]


def reference_section(refs: dict[str, float]) -> list[str]:
    if not refs:
        return []
    lines = ["## Model-free reference lines", "",
             "Constant over training (the classical full-reference IQA metrics' correlation with MOS on the",
             "same pairs), drawn as dotted lines in the plots of the same probe and statistic.", "",
             "| metric | value |", "|---|---:|"]
    return lines + [f"| {m} | {_fmt(v)} |" for m, v in sorted(refs.items())] + [""]


def task_section(arms: list[Arm]) -> list[str]:
    task_arms = [a for a in arms if a.task_results]
    if not task_arms:
        return []
    lines = ["## Perceptual-task results (test set)", "", "Several seeds: mean and t-interval over seeds.", "",
             "| run | metric | value |", "|---|---|---:|"]
    for a in task_arms:
        for k in sorted(a.task_results):
            mean, interval = seed_interval([r.task_results.get(k) for r in a.runs])
            lines.append(f"| {a.name} | {k} | {_with_interval(mean, interval)} |")
    return lines + [""]




def metric_tables(arms: list[Arm], reference: str) -> list[str]:
    """Markdown tables of the metrics their probes table (``MetricInfo.table``; the zero-shot
    benchmark's, CLIP_benchmark's tables) at each run's last evaluation: a row per ``row`` (one named
    ``average`` last), the runs side by side (mean over seeds), and each run minus the reference on
    the first column with its interval (as the papers' tables, with their uncertainty); then a line
    per ``footer`` metric."""
    by_name = {a.name: a for a in arms}
    finals = {a.name: final_metrics(a) for a in arms if any(r.evaluations for r in a.runs)}
    described = {m: by_name[n].describe(m) for n, f in finals.items() for m in f}
    finals = {n: f for n, f in finals.items() if any(described[k].table for k in f)}
    if not finals:
        return []
    names = list(finals)
    others = [n for n in names if n != reference] if reference in finals else []
    cell: dict[tuple[str, str, str], str] = {}  # (table, row, column) -> metric
    columns: dict[str, dict[str, int]] = {}  # table -> column -> order; tables in the order measured
    order = _measured_order(arms, described)
    for metric in order:
        info = described[metric]
        if info.table and info.row is not None and info.column:
            cell[(info.table, info.row, info.column)] = metric
            columns.setdefault(info.table, {})[info.column] = info.order
    lines = ["## Tables (last evaluation)", "",
             "The metrics their probes table, at each run's last evaluation (the zero-shot benchmark: CLIP_benchmark's",
             "metrics on its webdataset sets; averages as in `perceptlab.callbacks.probes.benchmark`).",
             "Δ: run − reference with its 95 % interval (paired bootstrap over items for one seed, t over seeds for several).", ""]
    for table, ranks in columns.items():
        labels = sorted(ranks, key=ranks.get)
        rows = sorted({r for (t, r, _) in cell if t == table}, key=lambda d: (d == "average", d))
        head = [f"{n} {label}" for n in names for label in labels]
        head += [f"Δ {labels[0]} ({n} − {reference})" for n in others]
        lines += [f"### {table}", "", "| dataset | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for row in rows:
            cells = [_fmt(finals[n].get(cell.get((table, row, label), ""))) for n in names for label in labels]
            first = cell.get((table, row, labels[0]))
            for n in others:
                value, interval = final_difference(by_name[n], by_name[reference], first) if first else (None, None)
                cells.append(_with_interval(value, interval))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    for metric in order:
        footer = described[metric].footer
        values = {n: f.get(metric) for n, f in finals.items() if f.get(metric) is not None}
        if footer and values:
            lines += [f"{footer}: " + ", ".join(f"{n} {_fmt(v)}" for n, v in values.items()), ""]
    return lines


def _measured_order(arms: list[Arm], described: dict) -> list[str]:
    """The described metrics in the order their runs stored the descriptions (the order measured)."""
    stored = [m for a in arms for r in a.runs for m in r.metric_info]
    return list(dict.fromkeys([m for m in stored if m in described] + sorted(described)))
