"""Experiment trackers beside TensorBoard (``--trackers``, ``experiments/loggers/*.yaml``): a toy run
with the alignment suite logs its metrics, their intervals and the peak summary to CSV and MLflow."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from perceptlab.callbacks.run_record import SUMMARY_NAME, read_evaluations

REPO = Path(__file__).resolve().parents[1]
METRIC = "nights/2afc"


def suite_config(tmp_path: Path, world: Path) -> Path:
    """The shipped suite with its NIGHTS probe only, every step (a run of seconds)."""
    cfg = yaml.safe_load((REPO / "experiments/toy/alignment_suite.yaml").read_text())
    suite = cfg["trainer"]["callbacks"][0]["init_args"]
    suite.update(data_root=str(world), tensorboard_figure=False, num_workers=0, every_n_steps=1,
                 every_n_epochs=None, every_n_steps_until=None, then_every_n_steps=None)
    suite["probes"] = [p for p in suite["probes"] if p["class_path"].endswith("NightsProbe")]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_csv_and_mlflow_get_the_metrics_intervals_and_peak_summary(tiny_world, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from perceptlab.commands.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    argv = sys.argv
    try:
        main(["fit", "--config", str(REPO / "experiments/toy/pi_nights.yaml"), "--config", str(suite_config(tmp_path, tiny_world)),
              "--config", str(REPO / "experiments/loggers/csv.yaml"), "--trackers", "[csv, mlflow]",
              f"--data.init_args.root={tiny_world / 'nights'}", "--data.init_args.loader.num_workers=0",
              "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
              f"--runs_dir={runs}"])
    finally:
        sys.argv = argv
    run = runs / "pi_nights" / "version_0"
    history = read_evaluations(run)
    summary = json.loads((run / SUMMARY_NAME).read_text())[METRIC]
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    values = [r["metrics"][METRIC] for r in history]
    lows = [r["ci"][METRIC][0] for r in history]

    # CSV: metrics.csv in the run directory itself, beside the TensorBoard events
    table = pd.read_csv(run / "metrics.csv")
    logged = table.dropna(subset=[f"alignment/{METRIC}"])
    assert logged["step"].tolist() == [0, 1, 2, 3]
    assert logged[f"alignment/{METRIC}"].tolist() == pytest.approx(values)
    assert logged[f"alignment_ci/{METRIC}/low"].tolist() == pytest.approx(lows)
    last = logged.iloc[-1]
    for field in ("peak", "peak_step", "final", "drop", "drop_p"):
        assert last[f"alignment_peak/{METRIC}/{field}"] == pytest.approx(summary[field]), field
    assert last[f"alignment_peak/{METRIC}/drop_significant"] == float(summary["drop_significant"])

    # MLflow: experiment pi_nights, run version_0, in the local store runs/mlruns
    client = MlflowClient((runs / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("pi_nights")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "version_0"
    series = sorted(client.get_metric_history(found.info.run_id, f"alignment/{METRIC}"), key=lambda m: m.step)
    assert [m.step for m in series] == [0, 1, 2, 3] and [m.value for m in series] == pytest.approx(values)
    assert found.data.metrics[f"alignment_peak/{METRIC}/drop_p"] == pytest.approx(summary["drop_p"])
    assert found.data.metrics[f"alignment_ci/{METRIC}/low"] == pytest.approx(lows[-1])


def test_an_unknown_tracker_is_named_before_any_work(capsys):
    from perceptlab.commands.cli import main

    argv = sys.argv
    try:
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", str(REPO / "experiments/toy/pi_nights.yaml"), "--trackers", "[tensorbored]"])
    finally:
        sys.argv = argv
    assert info.value.code == 2 and "tensorbored" in capsys.readouterr().err
