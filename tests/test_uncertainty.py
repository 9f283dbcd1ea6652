"""Bootstrap intervals: coverage on data with a known population value, vectorised statistics equal
to the plain ones on each resample, every probe's replicates equal to its own score on the
resampled items, and the paired peak-minus-final test on constructed trajectories."""
from __future__ import annotations

import math

import pytest
import torch

from perceptlab.callbacks.peaks import PeakTracker
from perceptlab.core import scores
from perceptlab.core import uncertainty as U

DRAWS = 400  # seeded data sets per coverage check; 93-97 % is about +-1.8 binomial standard errors at 95 %


def two_afc_sample(n: int, g: torch.Generator) -> torch.Tensor:
    """Per-triplet 2AFC of a model that agrees with the majority with probability 0.8, with the
    share of people preferring the right image ``p ~ U(0, 1)``: population 2AFC =
    0.8 E[max(p, 1-p)] + 0.2 E[min(p, 1-p)] = 0.8 x 0.75 + 0.2 x 0.25 = 0.65."""
    p = torch.rand(n, generator=g, dtype=torch.float64)
    picks_right = (p > 0.5) == (torch.rand(n, generator=g, dtype=torch.float64) < 0.8)
    d0 = picks_right.double()  # picks right: the right image is closer (d1 < d0)
    return scores.two_afc_per_item(d0, 1 - d0, p)


def test_2afc_interval_covers_the_population_value_in_93_to_97_percent_of_draws():
    covered = 0
    for draw in range(DRAWS):
        per_item = two_afc_sample(200, torch.Generator().manual_seed(draw))
        low, high = U.percentile_interval(U.mean(per_item, U.resample_indices(200, seed=draw)))
        covered += low <= 0.65 <= high
    assert 0.93 <= covered / DRAWS <= 0.97, covered / DRAWS


def test_spearman_interval_covers_the_population_value_in_93_to_97_percent_of_draws():
    r = 0.5
    truth = 6 / math.pi * math.asin(r / 2)  # Spearman's rho of a bivariate normal with Pearson r
    covered = 0
    for draw in range(DRAWS):
        g = torch.Generator().manual_seed(draw)
        x = torch.randn(200, generator=g, dtype=torch.float64)
        y = r * x + math.sqrt(1 - r * r) * torch.randn(200, generator=g, dtype=torch.float64)
        low, high = U.percentile_interval(U.spearman(x, y, U.resample_indices(200, seed=draw)))
        covered += low <= truth <= high
    assert 0.93 <= covered / DRAWS <= 0.97, covered / DRAWS


def test_resample_indices_are_fixed_by_seed_key_and_size_and_leave_the_global_generator_alone():
    state = torch.get_rng_state()
    a = U.resample_indices(50, 20, seed=3, key="nights")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, U.resample_indices(50, 20, seed=3, key="nights"))
    assert not torch.equal(a, U.resample_indices(50, 20, seed=3, key="iqa_fr/tid2013"))
    assert not torch.equal(a, U.resample_indices(50, 20, seed=4, key="nights"))
    assert a.shape == (20, 50) and int(a.min()) >= 0 and int(a.max()) < 50


def test_vectorised_statistics_equal_the_plain_ones_on_every_resample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, generator=g, dtype=torch.float64)
    y = 0.4 * x + torch.randn(60, generator=g, dtype=torch.float64)
    x[::7] = x[0]  # ties in the data, besides the copies a resample makes
    y[::5] = 0.25
    idx = U.resample_indices(60, 25, seed=1)
    rho, r, tau = U.spearman(x, y, idx), U.pearson(x, y, idx), U.kendall_b(x, y, idx, block=16)
    for b in range(25):
        xb, yb = x[idx[b]], y[idx[b]]
        assert rho[b].item() == pytest.approx(scores.srcc(xb, yb), abs=1e-7)  # torchmetrics rounds through float32
        assert r[b].item() == pytest.approx(scores.plcc(xb, yb), abs=1e-7)  # torchmetrics rounds through float32
        assert tau[b].item() == pytest.approx(scores.krcc(xb, yb), abs=1e-7)  # torchmetrics rounds through float32
    assert torch.allclose(U.mean(x, idx), x[idx].mean(dim=1))


def test_percentile_interval_is_the_quantiles_and_none_when_mostly_undefined():
    reps = torch.arange(1001, dtype=torch.float64)
    assert U.percentile_interval(reps) == pytest.approx([25.0, 975.0])
    assert U.percentile_interval(torch.tensor([1.0, math.nan, math.nan])) is None
    assert U.significant([0.01, 0.2]) and not U.significant([-0.01, 0.2]) and not U.significant(None)


