"""The drop test and the intervals, measured on simulated data with a known truth (the fast version
of ``benchmarks/calibrate_statistics.py``; ``core/calibration.py`` documents the simulation).

Monte-Carlo tolerance: with R trajectories a rate's standard error is sqrt(p(1 - p) / R); at the
nominal 2.5 % and R = 200 that is 1.1 points, so "at most 5 %" is 2.3 standard errors above nominal
(the benchmark's grid uses more). Every draw is seeded: the tests are deterministic.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from perceptlab.core import calibration, uncertainty


@pytest.mark.parametrize("T", [2, 12, 50])
def test_flat_trajectories_are_called_dropped_at_most_at_the_nominal_rate(T):
    rates = calibration.error_rates(n=100, T=T, height=0.0, reps=200 if T < 50 else 120, resamples=200, seed=T)
    assert rates["valid"] <= 0.05
    if T == 50:
        # the test it replaces, on the same trajectories: the winner's curse inflates it
        assert rates["naive"] > 0.1 > rates["valid"]


def test_a_planted_early_peak_is_found():
    """+0.08 at n = 1,000 items and T = 12 evaluations: found at least 80 % of the time."""
    rates = calibration.error_rates(n=1000, T=12, height=0.08, reps=50, resamples=200, seed=7)
    assert rates["valid"] >= 0.8


def test_peak_drop_test_on_constructed_values():
    # two evaluations: no selection, the interval is the paired percentile interval of peak - final
    reps = torch.stack([torch.linspace(0.6, 0.8, 101), torch.linspace(0.5, 0.6, 101)])
    test = uncertainty.peak_drop_test([0.7, 0.55], reps)
    assert test.drop == pytest.approx(0.15) and test.peak == 0 and test.significant is True
    assert 0 < test.interval[0] < 0.15 < test.interval[1] and test.p < 0.025
    # the final evaluation is the best: no drop, the largest-drop interval starts at zero
    flat = uncertainty.peak_drop_test([0.55, 0.7], reps.flip(0))
    assert flat.drop == 0 and flat.interval[0] == 0 and flat.significant is False


def test_seed_drop_test_holds_its_rate_and_finds_a_consistent_drop():
    g = torch.Generator().manual_seed(0)
    false = sum(bool(uncertainty.seed_drop_test(torch.randn(5, 8, generator=g)).significant) for _ in range(400))
    assert false / 400 <= 0.05
    drop = torch.tensor([0, 3, 2, 1, 0, 0, 0, 0.0]) + 0.1 * torch.randn(5, 8, generator=g)
    test = uncertainty.seed_drop_test(drop)
    assert test.significant and test.peak == 1 and test.interval[0] > 1


@pytest.mark.parametrize("kind,n", [("mean", 100), ("srcc", 50), ("ratio", 100)])
def test_per_item_intervals_cover_the_truth(kind, n):
    result = calibration.coverage(kind, n, reps=400, resamples=200, seed=1)
    assert 0.93 <= result["coverage"] <= 0.97, result


def test_planning_numbers_match_the_textbook():
    # paired t-test, two-sided 5 %, 80 % power: d = 0.5 needs 34 pairs, d = 1 needs 10 (Cohen 1988)
    assert uncertainty.seeds_for_power(0.5, 1.0) == 34
    assert uncertainty.seeds_for_power(1.0, 1.0) == 10
    resolvable = uncertainty.resolvable_difference(1.0, 10)
    assert 0.9 < resolvable <= 1.0 and uncertainty.seeds_for_power(resolvable, 1.0) == 10


def test_interval_notes_mark_small_and_degenerate_intervals():
    needs = uncertainty.MIN_RELIABLE_ITEMS
    assert uncertainty.interval_note([1.0, 1.0], 1280, needs["ratio"]).startswith("degenerate")
    small = needs["relative_drop"] - 1
    assert needs["plcc"] > needs["srcc"]  # measured: PLCC undercovers longer
    assert uncertainty.interval_note([0.1, 0.2], small, needs["relative_drop"]).startswith("unreliable")
    assert uncertainty.interval_note([0.1, 0.2], 5000, needs["mean"]) is None
    # a collapsed classifier's shape bias at the peak, 1.000 [1.000, 1.000], is marked though the final is fine
    assert uncertainty.summary_note([1.0, 1.0], [0.19, 0.41], 384, needs["ratio"]).startswith("at the peak, degenerate")


def test_control_command_finds_a_planted_peak_and_writes_a_run_record(tmp_path):
    from perceptlab.callbacks.run_record import read_run
    from perceptlab.commands.control import control

    result = control(str(tmp_path / "run"), peak=0.1, items=1000, evaluations=8, resamples=300, seed=3, repeats=1)
    run = read_run(tmp_path / "run")
    summary = run.summary["control/2afc"]
    assert summary == result["summary"] and summary["drop_significant"] is True
    assert [e["step"] for e in run.evaluations] == [25 * t for t in range(8)]
    steps, reps = run.trajectory_replicates("control/2afc")
    assert reps.shape == (8, 300)
    # the record reads back to the same verdict
    again = uncertainty.peak_drop_test([e["metrics"]["control/2afc"] for e in run.evaluations], reps)
    assert again.interval == pytest.approx(summary["drop_ci"]) and math.isclose(again.p, summary["drop_p"])
    items = run.items(run.evaluations[2])
    assert items["control/correct"].mean() == pytest.approx(run.evaluations[2]["metrics"]["control/2afc"])


def test_the_seed_level_detectable_drop_is_found_at_least_80_percent_of_the_time():
    """seed_drop_detectable's drop, planted at one step of 8 over 5 seeds whose per-seed drops
    spread with standard deviation 1, is found by seed_drop_test 80 % of the time or more (the
    other steps can only add), and a quarter of it rarely."""
    g = torch.Generator().manual_seed(11)
    size = uncertainty.seed_drop_detectable(1.0, seeds=5, evaluations=8)

    def found(height: float, reps: int = 300) -> float:
        bump = torch.zeros(8)
        bump[2] = height
        hits = 0
        for _ in range(reps):
            x = bump + torch.randn(5, 8, generator=g) / math.sqrt(2)  # per-seed drop spread: 1
            hits += bool(uncertainty.seed_drop_test(x).significant)
        return hits / reps

    assert 0.78 <= found(size) <= 0.95 and found(size / 4) < 0.2


def test_control_as_the_readme_tour_runs_it_states_the_power_with_its_interval(tmp_path, capsys):
    """`perceptlab control --out DIR --peak 0.08` (the README's line) reports how often the planted
    drop is found over its default 100 draws, with the rate's interval, and one draw's verdict beside
    it -- not one draw's verdict alone, which misses an 85 %-power peak one time in seven."""
    from perceptlab.commands.control import main  # what `perceptlab control ...` calls with its arguments

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "perceptlab control --out runs/control --peak 0.08 " in readme
    result = main(["--out", str(tmp_path / "control"), "--peak", "0.08"])
    out = capsys.readouterr().out
    assert result["repeats"] == 100 and result["rate"] == result["found"] / 100
    low, high = result["rate_ci"]
    assert low <= result["rate"] <= high and 0.6 < low and high - low < 0.25  # the instrument sees the peak
    assert f"found in {result['found']} of 100 draws" in out and "Clopper-Pearson" in out
    assert "one draw (seed 0" in out and ("not significant" in out or ": significant" in out)


def test_the_power_interval_covers_the_true_rate_at_least_95_percent_of_the_time():
    """The exact coverage of control's rate interval, summed over every count a binomial draw can
    give (no Monte Carlo error), is at least 95 % at every true rate on a grid."""
    from scipy.stats import binom

    from perceptlab.commands.control import rate_interval

    n = 100
    intervals = [rate_interval(k, n) for k in range(n + 1)]
    for p in [0.01, 0.025, 0.05, 0.2, 0.5, 0.77, 0.85, 0.95, 0.99]:
        coverage = sum(binom.pmf(k, n, p) for k, (lo, hi) in enumerate(intervals) if lo <= p <= hi)
        assert coverage >= 0.95, (p, coverage)
