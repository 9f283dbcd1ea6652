"""The ``perceptlab`` command.

``perceptlab fit|validate|test --config experiments/<...>.yaml [--dotted.overrides]`` is
LightningCLI (model and datamodule picked by ``class_path`` in the YAML, ``--print_config``,
errors that name the bad key). ``perceptlab synth`` writes the toy world and ``perceptlab report``
turns run directories into plots and a Markdown summary.

Defaults a run gets unless its config says otherwise: a TensorBoard logger writing
``runs/<experiment>/version_<n>/`` (``<experiment>`` is ``--experiment`` or the config file's
stem), ``config.yaml`` beside the events, ``checkpoints/last.ckpt``, a rich progress bar, the
learning rate logged, and seed 0.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from perceptlab.commands.errors import check_checkpoint_file, error_line, user_errors
from perceptlab.commands.moved import check_moved_arguments

USAGE = """usage: perceptlab <command> [options]

commands:
  fit        train a model          perceptlab fit --config experiments/toy/pi_nights.yaml
  validate   run the validation loop on a checkpoint or a fresh model
  test       run the test loop
  synth      write the toy world     perceptlab synth --out data/toyworld --scale tiny
  report     plots + Markdown over run directories
                                     perceptlab report runs/a/version_0 runs/b/version_0 --out report/
  demo       the whole toy-world study: synth, stage 1, stage 2 x2, task transfer, report
  control    the peak machinery on a simulated trajectory with a planted early peak
                                     perceptlab control --out runs/control --peak 0.08
  evaluate   the alignment suite on any model or a series of checkpoints
                                     perceptlab evaluate 'runs/x/version_0/checkpoints/*.ckpt' --config suite.yaml
  export     a checkpoint as open_clip or Hugging Face weights
                                     perceptlab export last.ckpt --to hf --out clip-hf/
  predict    score images with a task model or a PerceptCLIP release
                                     perceptlab predict last.ckpt --images photos/ --out predictions.csv

