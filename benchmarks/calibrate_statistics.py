"""Calibration of the alignment statistics on simulated data with a known truth; prints JSON.

Two parts (``core/calibration.py`` has the simulator and documents it):

* ``drop``: for each cell of items n x evaluations T x drift x planted peak, the share of simulated
  trajectories whose drop after the peak is called significant, by the test the tracker uses
  (``uncertainty.peak_drop_test``, which includes the choice of the peak) and by the naive test it
  replaced (the paired interval at the observed peak, as if the peak had been named in advance).
  With no planted peak this is the false-positive rate (one-sided nominal 2.5 %), else the power.
* ``coverage``: for each metric family and n, the share of samples whose 95 % percentile interval
  covers the true value, and ``min_reliable_items``: the smallest n of the grid from which the
  coverage is within 93-97 % there and at every larger n (``uncertainty.MIN_RELIABLE_ITEMS``).

    python benchmarks/calibrate_statistics.py                 # the grid of docs/calibration.md
    python benchmarks/calibrate_statistics.py --quick         # seconds
    python benchmarks/calibrate_statistics.py --part coverage --reps 1000
    python benchmarks/calibrate_statistics.py --part detectable --items 400 1280 2120 --evaluations 8 30

Monte-Carlo standard errors come with every rate (``*_se``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from perceptlab.core.calibration import COVERAGE_KINDS, coverage, error_rates


def drop_grid(ns, Ts, drifts, heights, reps, resamples):
    rows = []
    for n in ns:
        for T in Ts:
            for drift in drifts:
                for height in heights:
                    start = time.perf_counter()
                    rates = error_rates(n, T, height, reps, drift=drift, resamples=resamples)
                    rows.append({"n": n, "T": T, "drift": drift, "peak": height, "reps": reps, **rates,
                                 "seconds": round(time.perf_counter() - start, 1)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def coverage_grid(kinds, ns, reps, resamples):
    rows, minimum = [], {}
    for kind in kinds:
        for n in ns:
            rows.append({"kind": kind, "n": n, "reps": reps, **coverage(kind, n, reps, resamples)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        good = [0.93 <= r["coverage"] <= 0.97 for r in rows if r["kind"] == kind]
        ok_from = next((i for i in range(len(ns)) if all(good[i:])), None)
        minimum[kind] = None if ok_from is None else ns[ok_from]
    return rows, minimum


def smallest_detectable(ns, Ts, reps, resamples, power=0.8, lo=0.005, hi=0.15, steps=5):
    """Per (n, T): the smallest planted drop found with probability >= ``power`` (bisection on
    the drop's size, ``reps`` trajectories per probe; flat-model drift 0.5)."""
    rows = []
    for n in ns:
        for T in Ts:
            a, b = lo, hi
            for _ in range(steps):
                mid = (a + b) / 2
                if error_rates(n, T, mid, reps, resamples=resamples, seed=17)["valid"] >= power:
                    b = mid
                else:
                    a = mid
            rows.append({"n": n, "T": T, "smallest_drop_80": round(b, 3), "bracket": [round(a, 3), round(b, 3)], "reps": reps})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("drop", "coverage", "detectable", "both"), default="both")
    parser.add_argument("--items", type=int, nargs="*", default=None, help="--part detectable: probe sizes")
    parser.add_argument("--evaluations", type=int, nargs="*", default=None, help="--part detectable: evaluations")
    parser.add_argument("--quick", action="store_true", help="a small grid with few replications (seconds)")
    parser.add_argument("--reps", type=int, default=None, help="simulated trajectories / samples per cell")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples per evaluation")
    ns = parser.parse_args(argv)
    out: dict = {}
    if ns.part in ("drop", "both"):
        if ns.quick:
            out["drop"] = drop_grid([200], [2, 12], [0.5], [0.0, 0.08], ns.reps or 40, ns.resamples)
        else:
            reps = ns.reps or 200
            # false positives at every size and number of evaluations; drift moved at one size;
            # power where a planner needs it (half the replications: power is far from 0 or 1)
            out["drop"] = (drop_grid([50, 200, 1000, 2000], [2, 8, 12, 30, 50], [0.5], [0.0], reps, ns.resamples)
                           + drop_grid([1000], [12, 50], [0.25, 1.0], [0.0], reps, ns.resamples)
                           + drop_grid([200, 1000, 2000], [8, 12, 30], [0.5], [0.02, 0.05, 0.08, 0.10],
                                       max(reps // 2, 1), ns.resamples))
    if ns.part == "detectable":
        out["detectable"] = smallest_detectable(ns.items or [1000], ns.evaluations or [8], ns.reps or 60, ns.resamples)
    if ns.part in ("coverage", "both"):
        sizes = [25, 50] if ns.quick else [25, 50, 100, 200, 400, 1000]
        rows, minimum = coverage_grid(COVERAGE_KINDS, sizes, ns.reps or (40 if ns.quick else 1000), ns.resamples)
        out["coverage"], out["min_reliable_items"] = rows, minimum
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
