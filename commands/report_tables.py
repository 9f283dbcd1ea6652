"""``perceptlab report``'s Markdown tables: peaks, differences with planning, benchmarks, tasks."""
from __future__ import annotations

import math

from perceptlab.callbacks.run_record import BENCHMARK_FAMILIES, family
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
    lines = ["## Classical full-reference IQA (model-free reference lines)", "",
             "Correlation with MOS of pyiqa's classical metrics on the same pairs; constant over training,",
             "drawn as dotted lines in the iqa_fr plots.", "", "| metric | value |", "|---|---:|"]
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


