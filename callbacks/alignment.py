"""``AlignmentSuite``: human-alignment probes run during training, logged and tracked for peaks.

Add it to any stage's trainer (the modules keep their model as ``self.backbone``, a
``CLIPBackbone``; the probes query nothing else): ``experiments/toy/alignment_suite.yaml`` is a
trainer.callbacks block with every shipped probe; a probe of one's own is named there by class_path
(docs/extending.md).

When it evaluates
    :mod:`perceptlab.callbacks.alignment_schedule` (a baseline, epoch ends, a step schedule that can
    thin out after ``every_n_steps_until``, the end of training; never twice at one step).

What it writes (rank 0), in ``trainer.log_dir`` (``runs/<experiment>/version_<n>/``)
    the run record (``perceptlab.callbacks.run_record`` documents each file): ``alignment.jsonl``
    (one record per evaluation, each metric with its 95 % bootstrap interval over the probe's
    items), ``alignment_items/step=<step>.npz`` (every evaluation's per-item outputs),
    ``alignment_summary.json`` (peak, final, drop and the drop test that accounts for picking the
    peak, ``perceptlab.callbacks.peaks``), ``alignment_metrics.json`` (what each metric is, as its
    probe describes it) and ``alignment_bootstrap.npz`` (every evaluation's
    replicates; runs with the same probes and ``bootstrap_seed`` share their resampled items, so
    ``perceptlab report`` pairs two runs' replicates); and
    * logger scalars ``alignment/<metric>`` at the training step; for TensorBoard also a
      custom-scalars layout grouping the probes and the figure ``alignment/trajectories``.
    * ``checkpoints/alignment-peak.ckpt`` when ``checkpoint_peak_of`` names a metric, rewritten
      each time that metric reaches a new peak.

How
    In eval mode under ``torch.inference_mode`` and the trainer's precision context; each
    submodule's train/eval flag is restored afterwards. Probes decode their images once (at
    ``setup``) and reuse them. Under DDP every process encodes its share of each probe's items
    and the per-item results are all-gathered, so each process computes the same scores a single
    process would (up to float round-off of batch composition). Probes needing a text tower are
    skipped, with one log line, when the backbone is vision-only (stage 1).

Resuming
    The evaluation history is this callback's ``state_dict``, stored in every checkpoint. On
    resume the history is restored, the baseline is not repeated, and ``alignment.jsonl`` is
    rewritten from the restored history, so evaluations made after the checkpoint by the
    interrupted run are dropped rather than duplicated, whether the resumed run logs into the
    same directory or a new version. A checkpoint and its step's evaluation are one unit: a
    checkpoint written at a step whose evaluation had not run yet (a step-interval checkpoint at
    the last batch of an epoch precedes the epoch-end hooks) records where it was written, and the
    resumed run measures that step first, once, on the checkpoint's weights (evaluations draw no
    training random numbers, so this changes nothing else).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from perceptlab.callbacks import run_record
from perceptlab.callbacks.alignment_schedule import EvaluationSchedule
from perceptlab.callbacks.alignment_views import describe, headline_metrics, log_record
from perceptlab.callbacks.peaks import PeakTracker, trajectory_figure
from perceptlab.callbacks.probes.base import Probe
from perceptlab.callbacks.probes.metric_info import MetricInfo, legacy_info
from perceptlab.callbacks.probes.runner import Measurement, measure, trainer_context
from perceptlab.callbacks.run_record import finite
from perceptlab.core import uncertainty
from perceptlab.core.checkpoints import PEAK_CHECKPOINT_NAME

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: the replicates of every evaluation (the drop test needs them all)


class AlignmentSuite(Callback):
    """Runs human-alignment probes during ``fit`` and tracks each metric's peak.

    Args:
        probes: the probes (``perceptlab.callbacks.probes.*``), each with its data folder and ``max_items``.
        data_root: folder that relative probe roots are taken under (absolute roots are kept).
        every_n_epochs: evaluate after every N-th epoch (``null``: never at epoch ends).
        every_n_steps: evaluate every N optimiser steps (``null``: never mid-epoch).
        every_n_steps_until: stop the step schedule after this optimiser step (``null``: never);
            dense sampling where an early peak happens, sparser after.
        then_every_n_steps: after ``every_n_steps_until``, evaluate at the multiples of this many
            steps (``null``: only at epoch ends), e.g. 25 until 100, then 100: steps 25, 50, 75,
            100, 200, 300, ...
        baseline: evaluate once before the first step (skipped when resuming).
        at_end: evaluate after the last step when no schedule did.
        batch_size: images per forward pass (a probe's own ``batch_size`` wins).
        num_workers: threads decoding probe images at set-up.
        checkpoint_peak_of: a metric name (e.g. ``iqa_fr/tid2013/srcc``) whose every new peak
            saves ``checkpoints/alignment-peak.ckpt``.
        tensorboard_figure: draw the trajectory figure into TensorBoard at each evaluation.
        prefix: logger namespace of the metrics.
        verbose: print one line per evaluation (rank 0): when, how long, and each probe's headline
            metric with its interval (``*``: a new peak beyond noise, i.e. better than every earlier
            evaluation beyond noise; ``~``: a new best value within noise), so a
            run's console shows alignment as it happens.
        bootstrap_resamples: resamples of the items behind each interval (0: no intervals).
        bootstrap_seed: seed of the resampled items (the same items at every evaluation, so that
            differences between evaluations are paired).
        confidence: level of the intervals.
        save_items: write every evaluation's per-item outputs under ``alignment_items/``.
    """

    def __init__(
        self,
        probes: list[Probe],
        data_root: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        every_n_steps_until: int | None = None,
        then_every_n_steps: int | None = None,
        baseline: bool = True,
        at_end: bool = True,
        batch_size: int = 256,
        num_workers: int = 4,
        checkpoint_peak_of: str | None = None,
        tensorboard_figure: bool = True,
        prefix: str = "alignment",
        verbose: bool = True,
        bootstrap_resamples: int = uncertainty.DEFAULT_RESAMPLES,
        bootstrap_seed: int = 0,
        confidence: float = 0.95,
        save_items: bool = True,
    ) -> None:
        super().__init__()
        self.schedule = EvaluationSchedule(every_n_epochs, every_n_steps, every_n_steps_until, then_every_n_steps)
        if bootstrap_resamples < 0:
            raise ValueError(f"AlignmentSuite.bootstrap_resamples must be >= 0 (0: no intervals), got {bootstrap_resamples}")
        if not 0 < confidence < 1:
            raise ValueError(f"AlignmentSuite.confidence must be in (0, 1), got {confidence}")
        names = [p.name for p in probes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"AlignmentSuite: probe names must differ; set `name:` on the probes named {duplicates}")
        self.probes = list(probes)
        self.data_root = data_root
        self.baseline = baseline
        self.at_end = at_end
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.checkpoint_peak_of = checkpoint_peak_of
        self.tensorboard_figure = tensorboard_figure
        self.prefix = prefix
        self.verbose = verbose
        self.bootstrap_resamples = bootstrap_resamples
        self.bootstrap_seed = bootstrap_seed
        self.confidence = confidence
        self.save_items = save_items

        self.history: list[dict[str, Any]] = []
        self.metric_info: dict[str, MetricInfo] = {}  # what each metric is, as its probe describes it
        self.tracker = PeakTracker(confidence)
        self.active: list[Probe] = []
        self._restored = False
        self._layout_written = False
        self._epoch_of_last_batch = 0
        self._position: dict[str, Any] | None = None  # where training is: {"step", "epoch", "epoch_end"}
        self._resumed_at: dict[str, Any] | None = None  # the position a restored checkpoint was written at
        self._run_dir: Path | None = None

    # ----------------------------------------------------------------------------- set-up
    @staticmethod
    def backbone_of(pl_module: pl.LightningModule):
        backbone = getattr(pl_module, "backbone", None)
        if backbone is None or not hasattr(backbone, "encode_image"):
            raise AttributeError(
                f"AlignmentSuite needs the LightningModule to keep its CLIPBackbone as `self.backbone`; "
                f"{type(pl_module).__name__} has none"
            )
        return backbone

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # training, or a series of models to measure (perceptlab evaluate: the validation loop)
        if stage == "fit" or (stage == "validate" and getattr(pl_module, "evaluates_checkpoints", False)):
            self.prepare(trainer, pl_module)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Pick the probes the backbone can serve and load their data (errors name probe and path)."""
        backbone = self.backbone_of(pl_module)
        has_text = bool(getattr(backbone, "has_text", True))
        self.active = [p for p in self.probes if has_text or not p.needs_text]
        skipped = [p.name for p in self.probes if p not in self.active]
        if skipped:
            rank_zero_info(
                f"AlignmentSuite: the backbone has no text tower (vision_only), so the text-based probes "
                f"are skipped: {', '.join(skipped)}"
            )
        start = time.perf_counter()
        for probe in self.active:
            probe.data_root = self.data_root
            probe.num_workers = self.num_workers
            try:
                # Reading data draws random numbers (a DataLoader seeds its workers from the global
                # generator): under a forked generator, adding a probe leaves training's draws as they were.
                with torch.random.fork_rng(devices=[]):
                    probe.prepare(backbone, rank=trainer.global_rank, world_size=trainer.world_size)
            except (FileNotFoundError, KeyError, ValueError) as exc:
                # Fail at start-up, naming the probe as well as the path, not after the first epoch.
                message = f"alignment probe {probe.name!r} ({probe.path}): {exc}"
                try:
                    wrapped = type(exc)(message)
                except TypeError:  # an exception type with another signature (UnicodeDecodeError, ...)
                    wrapped = RuntimeError(message)
                raise wrapped from exc
        rank_zero_info(
            f"AlignmentSuite: {len(self.active)} probe(s) ready in {time.perf_counter() - start:.1f} s: "
            + ", ".join(f"{p.name} ({p.n_items} items)" for p in self.active)
        )

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir is a collective (a broadcast from rank 0): read it here, on every process.
        self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if self._restored:
            self._write_files(trainer)
            self._evaluate_missed(trainer, pl_module)
        if self.baseline and not self._restored and trainer.global_step == 0 and not self.history:
            self.evaluate(trainer, pl_module, trigger="baseline", epoch=-1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._epoch_of_last_batch = trainer.current_epoch
        step = trainer.global_step
        self._position = {"step": int(step), "epoch": int(trainer.current_epoch),
                          "epoch_end": batch_idx + 1 >= trainer.num_training_batches}
        if step == 0 or not self.schedule.step_due(step):
            return
        if self.schedule.epoch_end_due(trainer.current_epoch) and batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch-end evaluation follows at this very step
        self.evaluate(trainer, pl_module, trigger="step", epoch=trainer.current_epoch)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "evaluates_checkpoints", False):
            self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: on every process

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """``perceptlab evaluate``: a model of the series has just been loaded; measure it at its own step."""
        if not (isinstance(outputs, dict) and "evaluated_model" in outputs) or trainer.sanity_checking:
            return
        self.evaluate(trainer, pl_module, trigger="model", epoch=outputs["epoch"], step=outputs["step"],
                      extra={"model": outputs["evaluated_model"]})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.epoch_end_due(trainer.current_epoch):
            self.evaluate(trainer, pl_module, trigger="epoch", epoch=trainer.current_epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and (not self.history or self.history[-1]["step"] != trainer.global_step):
            self.evaluate(trainer, pl_module, trigger="end", epoch=self._epoch_of_last_batch)

    def _evaluate_missed(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The evaluation due at the restored checkpoint's step that the checkpoint does not hold
        (written before it ran): measured now, on the checkpoint's weights, as the uninterrupted run did."""
        at, self._resumed_at = self._resumed_at, None
        if not at or any(r["step"] == at["step"] for r in self.history):
            return
        epoch_end = bool(at["epoch_end"]) and self.schedule.epoch_end_due(at["epoch"])
        if epoch_end or (at["step"] > 0 and self.schedule.step_due(at["step"])):
            rank_zero_info(f"AlignmentSuite: the checkpoint of step {at['step']} was written before its evaluation; "
                           "measuring it now")
            self.evaluate(trainer, pl_module, trigger="epoch" if epoch_end else "step", epoch=at["epoch"],
                          step=at["step"])

    # ------------------------------------------------------------------------- evaluation
    def describe(self, metric: str) -> MetricInfo:
        """What ``metric`` is, as its probe described it when it was measured (a history restored
        from a checkpoint of an earlier version: by the name rules of that version)."""
        info = self.metric_info.get(metric)
        if info is None:
            metrics = {m for r in self.history for m in r["metrics"]}
            info = self.metric_info[metric] = legacy_info(metric, [p.name for p in self.probes], metrics)
        return info

    def directions(self) -> dict[str, str]:
        return {name: self.describe(name).direction for record in self.history for name in record["metrics"]}

    def reliable_from(self) -> dict[str, int]:
        return {name: self.describe(name).reliable_from for record in self.history for name in record["metrics"]}

    def run_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Measurement:
        """Every active probe on the model as it is (``probes.runner.measure``)."""
        progress = self.verbose and getattr(pl_module, "evaluates_checkpoints", False)
        context = trainer_context(trainer, pl_module, self.backbone_of(pl_module), self.batch_size)
        return measure(self.active, context, pl_module, self.bootstrap_resamples,
                       self.bootstrap_seed, progress=rank_zero_info if progress else None)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, trigger: str, epoch: int,
                 step: int | None = None, extra: dict | None = None) -> dict | None:
        """Run the probes now and record, log and write the result (once per training step).

        ``perceptlab evaluate`` passes each checkpoint's own ``step`` and ``extra={"model": ...}``,
        with trigger ``model``: one record per model, whatever their steps.
        """
        if not self.active:
            return None
        step = trainer.global_step if step is None else int(step)
        if self.history and self.history[-1]["step"] == step and trigger not in ("baseline", "model"):
            if trigger == "epoch":  # due on both schedules at this step: it is the epoch-end one
                self.history[-1]["trigger"] = "epoch"
                self._write_files(trainer)
            return None
        measured = self.run_probes(trainer, pl_module)
        record = {"epoch": int(epoch), "step": int(step), "trigger": trigger,
                  "metrics": {k: finite(v) for k, v in measured.metrics.items()}}
        if measured.replicates:
            record["ci"] = uncertainty.intervals(measured.replicates, self.confidence)
        record["seconds"] = measured.seconds
        if self.save_items:
            record["items"] = run_record.items_path(step)
            self._write_items(trainer, step, measured.items)
        record.update(extra or {})
        self.metric_info.update(measured.info)
        self.history.append(record)
        # a model older than those already measured (a rerun on a folder) is put in step order
        self.history.sort(key=lambda r: r["step"])
        improved = self.tracker.update(epoch, step, record["metrics"], self.directions(),
                                       baseline=trigger == "baseline", replicates=measured.replicates or None,
                                       items=measured.counts, reliable_from=self.reliable_from())
        summary = self.summary() if trainer.is_global_zero else None  # the drop tests, computed once per evaluation
        self._write_files(trainer, summary)
        self._log(trainer, record, summary)
        if self.verbose:
            rank_zero_info(describe(record, headline_metrics(self.metric_info, record["metrics"]), self.tracker.surpassed,
                                    self.tracker.beyond_noise))
        if self.checkpoint_peak_of:
            if self.checkpoint_peak_of not in record["metrics"]:
                raise KeyError(
                    f"AlignmentSuite.checkpoint_peak_of={self.checkpoint_peak_of!r} is not a metric of this suite; "
                    f"metrics: {', '.join(sorted(record['metrics']))}"
                )
            if self.checkpoint_peak_of in improved:
                # Every process takes this branch (the metrics are gathered), as save_checkpoint needs.
                trainer.save_checkpoint(self.peak_checkpoint_path(trainer))
        return record

    # ---------------------------------------------------------------------------- outputs
    def run_dir(self, trainer: pl.Trainer) -> Path:
        """The run directory (``trainer.log_dir``), as read on every process at train start."""
        if self._run_dir is None:
            self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        return self._run_dir

    def peak_checkpoint_path(self, trainer: pl.Trainer) -> Path:
        return self.run_dir(trainer) / "checkpoints" / PEAK_CHECKPOINT_NAME

    def summary(self) -> dict[str, dict]:
        summary = self.tracker.summary()
        if self.checkpoint_peak_of in summary:
            summary[self.checkpoint_peak_of]["checkpoint"] = f"checkpoints/{PEAK_CHECKPOINT_NAME}"
        return summary

    def _write_files(self, trainer: pl.Trainer, summary: dict | None = None) -> None:
        if not trainer.is_global_zero:
            return
        # The whole file each time (it is small): a resumed run's file then equals the restored
        # history, and a crash never leaves half a line.
        run_dir = self.run_dir(trainer)
        run_record.write_evaluations(run_dir, self.history)
        run_record.write_summary(run_dir, summary if summary is not None else self.summary())
        run_record.write_metric_info(run_dir, {m: self.describe(m) for r in self.history for m in r["metrics"]})
        # the seed decides the resampled items: a report pairs two runs' replicates only when these agree
        run_record.write_bootstrap(run_dir, {k: (steps, reps.numpy()) for k, (steps, reps) in self.tracker.trajectories().items()},
                                   self.tracker.marks(), self.bootstrap_seed)

    def _write_items(self, trainer: pl.Trainer, step: int, items: dict[str, torch.Tensor]) -> None:
        if trainer.is_global_zero:
            run_record.write_items(self.run_dir(trainer), step, {k: v.cpu().numpy() for k, v in items.items()})

    def _log(self, trainer: pl.Trainer, record: dict, summary: dict) -> None:
        if not trainer.is_global_zero:
            return
        first = not self._layout_written
        self._layout_written = True
        info = {m: self.describe(m) for r in self.history for m in r["metrics"]}
        log_record(trainer.loggers, record, self.prefix, info, layout=first, summary=summary,
                   figure=(lambda: trajectory_figure(self.history, summary, info, title=self.prefix))
                   if self.tensorboard_figure else None)

    # ------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        # the peak and final replicates too: the drop intervals survive a resume (B floats per metric)
        return {"version": STATE_VERSION, "history": [dict(r) for r in self.history],
                "replicates": self.tracker.replicates_state(),
                "items": {name: e.items for name, e in self.tracker.entries.items() if e.items is not None},
                "metric_info": {name: info.to_json() for name, info in self.metric_info.items()},
                "position": self._position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # version 1 kept the peak and final replicates only: its drop intervals are not restored
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.metric_info = {k: MetricInfo.from_json(v) for k, v in (state_dict.get("metric_info") or {}).items()}
        self._resumed_at = self._position = state_dict.get("position")
        self.tracker = PeakTracker.from_history(self.history, self.directions(), state_dict.get("replicates"),
                                                level=self.confidence, items=state_dict.get("items"),
                                                reliable_from=self.reliable_from())
        self._restored = True
