"""What a metric is: the probes' descriptions, their round trip through the run record, the rules
for runs written before them, and the TensorBoard layout made from them (the round trip through a
real suite run is in tests/test_alignment.py)."""
from __future__ import annotations

import pytest

from perceptlab.callbacks import run_record
from perceptlab.callbacks.peaks import custom_scalars_layout, interval_tags
from perceptlab.callbacks.probes.iqa_fr import FullReferenceIQAProbe
from perceptlab.callbacks.probes.metric_info import MetricInfo, legacy_info
from perceptlab.callbacks.probes.nights import NightsProbe
from perceptlab.callbacks.probes.noise import NoiseRobustnessProbe
from perceptlab.callbacks.probes.shape_bias import ShapeBiasProbe
from perceptlab.core.uncertainty import MIN_RELIABLE_ITEMS

METRICS = ["nights/2afc", "iqa_fr/tid2013/srcc", "iqa_fr/tid2013/plcc", "iqa_fr/tid2013/krcc",
           "iqa_fr/tid2013/psnr/srcc", "iqa_fr/tid2013/ssim/srcc", "iqa_fr/tid2013/psnr/plcc",
           "shape_bias/cue_conflict", "shape_bias/cue_conflict/shape_acc", "shape_bias/cue_conflict/texture_acc",
           "noise/classification/drop", "noise/classification/drop@sigma=0.1", "noise/classification/acc@sigma=0"]
PROBES = [NightsProbe("nights"), FullReferenceIQAProbe("tid2013"), ShapeBiasProbe("cue_conflict"),
          NoiseRobustnessProbe("classification")]


def described() -> dict[str, MetricInfo]:
    owner = {m: next(p for p in PROBES if m == p.name or m.startswith(p.name + "/")) for m in METRICS}
    return {m: owner[m].describe(m) for m in METRICS}


def test_each_probe_describes_its_metrics_and_the_descriptions_survive_the_run_record(tmp_path):
    info = described()
    assert [m for m, i in info.items() if i.headline] == [
        "nights/2afc", "iqa_fr/tid2013/srcc", "shape_bias/cue_conflict", "noise/classification/drop"]
    assert [m for m, i in info.items() if i.reference] == [
        "iqa_fr/tid2013/psnr/srcc", "iqa_fr/tid2013/ssim/srcc", "iqa_fr/tid2013/psnr/plcc"]
    assert [m for m, i in info.items() if i.direction == "min"] == [
        "shape_bias/cue_conflict/texture_acc", "noise/classification/drop", "noise/classification/drop@sigma=0.1"]
    assert info["iqa_fr/tid2013/plcc"].reliable_from == MIN_RELIABLE_ITEMS["plcc"]
    assert info["shape_bias/cue_conflict"].reliable_from == MIN_RELIABLE_ITEMS["ratio"]
    assert info["noise/classification/drop"].reliable_from == MIN_RELIABLE_ITEMS["relative_drop"]
    assert info["noise/classification/acc@sigma=0"].reliable_from == MIN_RELIABLE_ITEMS["mean"]
    assert MetricInfo("p", "f", statistic="my_statistic", min_items=70).reliable_from == 70
    with pytest.raises(ValueError, match="direction"):
        MetricInfo("p", "f", direction="up")

    run_record.write_metric_info(tmp_path, info)
    run_record.write_evaluations(tmp_path, [{"epoch": 0, "step": 0, "metrics": dict.fromkeys(METRICS, 0.5)}])
    back = run_record.read_run(tmp_path)
    assert back.metric_info == info and list(back.metric_info) == METRICS  # exact, in the order measured
    (tmp_path / run_record.METRICS_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match=run_record.METRICS_NAME):
        run_record.read_run(tmp_path)


def test_a_run_written_before_the_descriptions_is_read_by_the_rules_of_its_time():
    """A run directory without alignment_metrics.json: the shipped probes' descriptions equal the
    name rules they replaced, field for field that the report and the intervals use."""
    info = described()
    for metric in METRICS:
        old = legacy_info(metric, [p.name for p in PROBES], METRICS)
        new = info[metric]
        assert (old.probe, old.family, old.direction, old.statistic, old.headline, old.reference, old.chart_name,
                old.panel_name) == (new.probe, new.family, new.direction, new.statistic, new.headline, new.reference,
                                    new.chart_name, new.panel_name), metric
    assert legacy_info("zeroshot/toy/acc1").table == "Zero-shot classification"
    assert legacy_info("zeroshot/toy/acc5").plot is False


def test_one_chart_per_headline_metric_with_its_band_and_no_card_for_a_reference_line():
    info = described()
    headlines = [m for m, i in info.items() if i.headline]
    layout = custom_scalars_layout(info, "alignment", intervals=METRICS)
    assert set(layout) == {f"alignment: {f}" for f in ("nights", "iqa_fr", "shape_bias", "noise")}
    charts = {name: chart for category in layout.values() for name, chart in category.items()}
    for metric in headlines:
        assert charts[metric] == ["Margin", [f"alignment/{metric}", *interval_tags(metric)]]
    # correlations each on their own; a probe's other metrics together; model-free constants nowhere
    assert charts["iqa_fr/tid2013/plcc"] == ["Multiline", [r"^alignment/iqa_fr/tid2013/plcc$"]]
    assert charts["noise/classification"][1] == [r"^alignment/noise/classification/acc@sigma=0$",
                                                         r"^alignment/noise/classification/drop@sigma=0\.1$"]
    tags = [t for chart in charts.values() for t in chart[1]]
    assert not any("psnr" in t or "ssim" in t for t in tags)
    drawn = sum(len(chart[1]) for chart in charts.values() if chart[0] == "Multiline") + len(headlines)
    assert drawn == len(METRICS) - sum(i.reference for i in info.values())
    assert run_record.items_path(125) == "alignment_items/step=0000125.npz"
