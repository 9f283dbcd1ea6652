"""A run's peak tracker recomputed after the fact from its per-item outputs (``alignment_items/``).

The suite's probes re-derive each evaluation's bootstrap replicates from the stored items with the
suite's ``bootstrap_seed`` and ``bootstrap_resamples``: the same resampled items as during the run,
so the intervals and the drop test come out as the run computed them, without the probes' data.
"""
from __future__ import annotations

from pathlib import Path

import torch

from perceptlab.callbacks import run_record
from perceptlab.callbacks.alignment import AlignmentSuite
from perceptlab.callbacks.peaks import PeakTracker
from perceptlab.core import uncertainty


def replay(suite: AlignmentSuite, run_dir: str | Path) -> PeakTracker:
    """The peak tracker recomputed post hoc from a run's per-item outputs (``alignment_items/``):
    each evaluation's replicates re-derived by the probes' own statistics over the same
    resampled items (``bootstrap_seed``, ``bootstrap_resamples``), in step order. Needs only
    the suite's probe settings, not their data. ``FileNotFoundError`` names a missing file."""
    record = run_record.read_run(run_dir)
    if not record.evaluations:
        raise FileNotFoundError(f"{Path(run_dir) / run_record.JSONL_NAME}: no evaluations to replay")
    suite.history = [dict(r) for r in record.evaluations]
    suite.metric_info = dict(record.metric_info)
    tracker = PeakTracker(suite.confidence)
    for evaluation in sorted(record.evaluations, key=lambda r: r["step"]):
        groups = run_record.grouped(record.items(evaluation))
        replicates, counts = {}, {}
        for probe in suite.probes:
            own = {g: f for g, f in groups.items() if g == probe.name or g.startswith(probe.name + "/")}
            if not own:
                continue
            items = {g: {k: torch.as_tensor(v) for k, v in f.items()} for g, f in own.items()}
            idx = {g: uncertainty.resample_indices(len(next(iter(f.values()))), suite.bootstrap_resamples,
                                                   suite.bootstrap_seed, g) for g, f in items.items()}
            reps = {k: v.float() for k, v in probe.resampled(items, idx).items()}
            replicates.update(reps)
            n_items = max(len(next(iter(f.values()))) for f in items.values())
            counts.update({k: n_items for k in reps})
        tracker.update(evaluation["epoch"], evaluation["step"], evaluation["metrics"], suite.directions(),
                       baseline=evaluation.get("trigger") == "baseline", replicates=replicates or None, items=counts,
                       reliable_from=suite.reliable_from())
    return tracker
