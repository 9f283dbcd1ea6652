"""``perceptlab control``: a positive (or negative) control of the early-peak machinery.

Simulates per-item outcomes of a probe at ``--evaluations`` evaluations with a known, planted
early peak of ``--peak`` (0: a flat model), feeds them through the same pipeline as a training
(bootstrap replicates over the same resampled items at every evaluation, ``PeakTracker``, the run
record's writers) on ``--repeats`` fresh draws (100 by default) and prints how often the drop was
found -- the power (or, with ``--peak 0``, the false-positive rate) for those items and
evaluations, with its exact binomial (Clopper-Pearson) 95 % interval -- and, beside it, the first
draw's own verdict. One draw alone says little: a test with 85 % power misses the peak in one
draw of seven. The first draw's run directory reads like a real run: ``perceptlab report DIR
--out DIR/report`` draws it. The simulation is ``perceptlab.core.calibration``'s.

    perceptlab control --out runs/control --peak 0.08 --items 1000 --evaluations 12
    perceptlab control --out runs/control_flat --peak 0 --items 2120 --evaluations 30
"""
from __future__ import annotations

from pathlib import Path


def control(out: str, peak: float = 0.08, items: int = 1000, evaluations: int = 12, drift: float = 0.5,
            resamples: int = 1000, seed: int = 0, repeats: int = 100, metric: str = "control/2afc") -> dict:
    """Replay the peak pipeline on a simulated trajectory with a planted early peak; print the verdict.

    Args:
        out: the run directory to write (alignment.jsonl, summary, items, bootstrap).
        peak: the planted drop, peak minus final, in metric units (0: a flat trajectory).
        items: items of the simulated probe.
        evaluations: evaluations over the run (the first is the baseline).
        drift: how much each item's difficulty moves between evaluations (standard deviation).
        resamples: bootstrap resamples per evaluation.
        seed: seed of the first draw (draw r uses seed + r).
        repeats: draws to run; the share in which the drop is found is the power (the
            false-positive rate for a peak of 0), stated with its 95 % interval.
        metric: the metric's name in the run record.

    Returns ``summary`` (the first draw's peak summary), ``found``, ``repeats``, ``rate`` and
    ``rate_ci`` (Clopper-Pearson 95 %).
    """
    from perceptlab.callbacks import run_record
    from perceptlab.callbacks.peaks import PeakTracker
    from perceptlab.core.calibration import simulate
    from perceptlab.core.uncertainty import percentile_interval

    if items < 2 or evaluations < 2 or repeats < 1 or not 0 <= peak < 0.15:
        raise ValueError("control needs items >= 2, evaluations >= 2, repeats >= 1 and 0 <= peak < 0.15 "
                         f"(got items={items}, evaluations={evaluations}, repeats={repeats}, peak={peak})")
    found = 0
    for r in range(repeats):
        sim = simulate(items, evaluations, peak, drift=drift, resamples=resamples, seed=seed + r, bootstrap_seed=0)
        tracker, history = PeakTracker(), []
        run_dir = Path(out)
        for t in range(evaluations):
            step = 25 * t
            record = {"epoch": 0 if t else -1, "step": step, "trigger": "baseline" if t == 0 else "step",
                      "metrics": {metric: float(sim.values[t])},
                      "ci": {metric: percentile_interval(sim.replicates[t])}, "seconds": {}}
            if r == 0:
                record["items"] = run_record.write_items(run_dir, step, {f"{metric.rsplit('/', 1)[0]}/correct":
                                                                         sim.outcomes[t].numpy()})
            history.append(record)
            tracker.update(record["epoch"], step, record["metrics"], {metric: "max"}, baseline=t == 0,
                           replicates={metric: sim.replicates[t]}, items={metric: items})
        s = tracker.summary()[metric]
        found += bool(s["drop_significant"])
        if r == 0:
            run_record.write_evaluations(run_dir, history)
            run_record.write_summary(run_dir, tracker.summary())
            run_record.write_bootstrap(run_dir, {k: (st, reps.numpy()) for k, (st, reps) in tracker.trajectories().items()},
                                       tracker.marks(), 0)
            first = s
    rate, (low, high) = found / repeats, rate_interval(found, repeats)
    truth = f"planted drop {peak:g}" if peak else "flat (no drop)"
    what = "power" if peak else "false-positive rate (nominal 2.5 %)"
    print(f"{metric}: {truth}; {items} items, {evaluations} evaluations, {repeats} draw{'s' * (repeats > 1)}")
    print(f"  {what}: found in {found} of {repeats} draws = {rate:.1%} [{low:.1%}, {high:.1%}] "
          "(95 %, Clopper-Pearson)")
    print(f"  one draw (seed {seed}, its run record in {run_dir}): peak {first['peak']:.4f} at step "
          f"{first['peak_step']}, final {first['final']:.4f}, drop {first['drop']:.4f} "
          f"{[round(x, 4) for x in first['drop_ci']]} p={first['drop_p']:.4f}: "
          f"{'significant' if first['drop_significant'] else 'not significant'}")
    return {"summary": first, "found": found, "repeats": repeats, "rate": rate, "rate_ci": [low, high]}


def rate_interval(found: int, repeats: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate of ``found`` in ``repeats`` (scipy's exact binomial
    interval: its coverage is at least ``confidence`` for every true rate)."""
    from scipy.stats import binomtest

    ci = binomtest(found, repeats).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def main(argv: list[str] | None = None) -> dict:
    from perceptlab.commands.cli import run_function

    return run_function(control, argv, prog="perceptlab control")
