"""Callbacks that keep long trainings safe on shared clusters.

* :class:`NonFiniteLossGuard` stops training at the first NaN/inf loss, *before* its backward
  pass, so the weights and the last checkpoint on disk are the last good ones; the error names the
  global step.
* :class:`PreemptionCheckpoint` saves ``last.ckpt`` when the job receives SIGTERM (what SLURM and
  most schedulers send before killing a job), so ``--ckpt_path last`` resumes where it stopped.
  Lightning turns SIGTERM into ``SIGTERMException`` at the next batch boundary on every rank; this
  callback writes the checkpoint in ``on_exception``.

The share of corrupt samples above which stage 2 stops is ``max_skipped_share`` of
``ContrastivePretrainModule`` (the module sees the per-batch skip counts the loaders report).

Checkpoint writes are atomic already: Lightning serialises to memory and writes through an
fsspec transaction (a temporary file moved into place), so a kill during a save leaves the
previous ``last.ckpt`` intact (tested in ``tests/test_reliability.py``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` at the first non-finite training loss, before backward."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach().float().sum())
        if not math.isfinite(value):
            ckpt = _last_checkpoint(trainer)
            where = f"; the last good checkpoint is {ckpt}" if ckpt else "; no checkpoint was written yet"
            raise NonFiniteLossError(
                f"training loss is {value} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1})"
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
