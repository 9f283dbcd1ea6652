"""``perceptlab evaluate``: any model or checkpoint series through the alignment suite; a post-hoc
record of a checkpoint equals the live one training wrote for the same weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import pairs_override

from perceptlab.commands.cli import main as perceptlab
from perceptlab.commands.export import export

REPO = Path(__file__).resolve().parents[1]


def suite_config(tmp_path: Path, world: Path) -> Path:
    """The toy suite reduced to two vision probes (fast), reading the tiny world."""
    cfg = yaml.safe_load((REPO / "experiments/toy/alignment_suite.yaml").read_text())
    suite = cfg["trainer"]["callbacks"][0]["init_args"]
    suite.update(data_root=str(world), every_n_steps=None, tensorboard_figure=False, num_workers=0)
    suite["probes"] = suite["probes"][:2]  # NIGHTS 2AFC, TID2013 full-reference IQA
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "alignment.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """A toy stage-1 run with the suite: its last.ckpt, visual.pt and what the suite wrote live."""
    tmp = tmp_path_factory.mktemp("evaluate")
    suite = suite_config(tmp, tiny_world)
    perceptlab(["fit", "--config", str(REPO / "experiments/toy/pi_nights.yaml"), "--config", str(suite),
                f"--data.init_args.root={tiny_world / 'nights'}", f"--runs_dir={tmp / 'runs'}", "--experiment=live",
                "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_progress_bar=false", "--data.init_args.loader.num_workers=0"])
    return tmp, suite, tmp / "runs" / "live" / "version_0"


def test_a_checkpoint_measured_after_the_fact_equals_the_live_record(trained):
    tmp, suite, live = trained
    end = records(live)[-1]
    assert end["step"] == 3  # the last evaluation, at the end of training
    out = tmp / "posthoc"
    perceptlab(["evaluate", str(live / "checkpoints" / "last.ckpt"), "--config", str(suite),
                "--out", str(out), "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    (got,) = records(out)
    assert got["model"] == str(live / "checkpoints" / "last.ckpt") and got["step"] == 3 and got["trigger"] == "model"
    assert got["metrics"] == end["metrics"]  # the same weights, the same numbers as live
    summary = json.loads((out / "alignment_summary.json").read_text())
    assert summary["nights/2afc"]["peak_step"] == 3
    assert list(out.glob("events.out.tfevents.*"))
    # its visual.pt: written when fit ended, so at the run's last step (fit_end.json)
    perceptlab(["evaluate", str(live / "visual.pt"), "--config", str(suite), "--out", str(tmp / "visual"),
                "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    (visual,) = records(tmp / "visual")
    assert visual["step"] == 3 and visual["metrics"] == end["metrics"]


def test_a_growing_series_is_ordered_by_step_and_only_new_models_are_measured(trained, tmp_path):
    _, suite, live = trained
    folder = tmp_path / "ckpts"
    folder.mkdir()
    ckpt = torch.load(live / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for step, name in ((30, "a"), (10, "b"), (20, "c")):  # file names in another order than the steps
        torch.manual_seed(step)
        ckpt["global_step"] = step
        ckpt["state_dict"] = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                              for k, v in ckpt["state_dict"].items()}
        torch.save(ckpt, folder / f"{name}.ckpt")
    args = ["--config", str(suite), "--runs_dir", str(tmp_path / "runs"), "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false"]
    (folder / "a.ckpt").rename(tmp_path / "a.ckpt")  # the newest checkpoint is not written yet
    perceptlab(["evaluate", str(folder / "*.ckpt"), *args])
    run = tmp_path / "runs" / "evaluate" / "ckpts" / "version_0"
    first = records(run)
    assert [r["step"] for r in first] == [10, 20]
    (tmp_path / "a.ckpt").rename(folder / "a.ckpt")
    perceptlab(["evaluate", str(folder / "*.ckpt"), *args])
    again = records(run)
    assert [r["step"] for r in again] == [10, 20, 30] and again[:2] == first  # kept, not measured again
    assert [Path(r["model"]).name for r in again] == ["b.ckpt", "c.ckpt", "a.ckpt"]
    assert not (run.parent / "version_1").exists()
    # the continued series keeps every evaluation's replicates: its drop test covers all three
    steps = np.load(run / "alignment_bootstrap.npz")["nights/2afc@steps"]
    assert steps.tolist() == [10, 20, 30]
    assert json.loads((run / "alignment_summary.json").read_text())["nights/2afc"]["drop_ci"] is not None
    # perceptlab report reads the post-hoc series as it reads a training run
    perceptlab(["report", f"series={run}", "--out", str(tmp_path / "report")])
    rows = [r for r in (tmp_path / "report" / "report.md").read_text().splitlines() if r.startswith("| series | nights/2afc")]
    summary = json.loads((run / "alignment_summary.json").read_text())["nights/2afc"]
    assert len(rows) == 1 and f"| {summary['peak_step']} |" in rows[0]


def test_open_clip_files_need_an_architecture_and_bad_models_are_named_before_any_work(trained, tmp_path):
    _, suite, live = trained
    exported = export(str(live / "checkpoints" / "last.ckpt"), "open_clip", str(tmp_path / "model.pt"))
    state = torch.load(exported, weights_only=True)
    # open_clip_train's layout: epoch_N.pt with DDP's module. prefixes
    for epoch in (2, 1):
        torch.save({"epoch": epoch, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}},
                   tmp_path / f"epoch_{epoch}.pt")
    args = ["--config", str(suite), "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    with pytest.raises(ValueError, match="does not record its architecture: give --model_name"):
        perceptlab(["evaluate", str(tmp_path / "epoch_*.pt"), "--out", str(tmp_path / "x"), "--debug", *args])
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        perceptlab(["evaluate", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x"), "--debug", *args])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        perceptlab(["evaluate", str(tmp_path / "nothing_*.pt"), "--out", str(tmp_path / "x"), "--debug", *args])
    with pytest.raises(SystemExit) as exit_:  # without --debug: one line, exit 2
        perceptlab(["evaluate", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x"), *args])
    assert exit_.value.code == 2
    out = tmp_path / "oc"
    perceptlab(["evaluate", str(tmp_path / "epoch_*.pt"), "--model_name", "perceptlab-vit-tiny-64", "--out", str(out),
                *args])
    got = records(out)
    assert [(r["epoch"], Path(r["model"]).name) for r in got] == [(1, "epoch_1.pt"), (2, "epoch_2.pt")]
    end = records(live)[-1]["metrics"]
    for record in got:
        assert record["metrics"] == pytest.approx(end, abs=1e-6)
    shutil.rmtree(out)


@pytest.mark.slow
def test_two_processes_measure_what_one_does(trained, tmp_path):
    """DDP over 2 CPU processes: every process loads every model, the probes share their items. The
    one-process numbers are the record training wrote live for the same weights (which a one-process
    `evaluate` reproduces exactly: the test above)."""
    import subprocess
    import sys

    _, suite, live = trained
    one = records(live)[-1]
    out = tmp_path / "d2"
    proc = subprocess.run([sys.executable, "-m", "perceptlab", "evaluate", str(live / "checkpoints" / "last.ckpt"),
                           "--config", str(suite), "--out", str(out), "--trainer.accelerator=cpu",
                           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.enable_progress_bar=false"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (two,) = records(out)
    assert set(one["metrics"]) == set(two["metrics"])
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=1e-5), name


@pytest.mark.slow
def test_watch_measures_each_new_checkpoint_of_a_running_training_once_in_step_order(tiny_world, tmp_path, capsys):
    """`evaluate --watch RUN` beside a real toy training writing a checkpoint every step: every
    step's checkpoint is measured once, in step order, the `last.ckpt` alias never; the watcher stops
    when the training writes its end; its numbers equal a one-off `evaluate` of the same files; and
    a restarted watcher measures nothing again."""
    import os
    import re
    import subprocess
    import sys
    import time

    suite = suite_config(tmp_path, tiny_world)
    cfg = yaml.safe_load(suite.read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["probes"] = cfg["trainer"]["callbacks"][0]["init_args"]["probes"][:1]
    suite.write_text(yaml.safe_dump(cfg))  # NIGHTS only: the watcher's cost is the point, not the probes'
    every_step = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "save_last": True}})
    run = tmp_path / "runs" / "pi_nights" / "version_0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    training = subprocess.Popen(
        [sys.executable, "-m", "perceptlab", "fit", "--config", str(REPO / "experiments/toy/pi_nights.yaml"),
         f"--data.init_args.root={tiny_world / 'nights'}", f"--runs_dir={tmp_path / 'runs'}", "--trainer.max_steps=5",
         "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--data.init_args.loader.num_workers=0",
         f"--trainer.callbacks+={every_step}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    out = tmp_path / "watched"
    try:
        while not run.is_dir() and training.poll() is None:  # the watcher starts once the run exists
            time.sleep(0.2)
        start = time.perf_counter()
        perceptlab(["evaluate", "--watch", str(run), "--config", str(suite), "--out", str(out), "--poll", "0.5",
                    "--settle", "1", "--idle_timeout", "300", "--trainer.accelerator=cpu",
                    "--trainer.enable_progress_bar=false"])
        watched_seconds = time.perf_counter() - start
    finally:
        log, _ = training.communicate(timeout=600)
    assert training.returncode == 0, log[-3000:]
    assert json.loads((run / "fit_end.json").read_text())["step"] == 5
    files = sorted((run / "checkpoints").glob("epoch=*.ckpt"), key=lambda p: int(p.stem.rsplit("=", 1)[1]))
    assert [int(p.stem.rsplit("=", 1)[1]) for p in files] == [1, 2, 3, 4, 5]
    got = records(out)
    assert [r["model"] for r in got] == [str(p) for p in files]  # each once, in step order, no alias
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5] and {r["trigger"] for r in got} == {"model"}
    printed = capsys.readouterr().out
    assert "the training ended at step 5" in printed

    once = tmp_path / "once"
    start = time.perf_counter()
    perceptlab(["evaluate", str(run / "checkpoints" / "epoch=*.ckpt"), "--config", str(suite), "--out", str(once),
                "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    once_seconds = time.perf_counter() - start
    assert [r["metrics"] for r in records(once)] == [r["metrics"] for r in got]
    with capsys.disabled():  # the watcher's overhead, for the record (not asserted)
        batches = [float(s) for s in re.findall(r"measured in ([\d.]+) s", printed)]
        print(f"\nwatch: {watched_seconds:.1f} s for 5 checkpoints, the training's own time included; measuring "
              f"{sum(batches):.1f} s in {len(batches)} round(s) {batches}; one-off evaluate of the 5 files: {once_seconds:.1f} s")

    perceptlab(["evaluate", "--watch", str(run), "--config", str(suite), "--out", str(out), "--poll", "0.5",
                "--settle", "1", "--idle_timeout", "30", "--trainer.accelerator=cpu"])
    assert records(out) == got  # restarted: nothing measured twice
    assert "5 measured before" in capsys.readouterr().out


def test_watch_names_a_missing_folder_and_refuses_models_with_it(tmp_path, tiny_world):
    suite = suite_config(tmp_path, tiny_world)
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        from perceptlab.commands.evaluate import evaluate

        evaluate(watch=str(tmp_path / "no-such-run"), config=[str(suite)])
    with pytest.raises(ValueError, match="one of them"):
        evaluate(models=["a.ckpt"], watch=str(tmp_path), config=[str(suite)])


def test_a_series_places_each_model_at_its_own_step_and_refuses_to_guess():
    """place_series on constructed sources: steps win over names and order; an alias at a step
    another file holds is measured once; a mix of known and unknown steps is refused, naming the
    unknown; a series where nothing is known is taken as given and says so."""
    from perceptlab.core.checkpoints import ModelSource, SeriesOrderError, place_series

    def lightning(name, step):
        return ModelSource(f"run/checkpoints/{name}", "lightning", "m", step=step, epoch=step // 4)

    final = ModelSource("run/checkpoints/open_clip_model.pt", "open_clip", "m", step=16, epoch=3, end_of_fit=True)
    series = [lightning("epoch=3-step=16.ckpt", 16), final, lightning("epoch=0-step=4.ckpt", 4),
              lightning("last.ckpt", 16), lightning("b.ckpt", 8)]
    kept, notes = place_series(series)
    assert [(s.spec.rsplit("/", 1)[1], s.at) for s in kept] == [
        ("epoch=0-step=4.ckpt", 4), ("b.ckpt", 8), ("epoch=3-step=16.ckpt", 16)]
    assert len(notes) == 2 and all("measured as run/checkpoints/epoch=3-step=16.ckpt" in n for n in notes)
    # the export alone is the final step; with that step taken already it is not measured again
    kept, _ = place_series([ModelSource(final.spec, "open_clip", "m", step=16, epoch=3, end_of_fit=True)])
    assert [s.at for s in kept] == [16]
    kept, notes = place_series([ModelSource(final.spec, "open_clip", "m", step=16, epoch=3, end_of_fit=True)],
                               taken={16: "x.ckpt"})
    assert kept == [] and "measured as x.ckpt" in notes[0]

    plain = ModelSource("elsewhere/model.pt", "open_clip", "m")
    with pytest.raises(SeriesOrderError, match=r"1 model\(s\) have no training step.*elsewhere/model\.pt"):
        place_series([lightning("a.ckpt", 4), plain])
    epochs = [ModelSource(f"oc/epoch_{e}.pt", "open_clip_train", "m", epoch=e) for e in (3, 1, 2)]
    with pytest.raises(SeriesOrderError, match="--steps_per_epoch"):
        place_series([lightning("a.ckpt", 4), *epochs])
    kept, notes = place_series(epochs, steps_per_epoch=100)
    assert [s.at for s in kept] == [100, 200, 300] and not notes
    kept, notes = place_series([ModelSource(s.spec, s.kind, "m", epoch=s.epoch) for s in epochs])
    assert [s.at for s in kept] == [1, 2, 3] and "by epoch" in notes[0]
    kept, notes = place_series([ModelSource("x/final.pt", "open_clip", "m"), ModelSource("x/init.pt", "open_clip", "m")])
    assert [(s.spec, s.at) for s in kept] == [("x/final.pt", 0), ("x/init.pt", 1)] and "as given" in notes[0]


@pytest.mark.slow
def test_a_checkpoint_series_keeps_its_real_steps_through_watch_and_globs(tiny_world, tmp_path, capsys, caplog):
    """The shipped stage-2 toy config, 4 epochs of 4 steps, with a user's ModelCheckpoint every 4
    steps (epoch=0-step=4.ckpt ... epoch=3-step=16.ckpt, last.ckpt) and the open_clip_model.pt
    that fit writes at its end: a watcher started during the training, one started after it and a
    glob of the checkpoint folder each record steps 4, 8, 12, 16 from the step files, no alias as
    a point, and each metric's peak step is the step of its best value."""
    import logging
    import os
    import subprocess
    import sys

    caplog.set_level(logging.INFO)
    suite = suite_config(tmp_path, tiny_world)
    cfg = yaml.safe_load(suite.read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["probes"] = cfg["trainer"]["callbacks"][0]["init_args"]["probes"][:1]
    suite.write_text(yaml.safe_dump(cfg))  # NIGHTS only: the series' steps are the point
    every_4 = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"every_n_train_steps": 4, "save_top_k": -1, "save_last": True}})
    it = tiny_world / "image_text"
    run = tmp_path / "runs" / "pretrain_random" / "version_0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    training = subprocess.Popen(
        [sys.executable, "-m", "perceptlab", "fit", "--config", str(REPO / "experiments/toy/pretrain_random.yaml"),
         pairs_override("csv", it / "pairs.csv"), f"--data.init_args.zeroshot_data={tiny_world / 'classification'}",
         f"--runs_dir={tmp_path / 'runs'}", "--trainer.max_epochs=4", "--trainer.limit_val_batches=0",
         "--trainer.enable_progress_bar=false", "--data.init_args.loader.num_workers=0", f"--trainer.callbacks+={every_4}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    args = ["--config", str(suite), "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    watch = ["--poll", "0.3", "--settle", "0.5", "--idle_timeout", "300"]
    try:
        while not run.is_dir() and training.poll() is None:
            time_sleep(0.2)
        perceptlab(["evaluate", "--watch", str(run), "--out", str(tmp_path / "during"), *watch, *args])
    finally:
        log, _ = training.communicate(timeout=600)
    assert training.returncode == 0, log[-3000:]
    folder = run / "checkpoints"
    assert {p.name for p in folder.iterdir()} >= {"epoch=3-step=16.ckpt", "last.ckpt", "open_clip_model.pt"}
    steps = {f"epoch={s // 4 - 1}-step={s}.ckpt": s for s in (4, 8, 12, 16)}
    perceptlab(["evaluate", "--watch", str(run), "--out", str(tmp_path / "after"), *watch, *args])
    perceptlab(["evaluate", str(folder / "*"), "--out", str(tmp_path / "glob"), *args])
    printed = capsys.readouterr().out + caplog.text  # the watcher prints; the series logs through Lightning
    assert "open_clip_model.pt is step 16, measured as" in printed
    assert "last.ckpt: an alias of some step, left out of the series" in printed
    for how in ("during", "after", "glob"):
        got = records(tmp_path / how)
        assert [(Path(r["model"]).name, r["step"]) for r in got] == sorted(steps.items(), key=lambda kv: kv[1]), how
        for r in got:  # each record's step is its checkpoint's global step
            assert torch.load(r["model"], map_location="cpu", weights_only=True)["global_step"] == r["step"]
        summary = json.loads((tmp_path / how / "alignment_summary.json").read_text())["nights/2afc"]
        values = {r["step"]: r["metrics"]["nights/2afc"] for r in got}
        best = max(values.values())
        assert summary["peak_step"] == min(s for s, v in values.items() if v == best), how
        assert summary["final_step"] == 16 and summary["drop"] == pytest.approx(best - values[16])
    # the export alone is the run's final step (fit_end.json), and it is the step-16 checkpoint's weights
    perceptlab(["evaluate", str(folder / "open_clip_model.pt"), "--model_name", "perceptlab-vit-tiny-64",
                "--out", str(tmp_path / "export"), *args])
    (export,) = records(tmp_path / "export")
    assert export["step"] == 16 and export["metrics"] == records(tmp_path / "glob")[-1]["metrics"]


def time_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)
