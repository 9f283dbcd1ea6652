"""The run record's metric-name rules and TensorBoard layout (the round trip through a real suite
run is in tests/test_alignment.py)."""
from __future__ import annotations

from perceptlab.callbacks import run_record
from perceptlab.callbacks.peaks import custom_scalars_layout, interval_tags

METRICS = ["nights/2afc", "iqa_fr/tid2013/srcc", "iqa_fr/tid2013/plcc", "iqa_fr/tid2013/krcc",
           "iqa_fr/tid2013/psnr/srcc", "iqa_fr/tid2013/ssim/srcc", "iqa_fr/tid2013/psnr/plcc",
           "shape_bias/cue_conflict", "shape_bias/cue_conflict/shape_acc", "noise/classification/drop",
           "noise/classification/acc@sigma=0"]
PROBES = ["nights", "iqa_fr/tid2013", "shape_bias/cue_conflict", "noise/classification"]


def test_metric_name_rules():
    assert run_record.family("iqa_fr/tid2013/srcc") == "iqa_fr"
    assert run_record.is_reference_line("iqa_fr/tid2013/psnr/srcc") and not run_record.is_reference_line("iqa_fr/tid2013/srcc")
    assert [run_record.headline_metric(p, METRICS) for p in PROBES] == [
        "nights/2afc", "iqa_fr/tid2013/srcc", "shape_bias/cue_conflict", "noise/classification/drop"]
    assert run_record.interval_kind("iqa_fr/tid2013/plcc") == "plcc"
    assert run_record.interval_kind("shape_bias/cue_conflict") == "shape_bias"
    assert run_record.interval_kind("shape_bias/cue_conflict/shape_acc") == "mean"
    assert run_record.interval_kind("noise/classification/drop") == "noise_drop"
    assert run_record.items_path(125) == "alignment_items/step=0000125.npz"


def test_one_chart_per_headline_metric_with_its_band_and_reference_lines_apart():
    headlines = [run_record.headline_metric(p, METRICS) for p in PROBES]
    layout = custom_scalars_layout(METRICS, PROBES, "alignment", headlines, intervals=METRICS)
    charts = {name: chart for category in layout.values() for name, chart in category.items()}
    for metric in headlines:
        assert charts[metric] == ["Margin", [f"alignment/{metric}", *interval_tags(metric)]]
    # correlations each on their own, reference lines by data set and statistic, never mixed
    assert charts["iqa_fr/tid2013/plcc"] == ["Multiline", [r"^alignment/iqa_fr/tid2013/plcc$"]]
    reference = charts["iqa_fr/tid2013/reference/srcc"][1]
    assert reference == [r"^alignment/iqa_fr/tid2013/psnr/srcc$", r"^alignment/iqa_fr/tid2013/ssim/srcc$"]
    assert max(len(chart[1]) for chart in charts.values()) <= 3
    assert sum(len(chart[1]) for chart in charts.values() if chart[0] == "Multiline") + len(headlines) == len(METRICS)
