"""Resume reproduces the run as users run it: the shipped toy configs (only sizes overridden), every
exact data format, every kind of kill point, no evaluation lost or doubled.

Each cell trains a config without interruption, then the same command killed at one point after
another, each time resumed with ``--ckpt_path last`` (as after a pre-emption): mid-epoch, just
after a checkpoint, just after an evaluation whose checkpoint is not written yet (the suite has
recorded the epoch-end evaluation, ``last.ckpt`` is still the step before), and at an epoch
boundary. It must end with the uninterrupted run's weights (to 1e-6) and the same evaluations,
each once. The first kill of the stage-2 CSV cell is a real SIGKILL of a ``perceptlab fit``
process; the others raise inside this process (``faults.Killed``: no hook saves anything, so the
files left are those of a SIGKILL at the same point), so that each fit costs its training, not
its imports. The stage-2 CSV cell is bounded by ``max_steps`` (Lightning's iteration-based
restore, the issue's case); the others by ``max_epochs`` (its epoch-based restore).

The suite is the shipped fragment with its NIGHTS and shape-bias probes (every 2 steps), so that
evaluations fall on checkpoint steps, mid-epoch and at epoch ends.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from perceptlab.commands.cli import main as perceptlab

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "experiments" / "toy"
sys.path.insert(0, str(Path(__file__).parent))
from faults import Killed  # noqa: E402

# (step, when) -> the step of the last.ckpt the next run resumes from (checkpoints every 2 steps)
MID_EPOCH = (3, "batch_start")  # resumes from 2, inside epoch 0
AFTER_CHECKPOINT = (6, "batch_start")  # last.ckpt at 6 was just written, mid-epoch
AFTER_EVALUATION = (8, "epoch_end")  # step 8's epoch-end evaluation is recorded, its checkpoint not yet
EPOCH_BOUNDARY = (8, "batch_start")  # after the epoch-end checkpoint, before epoch 2's first batch


def suite(world: Path, tmp: Path) -> Path:
    cfg = yaml.safe_load((TOY / "alignment_suite.yaml").read_text())
    init = cfg["trainer"]["callbacks"][0]["init_args"]
    init.update(data_root=str(world), every_n_steps=2, every_n_steps_until=None, then_every_n_steps=None,
                tensorboard_figure=False, num_workers=0)
    kept = {"nights": 24, "cue_conflict": 32}
    init["probes"] = [p for p in init["probes"] if p["init_args"]["root"] in kept]
    for probe in init["probes"]:
        probe["init_args"]["max_items"] = kept[probe["init_args"]["root"]]
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def shipped(name: str, world: Path) -> str:
    """experiments/toy/<name>.yaml as shipped, reading ``world`` instead of data/toyworld."""
    path = world.parent / f"{world.name}-{name}.yaml"
    if not path.is_file():
        path.write_text((TOY / f"{name}.yaml").read_text().replace("data/toyworld", str(world)))
    return str(path)


def stage2(world: Path, fmt: str) -> list[str]:
    it = world / "image_text"
    data = {"csv": (it / "pairs.csv", it / "val_pairs.csv"), "hf": (it / "hf" / "train.parquet", None),
            "webdataset": (it / "shards" / "*.tar", it / "val_shards" / "00000.tar"),
            "litdata": (it / "litdata" / "train", it / "litdata" / "val")}[fmt]
    from conftest import pairs_override

    return ["--config", shipped("pretrain_random", world), pairs_override(fmt, data[0], data[1]),
            f"--data.init_args.zeroshot_data={world / 'classification'}",
            "--data.init_args.loader.num_workers=1", "--trainer.max_epochs=3"]  # 4 steps an epoch: 12 steps


CELLS = {
    # name: (config arguments, kills in order); every kind of kill point is in at least two cells
    "stage1": (lambda w: ["--config", shipped("pi_nights", w), "--trainer.max_epochs=3"],  # 113 triplets / 32: 4 steps an epoch
               [MID_EPOCH, AFTER_EVALUATION, EPOCH_BOUNDARY]),
    "stage2-csv": (lambda w: stage2(w, "csv") + ["--trainer.max_epochs=-1", "--trainer.max_steps=11"],
                   [AFTER_CHECKPOINT, AFTER_EVALUATION, EPOCH_BOUNDARY]),
    "stage2-hf": (lambda w: stage2(w, "hf"), [MID_EPOCH, EPOCH_BOUNDARY]),
    # litdata 0.2.76 lost the epoch after a mid-epoch resume (litdata_pairs.ResumableStreamingLoader)
    "stage2-litdata": (lambda w: stage2(w, "litdata"), [AFTER_CHECKPOINT, EPOCH_BOUNDARY]),
    # webdataset is exact at epoch boundaries only (inside an epoch: the next test)
    "stage2-webdataset": (lambda w: stage2(w, "webdataset"), [EPOCH_BOUNDARY]),
    "task-iqa": (lambda w: ["--config", shipped("perceptual_iqa", w), "--data.init_args.loader.batch_size=16",
                            "--trainer.max_epochs=3"],  # 45 images in batches of 16: 3 steps an epoch
                 [(4, "batch_start"), (6, "epoch_end"), (6, "batch_start")]),
}
SIGKILL_CELL = "stage2-csv"  # its first kill: a real SIGKILL of a perceptlab process


def fit(args: list[str], runs: Path, name: str, *extra: str) -> None:
    argv = list(sys.argv)
    try:
        perceptlab(["fit", *args, "--runs_dir", str(runs), "--experiment", name, "--seed_everything=0",
                    "--checkpoint_every_n_steps=2", "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=1", *extra])
    finally:
        sys.argv = argv  # the CLI rewrites it


def fit_and_sigkill(args: list[str], runs: Path, name: str, step: int, when: str) -> None:
    """The same command in a process of its own, killed by SIGKILL at ``step`` (nothing is saved)."""
    import os
    import signal
    import subprocess

    kill = json.dumps({"class_path": "faults.KillAt", "init_args": {"step": step, "when": when}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "perceptlab", "fit", *args, "--runs_dir", str(runs), "--experiment",
                           name, "--seed_everything=0", "--checkpoint_every_n_steps=2",
                           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                           "--trainer.limit_val_batches=1", f"--trainer.callbacks+={kill}"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def records(run: Path) -> list[dict]:
    """alignment.jsonl without the timings (which differ from run to run)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "alignment.jsonl").read_text().splitlines()]