# ---------------------------------------------------------------------------------------- probes
def test_every_probes_replicates_equal_its_own_score_on_the_resampled_items(tiny_world):
    """Every shipped probe (the registry, through the toy suite), measured on the tiny world with a
    small CLIP: replicate ``b`` of each metric equals the probe's plain score on the items of resample ``b``."""
    from conftest import toy_suite_probes

    from perceptlab.callbacks.probes.base import ProbeContext
    from perceptlab.core.backbone import CLIPBackbone

    torch.manual_seed(0)
    backbone = CLIPBackbone("perceptlab-vit-tiny-64").eval()
    checked = []
    for probe in toy_suite_probes(max_items=24, templates=["a photo of a {}."]):
        probe.data_root, probe.num_workers = str(tiny_world), 1
        probe.prepare(backbone)
        with torch.inference_mode():
            items = probe.measure(ProbeContext(backbone))
        idx = {group: U.resample_indices(len(next(iter(f.values()))), 12, seed=2, key=group) for group, f in items.items()}
        replicates = probe.resampled(items, idx)
        assert set(replicates) == set(probe.score(items)), probe.name
        for b in range(12):
            resampled = {group: {k: v[idx[group][b]] for k, v in fields.items()} for group, fields in items.items()}
            for metric, value in probe.score(resampled).items():
                got = replicates[metric][b].item()
                assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-6), (metric, b)
        checked.append(type(probe).__name__)
    assert len(checked) == len(set(checked)) >= 6


# ------------------------------------------------------------------------------ peak significance
def trajectory(shifts: list[float], n: int = 300, seed: int = 0) -> list[torch.Tensor]:
    """Per-item 2AFC-like scores at successive evaluations: item difficulty + the evaluation's shift
    + item-level noise, the same items every time."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, generator=g, dtype=torch.float64) * 0.6 + 0.2
    return [(base + s + 0.15 * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0, 1) for s in shifts]


def track(evaluations: list[torch.Tensor]) -> PeakTracker:
    tracker = PeakTracker()
    idx = U.resample_indices(evaluations[0].numel(), seed=0, key="nights")
    for step, per_item in enumerate(evaluations):
        tracker.update(step, step * 10, {"nights/2afc": float(per_item.mean())}, {"nights/2afc": "max"},
                       baseline=step == 0, replicates={"nights/2afc": U.mean(per_item, idx)})
    return tracker


def test_a_real_early_peak_is_significant_and_one_inside_the_noise_is_not():
    real = track(trajectory([0.0, 0.08, 0.05, 0.02, 0.0]))
    s = real.summary()["nights/2afc"]
    assert s["peak_step"] == 10 and s["drop"] > 0.05
    assert s["drop_significant"] is True and 0 < s["drop_ci"][0] < s["drop"] < s["drop_ci"][1]
    assert s["peak_ci"][0] < s["peak"] < s["peak_ci"][1]
    # what training did, final minus baseline, with its paired interval (0.0 shift: covers zero)
    assert s["change"] == pytest.approx(s["final"] - s["baseline"])
    assert s["change_ci"][0] < s["change"] < s["change_ci"][1] and s["change_ci"][0] < 0 < s["change_ci"][1]

    noise = track(trajectory([0.0, 0.004, 0.002, 0.001, 0.0]))
    s = noise.summary()["nights/2afc"]
    assert s["drop"] > 0  # the best evaluation is still higher than the last...
    assert s["drop_significant"] is False and s["drop_ci"][0] == 0  # ...but not beyond noise (the largest drop is >= 0)


def test_a_new_peak_is_marked_beyond_noise_only_when_its_paired_gain_clears_zero():
    tracker = PeakTracker()
    idx = U.resample_indices(300, seed=0, key="nights")
    for step, per_item in enumerate(trajectory([0.0, 0.003, 0.08])):
        tracker.update(step, step, {"m": float(per_item.mean())}, {"m": "max"}, replicates={"m": U.mean(per_item, idx)})
        if step == 1:
            assert tracker.surpassed == ["m"] and tracker.beyond_noise == []  # a new best, within noise
    assert tracker.surpassed == ["m"] and tracker.beyond_noise == ["m"]


def test_the_replicates_survive_a_checkpoint_round_trip():
    evaluations = trajectory([0.0, 0.08, 0.0])
    tracker = track(evaluations)
    history = [{"epoch": i, "step": i * 10, "trigger": "baseline" if i == 0 else "epoch",
                "metrics": {"nights/2afc": float(e.mean())}} for i, e in enumerate(evaluations)]
    restored = PeakTracker.from_history(history, {"nights/2afc": "max"}, tracker.replicates_state())
    before, after = tracker.summary()["nights/2afc"], restored.summary()["nights/2afc"]
    assert after["drop_significant"] is True
    assert after["drop_ci"] == pytest.approx(before["drop_ci"], abs=1e-6)  # float32 in the checkpoint
    assert after["change_ci"] == pytest.approx(before["change_ci"], abs=1e-6)
