"""Callbacks that keep long trainings safe on shared clusters.

* :class:`NonFiniteLossGuard` stops training at the first NaN/inf loss, *before* its backward
  pass, so the weights and the last checkpoint on disk are the last good ones; the error names the
  global step.
* :class:`PreemptionCheckpoint` saves ``last.ckpt`` when the job receives SIGTERM (what SLURM and
  most schedulers send before killing a job), so ``--ckpt_path last`` resumes where it stopped.
  Lightning turns SIGTERM into ``SIGTERMException`` at the next batch boundary on every rank; this
  callback writes the checkpoint in ``on_exception``.
* :class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` with ``last.ckpt`` written after
  every epoch's ``on_train_epoch_end`` hooks (the alignment suite's epoch evaluation among them)
  and when ``fit`` ends. Lightning's own writes none at epoch ends when a step interval is set
  (``--checkpoint_every_n_steps``; the last interval's write precedes those hooks), none when
  ``max_steps`` stops mid-epoch (the next stage would load weights a few steps old), and, when
  validation does not run every epoch, writes at validation end, before the hooks. A step
  interval that falls on an epoch's last batch is saved after the epoch-end hooks too: written in
  ``on_train_batch_end`` it would miss that epoch's evaluation, and Lightning 2.6 resumes such a
  checkpoint one epoch ahead (it counts the epoch as finished twice).
* :class:`RNGStateCheckpoint` stores the random generators (torch, CUDA, numpy, python) in every
  checkpoint and restores them on resume, so a resumed run draws the same dropout, patch-dropout
  and augmentation numbers as the uninterrupted run (Lightning restores weights, optimiser,
  schedulers, loop counters and stateful data loaders, but not the generators).

The share of corrupt samples above which stage 2 stops is ``max_skipped_share`` of
``ContrastivePretrainModule`` (the module sees the per-batch skip counts the loaders report).

Checkpoint writes are atomic already: Lightning serialises to memory and writes through an
fsspec transaction (a temporary file moved into place), so a kill during a save leaves the
previous ``last.ckpt`` intact (tested in ``tests/test_reliability.py``).
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` at the first non-finite training loss, before backward."""

    def __init__(self) -> None:
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach().float().sum())
        if not math.isfinite(value):
            ckpt = _last_checkpoint(trainer)
            where = f"; the last good checkpoint is {ckpt}" if ckpt else "; no checkpoint was written yet"
            raise NonFiniteLossError(
                f"training loss is {value} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {self._batch_idx})"
                f"{where}. Lower the learning rate, check the data, or resume with --ckpt_path last."
            )


class PreemptionCheckpoint(Callback):
    """Save ``<checkpoint dir>/last.ckpt`` when SIGTERM interrupts ``fit``."""

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        dirpath = _checkpoint_dir(trainer)
        if dirpath is None:
            log.warning("SIGTERM received but no checkpoint directory is configured: nothing saved")
            return
        path = Path(dirpath) / self.filename
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning("SIGTERM received: saved %s at global step %d; resume with --ckpt_path last",
                        path, trainer.global_step)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is written after the epoch-end hooks and when fit ends.

    A run resumed from a ``last.ckpt`` written before ``on_train_epoch_end`` would miss that
    epoch's alignment evaluation; one written some steps before the end of ``fit`` would hand the
    next stage stale weights. Here ``last.ckpt`` is written once per epoch end, after those hooks
    (an epoch-end validation leaves it to them), and at the end of ``fit`` if the last step has
    not been saved. The top-k files are Lightning's as usual.
    """

    # Lightning has no public hook for "write last.ckpt now": this class overrides ModelCheckpoint's
    # _save_last_checkpoint and calls it with _monitor_candidates, and reads _last_global_step_saved
    # (the step of its latest write). These three are the only private Lightning names perceptlab
    # uses; tests/test_reliability.py fails if Lightning renames them or changes their signatures.

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_writes = 0
        self._defer_last = False
        self._deferred_batch_end: tuple | None = None
        self._at_last_batch = False  # the batch in progress is its epoch's last

    def _fitting(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._at_last_batch = batch_idx + 1 >= trainer.num_training_batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._fitting(trainer) and batch_idx + 1 >= trainer.num_training_batches:
            self._deferred_batch_end = (outputs, batch, batch_idx)  # replayed in on_train_epoch_end
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if self._defer_last:
            return  # written in on_train_epoch_end, after the epoch-end hooks
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_writes += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._defer_last = self._fitting(trainer) and self._at_last_batch
        try:
            super().on_validation_end(trainer, pl_module)
        finally:
            self._defer_last = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writes = self._last_writes
        deferred, self._deferred_batch_end = self._deferred_batch_end, None
        if deferred is not None:  # the last batch's step-interval save, now after the epoch's hooks
            super().on_train_batch_end(trainer, pl_module, *deferred)
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and self._last_writes == writes and self._fitting(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # e.g. max_steps reached mid-epoch after the last step interval
        if self.save_last and self._last_global_step_saved != trainer.global_step and self._fitting(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RNGStateCheckpoint(Callback):
    """Save the random generators' states with each checkpoint; restore them when training resumes.

    The states are taken when the checkpoint is written and put back just before the next
    training batch of the resumed run -- the first batch after a mid-epoch checkpoint, or the start
    of the next epoch after an epoch-end one -- which is where the uninterrupted run next draws
    from them (the data loaders' own generators come back with their state, see
    ``datamodules``). Under DDP every rank starts from the same seed and draws the same numbers,
    so rank 0's states are stored and restored on every rank. CUDA states are restored only on a
    machine with the same number of GPUs (a GPU checkpoint resumed on a CPU keeps the CPU states).
    """

    KEY = "rng_states"

    def __init__(self) -> None:
        self._pending: dict | None = None
        self._at_last_batch = False  # the batch in progress is its epoch's last

    @staticmethod
    def collect() -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types only: Lightning loads checkpoints with ``weights_only=True``
        numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}
        states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    @staticmethod
    def restore(states: dict) -> None:
        torch.set_rng_state(states["torch"])
        n = states["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate(states["python"])
        cuda = states.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # saved after the epoch's last batch (epoch-end validation or checkpoint): the next draw
        # of the uninterrupted run is at the start of the next epoch
        checkpoint[self.KEY] = {"states": self.collect(), "epoch_end": self._at_last_batch}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(self.KEY)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None and self._pending["epoch_end"]:
            self.restore(self._pending["states"])
            self._pending = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._at_last_batch = batch_idx + 1 >= trainer.num_training_batches
        if self._pending is not None:
            self.restore(self._pending["states"])
            self._pending = None


def _checkpoint_dir(trainer: pl.Trainer) -> str | None:
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return cb.dirpath
    return None


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    dirpath = _checkpoint_dir(trainer)
    if dirpath and (Path(dirpath) / "last.ckpt").is_file():
        return str(Path(dirpath) / "last.ckpt")
    return None