`perceptlab <command> --help` documents every option of a command; `fit --print_config` prints
the full resolved configuration. Overrides use dotted keys: --trainer.max_epochs=3
A mistake (a missing file, an unknown key, a bad value) is one line and exit status 2;
`--debug` (or PERCEPTLAB_DEBUG=1) shows the traceback instead (commands/errors.py makes the line).
Model files are read as data: one that would run code when opened is refused. Only for files you
made yourself, `perceptlab --trust_model_files <command> ...` (or PERCEPTLAB_TRUST_MODEL_FILES=1)
reads them anyway.
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def make_cli_class():
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.callbacks.progress import ProgressBar
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import TensorBoardLogger

    from perceptlab.callbacks.reliability import NonFiniteLossGuard, PreemptionCheckpoint, RNGStateCheckpoint, RunCheckpoint

    class PerceptLabCLI(LightningCLI):
        """LightningCLI with the project's run layout as defaults."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--experiment", type=str | None, default=None,
                                help="run name under --runs_dir (default: the config file's stem)")
            parser.add_argument("--runs_dir", type=str, default="runs", help="root of all run directories")
            parser.add_argument("--trackers", type=list[Literal["csv", "mlflow", "wandb"]], default=[],
                                help="experiment trackers beside TensorBoard, named after the run, e.g. '[csv, mlflow]'")
            parser.add_argument("--checkpoint_every_n_steps", type=int | None, default=None,
                                help="also refresh checkpoints/last.ckpt every N optimiser steps (mid-epoch resume)")

        # The end marker ``perceptlab evaluate --watch`` waits for: removed when a fit starts (a
        # resumed run is running again), written when it returns normally (a crash or SIGTERM raises).
        def before_fit(self) -> None:
            from perceptlab.core.checkpoints import FIT_END_NAME

            run_dir = getattr(self.trainer.logger, "log_dir", None)  # the logger's own: no collective before set-up
            if run_dir and self.trainer.is_global_zero:
                (Path(run_dir) / FIT_END_NAME).unlink(missing_ok=True)

        def after_fit(self) -> None:
            from perceptlab.callbacks.run_record import write_fit_end

            run_dir = getattr(self.trainer.logger, "log_dir", None)
            if run_dir and self.trainer.is_global_zero and not self.trainer.interrupted:
                write_fit_end(run_dir, self.trainer.global_step, self.trainer.current_epoch)

        def _experiment_name(self) -> str:
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            if cfg.get("experiment"):
                return str(cfg["experiment"])
            return experiment_name(cfg.get("config") or [])

        def instantiate_trainer(self, **kwargs):
            # LightningCLI's public hook: the trainer's settings as configured, with ours added as
            # keyword arguments (which win over the configuration's): the default logger, trackers
            # and callbacks, and no config file written where no logger makes a run directory.
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            init = self.config_init[self.subcommand] if self.subcommand else self.config_init
            config = {**dict(init.get("trainer") or {}), **kwargs}
            _fast_dev_run_as_limits(config)
            if config.get("logger") in (None, True):
                runs_dir, name = cfg.get("runs_dir", "runs"), self._experiment_name()
                version = _resumed_version(runs_dir, name, cfg.get("ckpt_path")) if self.subcommand == "fit" else None
                config["logger"] = TensorBoardLogger(save_dir=runs_dir, name=name, version=version,
                                                     default_hp_metric=False)
                if cfg.get("trackers"):
                    from perceptlab.commands.trackers import make_trackers

                    config["logger"] = [config["logger"], *make_trackers(list(cfg["trackers"]), runs_dir, name,
                                                                         config["logger"].version)]
            elif cfg.get("trackers") and config.get("logger") is not False:
                raise ValueError("--trackers adds loggers beside the default TensorBoard one; this config sets "
                                 "trainer.logger itself: list the trackers there instead")
            configured = config.get("callbacks") or []
            given = list(configured) if isinstance(configured, list) else [configured]
            callbacks = []
            if config.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in given):
                # no "-v1" suffixes: a resumed run keeps refreshing the same last.ckpt
                callbacks.append(RunCheckpoint(save_last=True, every_n_train_steps=cfg.get("checkpoint_every_n_steps"),
                                                 enable_version_counter=False))
            if self.subcommand == "fit":
                if not any(isinstance(c, NonFiniteLossGuard) for c in given):
                    callbacks.append(NonFiniteLossGuard())
                if not any(isinstance(c, PreemptionCheckpoint) for c in given):
                    callbacks.append(PreemptionCheckpoint())
                if not any(isinstance(c, RNGStateCheckpoint) for c in given):
                    callbacks.append(RNGStateCheckpoint())
            if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
                callbacks.append(RichProgressBar(leave=True))
            if config["logger"] and not any(isinstance(c, LearningRateMonitor) for c in given):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
            config["callbacks"] = given + callbacks
            saved = self.save_config_callback
            if not config["logger"]:
                # No run directory without a logger: the config would land in the working directory.
                self.save_config_callback = None
            try:
                return super().instantiate_trainer(**config)
            finally:
                self.save_config_callback = saved

    return PerceptLabCLI


def experiment_name(configs) -> str:
    """The run name of a list of ``--config`` files: the stem of the experiment config.

    The experiment config is the first one that names a model (``model.class_path``); the others
    are fragments (a strategy such as ``strategies/ddp.yaml``, the alignment suite), whatever
    order they come in. Without such a file, the first config names the run.
    """
    import yaml

    # jsonargparse hands its own Path objects, whose ``absolute`` is the resolved path string
    paths = [Path(c.absolute if isinstance(getattr(c, "absolute", None), str) else str(c)) for c in configs]
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            return path.stem
    return paths[0].stem if paths else "default"


def _resumed_version(runs_dir: str, experiment: str, ckpt_path) -> int | None:
    """The run version a resumed ``fit`` continues in, so its outputs stay in one directory.

    ``--ckpt_path last`` continues the newest ``version_<n>`` of the experiment that has a
    ``checkpoints/last.ckpt``; a checkpoint path inside ``<runs_dir>/<experiment>/version_<n>/``
    continues that version. Anything else starts a new version.
    """
    if not ckpt_path:
        return None
    root = Path(runs_dir) / experiment
    if str(ckpt_path) == "last":
        versions = sorted((p for p in root.glob("version_*") if (p / "checkpoints" / "last.ckpt").is_file()),
                          key=lambda p: int(p.name.split("_")[-1]))
        return int(versions[-1].name.split("_")[-1]) if versions else None
    try:
        rel = Path(ckpt_path).resolve().relative_to(root.resolve())
    except ValueError:
        return None
    head = rel.parts[0] if rel.parts else ""
    return int(head.split("_")[-1]) if head.startswith("version_") and head.split("_")[-1].isdigit() else None


def _fast_dev_run_as_limits(config: dict) -> None:
    """Turn ``fast_dev_run=n`` into the batch limits it stands for, keeping the run layout.

    Lightning's own fast_dev_run swaps the logger for a dummy and skips config.yaml and
    checkpoints (yet still writes ``checkpoints/last.ckpt`` into the working directory), so a
    dry run could not check what a real run writes. Here it runs ``n`` training batches, ``n``
    batches of every evaluation loop, no sanity check, and writes the normal run directory.
    """
    n = config.get("fast_dev_run")
    if not n:
        return
    n = 1 if n is True else int(n)
    config.update(
        fast_dev_run=False, max_steps=n, max_epochs=1, limit_train_batches=n, limit_val_batches=n,
        limit_test_batches=n, limit_predict_batches=n, num_sanity_val_steps=0, val_check_interval=None,
        check_val_every_n_epoch=1,
    )


def run_lightning(args: list[str]) -> None:
    import lightning.pytorch as pl

    for i, arg in enumerate(args):  # LightningCLI opens --ckpt_path while parsing: check it first
        if arg.startswith("--ckpt_path="):
            check_checkpoint_file(arg.split("=", 1)[1])
        elif arg == "--ckpt_path" and i + 1 < len(args):
            check_checkpoint_file(args[i + 1])
    check_moved_arguments(args)  # a key of an earlier version: one line naming its new place
    cli_class = make_cli_class()
    # LightningCLI reads sys.argv itself; hand it exactly the command's arguments. argv[0] stays the
    # real script: Lightning's DDP launcher re-runs `python argv[0] argv[1:]` for the other ranks.
    sys.argv = [sys.argv[0] if sys.argv and sys.argv[0] else "perceptlab", *args]
    cli_class(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # a mistake raises (one line in ``main``) instead of printing the whole usage before it
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
    )


def run_function(fn, argv: list[str] | None, prog: str, positional: tuple[str, ...] = (), extra: dict | None = None):
    """Parse ``argv`` into ``fn``'s typed signature and call it.

    Every flag, its type, default and help (from the ``Args:`` docstring) come from the function, in
    LightningCLI's ``--snake_case`` style (jsonargparse, as LitGPT's commands): a required ``list``
    parameter is a positional taking one or more values, the parameters named in ``positional``
    are positionals, and a ``bool`` is a switch (``--quick`` / ``--no_quick``). ``extra`` are
    arguments the caller fills in (not flags).
    """
    import inspect
    import typing

    from jsonargparse import ActionYesNo, ArgumentParser

    doc = inspect.getdoc(fn) or ""
    description = doc.split("\nArgs:")[0].strip()  # every paragraph before the arguments
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=True)
    hints = typing.get_type_hints(fn)
    extra = dict(extra or {})
    own = set(extra)
    for name, p in inspect.signature(fn).parameters.items():
        if name in extra:
            continue
        hint = hints.get(name)
        if p.default is inspect.Parameter.empty and typing.get_origin(hint) is list:
            parser.add_argument(name, nargs="+", help=_arg_help(doc, name))
        elif name in positional and list in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint))):
            parser.add_argument(name, nargs="*", default=p.default, help=_arg_help(doc, name))  # optional list
        elif name in positional:
            parser.add_argument(name, type=hint, help=_arg_help(doc, name))
        elif hint is bool:
            parser.add_argument(f"--{name}", action=ActionYesNo, default=p.default, help=_arg_help(doc, name))
        else:
            continue
        own.add(name)
    parser.add_function_arguments(fn, skip=own, as_positional=False)
    cfg = parser.parse_args(argv)
    if parse_only() and not extra:
        return None
    return fn(**cfg.as_dict(), **extra)


def parse_only() -> bool:
    """``PERCEPTLAB_PARSE_ONLY=1``: commands parse their arguments and stop (the docs' command test)."""
    return os.environ.get("PERCEPTLAB_PARSE_ONLY", "") not in ("", "0")


def _arg_help(doc: str, name: str) -> str | None:
    for line in doc.splitlines():
        if line.strip().startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return None


def synth(out: str, seed: int = 0, scale: Literal["tiny", "small"] = "tiny", image_size: int = 64,
          progress: bool = True) -> None:
    """Write the toy world in every real on-disk format.

    Args:
        out: output directory (created).
        seed: the world's seed (the same seed writes the same files).
        scale: tiny: seconds, for tests; small: about two minutes, for the demo.
        image_size: side of every image in pixels.
        progress: print progress while writing.
    """
    from perceptlab.datamodules.toyworld import synthesize

    manifest = synthesize(out, seed=seed, scale=scale, image_size=image_size, progress=progress)
    print(f"toy world written to {Path(out).resolve()}")
    for name, n in manifest.get("counts", {}).items():
        print(f"  {name}: {n}")


def run_synth(args: list[str]) -> None:
    run_function(synth, args, prog="perceptlab synth")


#: The commands of their own module, each a ``main(argv)``; imported when called (imports cost seconds).
MODULE_COMMANDS = {name: f"perceptlab.commands.{name}" for name in ("report", "evaluate", "export", "predict", "demo", "control")}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # No hub at run time unless the user opts in by setting these variables themselves.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    debug = "--debug" in argv or os.environ.get("PERCEPTLAB_DEBUG", "") not in ("", "0")
    from perceptlab.core.safe_load import TRUST_ENV, TRUST_FLAG

    if TRUST_FLAG in argv:  # an environment variable, so that DDP's other ranks and loader workers see it too
        os.environ[TRUST_ENV] = "1"
    argv = [a for a in argv if a not in ("--debug", TRUST_FLAG)]
    command, rest = argv[0], argv[1:]
    if command not in LIGHTNING_COMMANDS and command != "synth" and command not in MODULE_COMMANDS:
        print(f"perceptlab: unknown command {command!r}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    quiet_third_party()
    try:
        if command in LIGHTNING_COMMANDS:
            run_lightning([command, *rest])
        elif command == "synth":
            run_synth(rest)
        else:
            import importlib

            importlib.import_module(MODULE_COMMANDS[command]).main(rest)
    except user_errors() as exc:
        if debug:
            raise
        print(f"perceptlab {command}: error: {error_line(exc, rest)}", file=sys.stderr)
        raise SystemExit(2) from None


def quiet_third_party() -> None:
    """Keep the console to what the run needs: open_clip's "No pretrained weights loaded" is false
    whenever weights follow from a file (we load them after building the model, and say so), and
    the hub-offline chatter of optional kernels that pyiqa's import of bitsandbytes triggers says
    nothing about the run (no hub is used at run time)."""
    import logging
    import warnings

    for pattern in ("kernels-community", "offline mode is enabled"):
        warnings.filterwarnings("ignore", message=f".*{pattern}.*")

    class _Drop(logging.Filter):
        PATTERNS = ("No pretrained weights loaded for model", "kernels-community", "offline mode is enabled",
                    "HF_HUB_OFFLINE")

        def filter(self, record: logging.LogRecord) -> bool:
            text = record.getMessage()
            return not any(p in text for p in self.PATTERNS)

    for handler_owner in (logging.getLogger(), logging.getLogger("huggingface_hub"), logging.getLogger("kernels")):
        if not any(isinstance(f, _Drop) for f in handler_owner.filters):
            handler_owner.addFilter(_Drop())


if __name__ == "__main__":
    main()
