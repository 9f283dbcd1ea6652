"""``perceptlab evaluate``: the alignment suite on any model, or on a series of checkpoints.

    perceptlab evaluate runs/pretrain_pi/version_0/checkpoints/last.ckpt --config experiments/toy/alignment_suite.yaml
    perceptlab evaluate '/runs/openclip/checkpoints/epoch_*.pt' --model_name ViT-B-32 \\
        --config my_suite.yaml --trainer.devices=8 --trainer.precision=bf16-mixed
    perceptlab evaluate /models/clip-vit-base-patch32 --config my_suite.yaml   # a transformers folder
    perceptlab evaluate 'runs/pretrain_pi/version_0/checkpoints/epoch=*.ckpt' \
        --config experiments/paper/benchmark_suite.yaml     # the 31 zero-shot / retrieval tasks

``--config`` takes the AlignmentSuite block a training config uses (the toy fragment works as it
is), with the same dotted overrides (``--trainer.callbacks.init_args.data_root=...``). A MODEL is
a perceptlab Lightning checkpoint of any stage, a ``visual.pt``, an open_clip state dict or
``open_clip_train`` checkpoint, a transformers CLIP folder, an open_clip pretrained tag (with
``--model_name``) or a glob; several form a trajectory, each model at the training step it knows
(``core.checkpoints.place_series``): a Lightning checkpoint's ``global_step``, stage 2's
``open_clip_model.pt`` (or stage 1's ``visual.pt``) the run's last step (from ``fit_end.json``),
an ``open_clip_train`` epoch times ``--steps_per_epoch``. A glob leaves out the aliases it matches
(``last.ckpt``, ``alignment-peak.ckpt``), and an export at a step another file holds is measured
once. A series mixing files with and without a step is refused, naming them (exit 2); one where
no file knows its step is placed by epoch, else by the number in the names, else as given, and
says so.

Writes, by default in ``runs/evaluate/<name>/version_<n>/`` (``--out DIR`` to choose):
``alignment.jsonl`` (one record per model, the fields of training plus ``"model"``),
``alignment_summary.json`` (peak, final, drop over the series) and TensorBoard scalars at each
model's step, so ``perceptlab report`` and TensorBoard show it like a live run. Run again on a
growing folder, it continues in the newest version and measures only the models not in its
``alignment.jsonl`` yet (``--new_version`` starts afresh).

``--watch RUN_OR_FOLDER`` keeps measuring a running training's checkpoints (ours, or
``open_clip_train``'s ``checkpoints/epoch_N.pt``) as they appear, each once, in step order, leaving
a file still being written for a later look (``commands.watch``), until the training writes its
end (``fit_end.json``, written by ``perceptlab fit``) or ``--idle_timeout`` seconds pass without a
new one. The series and its probes are set up once, at the first checkpoint; a restarted watcher
continues the same record. One process (an evaluation companion on its own GPU):

    perceptlab evaluate --watch runs/pretrain_pi/version_0 --config experiments/toy/alignment_suite.yaml
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def default_name(model: str) -> str:
    """``<run>`` for ``runs/<run>/version_0/checkpoints/*.ckpt``, else the model's folder or stem."""
    path = Path(model)
    parts = [p for p in path.parts if p not in ("checkpoints",) and not p.startswith("version_")]
    if len(parts) >= 2 and any(ch in path.name for ch in "*?["):
        return parts[-2]
    return (Path(*parts).stem if parts else path.stem) or "model"


from perceptlab.callbacks.run_record import JSONL_NAME  # noqa: E402  (the run record owns the file names)


def run_dir_for(out: str | None, runs_dir: str, name: str, new_version: bool) -> Path:
    if out:
        return Path(out)
    root = Path(runs_dir) / "evaluate" / name
    versions = sorted((int(p.name.split("_")[-1]) for p in root.glob("version_*") if p.name.split("_")[-1].isdigit()))
    if versions and not new_version and (root / f"version_{versions[-1]}" / JSONL_NAME).is_file():
        return root / f"version_{versions[-1]}"
    return root / f"version_{versions[-1] + 1 if versions else 0}"


def evaluate(models: list[str] | None = None, config: list[str] | None = None, out: str | None = None,
             name: str | None = None, runs_dir: str = "runs", model_name: str | None = None, new_version: bool = False,
             watch: str | None = None, poll: float = 30.0, settle: float = 10.0, idle_timeout: float = 3600.0,
             steps_per_epoch: int | None = None, trainer_overrides: list[str] = (), argv: list[str] | None = None) -> Path:
    """The alignment suite on any model, or on a series of checkpoints.

    Lightning's options pass through as --trainer.<key>=<value> (--trainer.accelerator=cpu,
    --trainer.devices=8, --trainer.precision=bf16-mixed), the suite's as
    --trainer.callbacks.init_args.<key>=<value>.

    Args:
        models: checkpoints, visual.pt files, transformers folders, open_clip tags or globs.
        config: a config with the AlignmentSuite under trainer.callbacks (required; repeat --config for several).
        out: the run directory (default runs/evaluate/<name>/version_<n>).
        name: <name> of the default run directory (default: from the first model).
        runs_dir: root of the default run directory.
        model_name: the architecture, where a file does not record it.
        new_version: start a new version instead of continuing the newest one.
        watch: a running training's run directory (or checkpoint folder): measure each new checkpoint as it appears.
        poll: --watch: seconds between looks at the folder.
        settle: --watch: a checkpoint is measured once unchanged for this many seconds (not while being written).
        idle_timeout: --watch: stop after this many seconds without a new checkpoint (a training that wrote its end stops it at once).
        steps_per_epoch: place open_clip_train checkpoints (which record their epoch) at epoch x this step.
    """
    from perceptlab.commands.cli import parse_only

    if not config:
        raise ValueError("--config is required: a config with the AlignmentSuite under trainer.callbacks")
    missing = [c for c in config if not Path(c).is_file()]
    if missing:
        raise FileNotFoundError(f"--config not found: {', '.join(missing)}")
    if bool(models) == bool(watch):
        raise ValueError("give MODEL ... or --watch RUN_OR_FOLDER (one of them)")
    from perceptlab.commands.moved import check_moved_arguments

    check_moved_arguments([a for c in config for a in ("--config", c)] + list(trainer_overrides))
    if parse_only():
        return Path(out or ".")
    watcher = None
    if watch:
        from perceptlab.commands.watch import Watcher

        watcher = Watcher(Path(watch), settle=settle)  # a missing folder is named here, before any set-up
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ValueError(f"--steps_per_epoch must be a positive integer, got {steps_per_epoch}")
    ns = argparse.Namespace(models=models, config=config, out=out, name=name, runs_dir=runs_dir,
                            model_name=model_name, new_version=new_version, steps_per_epoch=steps_per_epoch)
    overrides = list(trainer_overrides)

    from perceptlab.callbacks.run_record import JSONL_NAME, read_evaluations

    run_dir = run_dir_for(ns.out, ns.runs_dir, ns.name or default_name(watch or ns.models[0]), ns.new_version)
    existing = read_evaluations(run_dir)
    done = [r["model"] for r in existing if "model" in r]
    if watcher is not None:
        return watch_series(watcher, run_dir, done, ns, overrides, argv, poll, idle_timeout)
    cli, suite = build_series(ns, run_dir, existing, done, overrides, argv)
    if not cli.model.todo:
        print(f"every model is measured already: {run_dir / JSONL_NAME}")
        return run_dir
    cli.trainer.validate(cli.model)
    print(f"{len(cli.model.todo)} model(s) measured -> {run_dir / JSONL_NAME}")
    return run_dir


def build_series(ns, run_dir: Path, existing: list, done: list[str], overrides: list[str], argv):
    """The LightningCLI of a :class:`CheckpointSeries` over ``ns.models`` (less ``done``), its
    suite restored from the run record when the series continues."""
    from perceptlab.callbacks.alignment import AlignmentSuite
    from perceptlab.commands.cli import make_cli_class

    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(run_dir.parent), "name": "", "version": run_dir.name,
                            "default_hp_metric": False}}
    args = [a for c in ns.config for a in ("--config", c)] + [
        f"--model.models={json.dumps(list(ns.models))}", f"--model.skip={json.dumps(done)}",
        f"--trainer.logger={json.dumps(logger)}", "--trainer.enable_checkpointing=false", *overrides]
    if ns.model_name:
        args.append(f"--model.model_name={ns.model_name}")
    if getattr(ns, "steps_per_epoch", None):
        args.append(f"--model.steps_per_epoch={ns.steps_per_epoch}")
    # Lightning's DDP launcher re-runs this very command for the other processes.
    from perceptlab.lightning_modules.evaluation import CheckpointSeries

    command = [sys.argv[0] if sys.argv and sys.argv[0] else "perceptlab", "evaluate",
               *(sys.argv[2:] if argv is None else argv)]
    sys.argv = command[:1]  # LightningCLI reads `args`, and warns when sys.argv holds arguments too
    try:
        cli = make_cli_class()(CheckpointSeries, None, run=False, args=args, seed_everything_default=0,
                               save_config_kwargs={"overwrite": True},
                               parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False})
    finally:
        sys.argv = command  # Lightning's DDP launcher re-runs this very command for the other processes
    suites = [c for c in cli.trainer.callbacks if isinstance(c, AlignmentSuite)]
    if not suites:
        raise ValueError(f"{', '.join(ns.config)}: no AlignmentSuite in trainer.callbacks")
    suite = suites[0]
    if existing:
        # every earlier evaluation's replicates come back from the bootstrap file, so the drop test
        # of the continued series covers all of it
        import torch

        from perceptlab.callbacks.run_record import read_run

        kept = read_run(run_dir, require=False)
        trajectories = {k.rsplit("@", 1)[0]: {"trajectory": torch.as_tensor(v)} for k, v in kept.replicates.items()
                        if k.endswith("@trajectory")}
        suite.load_state_dict({"history": existing, "replicates": trajectories,
                               "items": {m: s["items"] for m, s in kept.summary.items() if s.get("items") is not None}})
    return cli, suite


def watch_series(watcher, run_dir: Path, done: list[str], ns, overrides: list[str], argv, poll: float,
                 idle_timeout: float) -> Path:
    """Measure each new checkpoint of a running training once, in step order, until it writes its
    end or ``idle_timeout`` seconds pass without a new one. The series and its probes are set up once
    (at the first checkpoint) and measure every later one in the same process."""
    from perceptlab.callbacks.run_record import JSONL_NAME, read_evaluations

    measured = set(done)
    cli = None
    last_new = time.monotonic()
    said = None
    print(f"watching {watcher.folder} -> {run_dir / JSONL_NAME}"
          + (f" ({len(measured)} measured before)" if measured else ""), flush=True)
    taken = {int(r["step"]): r["model"] for r in read_evaluations(run_dir) if "model" in r}
    while True:
        ready, pending = watcher.poll(measured)
        if ready:
            measured.update(ready)  # looked at once each, measured or left out with a line
            ready, notes = watcher.place(ready, taken, ns.model_name, ns.steps_per_epoch)
            for note in notes:
                print(f"watch: {note}", flush=True)
        if ready:
            if cli is None:
                ns.models = ready
                cli, _ = build_series(ns, run_dir, read_evaluations(run_dir), sorted(measured - set(ready)), overrides,
                                      argv)
                if cli.trainer.world_size > 1:
                    raise ValueError("--watch measures in one process (--trainer.devices=1): "
                                     "a watcher's ranks would see the folder at different times")
            else:
                cli.model.extend(ready)
            start = time.perf_counter()
            cli.trainer.validate(cli.model)
            taken.update({int(s.at): s.spec for _, s in cli.model.todo})
            print(f"watch: {len(ready)} checkpoint(s) measured in {time.perf_counter() - start:.1f} s "
                  f"({len(measured)} in all)", flush=True)
            last_new = time.monotonic()
            said = None
            continue  # look again at once: more may have settled meanwhile
        end = watcher.ended()
        if end is not None and pending == 0:
            print(f"watch: the training ended at step {end['step']}; {len(measured)} checkpoint(s) measured "
                  f"-> {run_dir / JSONL_NAME}", flush=True)
            return run_dir
        idle = time.monotonic() - last_new
        if idle >= idle_timeout:
            print(f"watch: no new checkpoint for {idle:.0f} s (--idle_timeout {idle_timeout:g}); "
                  f"{len(measured)} checkpoint(s) measured -> {run_dir / JSONL_NAME}", flush=True)
            return run_dir
        state = (pending, end is not None)
        if state != said:
            print(f"watch: waiting ({pending} checkpoint(s) still being written)" if pending else
                  "watch: waiting for the next checkpoint", flush=True)
            said = state
        time.sleep(poll)


def main(argv: list[str] | None = None) -> Path:
    """``--trainer.<key>=<value>`` and repeated ``--config`` as LightningCLI takes them; every other
    flag from :func:`evaluate`'s signature."""
    from perceptlab.commands.cli import run_function

    given = list(sys.argv[2:] if argv is None else argv)
    rest, configs, overrides = [], [], []
    words = iter(given)
    for word in words:
        if word.startswith("--trainer."):
            if "=" not in word:
                raise ValueError(f"{word}: give Lightning options as --trainer.<key>=<value>")
            overrides.append(word)
        elif word == "--config":
            configs.append(next(words, ""))
        elif word.startswith("--config="):
            configs.append(word.split("=", 1)[1])
        else:
            rest.append(word)
    if configs:
        rest.append(f"--config={json.dumps(configs)}")
    return run_function(evaluate, rest, prog="perceptlab evaluate", positional=("models",),
                        extra={"trainer_overrides": overrides, "argv": given})