def weights(run: Path) -> tuple[int, dict[str, torch.Tensor]]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return state["global_step"], state["state_dict"]


FORMAT_CELLS = ("stage2-hf", "stage2-litdata", "stage2-webdataset")  # test_resume_formats.py (another xdist worker)


@pytest.mark.slow
@pytest.mark.parametrize("cell", [c for c in CELLS if c not in FORMAT_CELLS])
def test_a_killed_run_resumed_from_last_ends_as_the_uninterrupted_one(cell, tiny_world, tmp_path):
    check_cell(cell, tiny_world, tmp_path)


def check_cell(cell: str, tiny_world: Path, tmp_path: Path) -> None:
    """One cell of the matrix (see the module docstring)."""
    config, kills = CELLS[cell]
    args = config(tiny_world) + ["--config", str(suite(tiny_world, tmp_path))]
    runs = tmp_path / "runs"
    fit(args, runs, "full")
    full = runs / "full" / "version_0"
    expected = records(full)
    steps = [r["step"] for r in expected]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)

    run = runs / "resumed" / "version_0"
    for i, (step, when) in enumerate(kills):
        if i == 0 and cell == SIGKILL_CELL:
            fit_and_sigkill(args, runs, "resumed", step, when)
        else:
            kill = json.dumps({"class_path": "faults.KillAt", "init_args": {"step": step, "when": when, "in_process": True}})
            with pytest.raises(Killed):
                fit(args, runs, "resumed", f"--trainer.callbacks+={kill}", *(("--ckpt_path", "last") if i else ()))
        written = records(run)
        assert written == expected[:len(written)], (cell, step, when)  # up to the kill: the same numbers
    fit(args, runs, "resumed", "--ckpt_path", "last")
    assert not (runs / "resumed" / "version_1").exists()
    assert records(run) == expected, cell  # every evaluation once, none lost, none doubled
    assert json.loads((run / "alignment_summary.json").read_text()) == json.loads(
        (full / "alignment_summary.json").read_text())
    (step_a, a), (step_b, b) = weights(full), weights(run)
    assert step_a == step_b
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6, msg=f"{cell}: {key}")
