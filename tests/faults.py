"""Fault injection for the reliability tests: callbacks that break a real training on purpose."""
from __future__ import annotations

import os
import signal

import lightning.pytorch as pl

WHEN = ("batch_start", "epoch_end")


class Killed(BaseException):
    """A kill inside the test process: no ``except Exception`` catches it and no checkpoint
    callback saves on it, so the files left are those a SIGKILL at the same point leaves."""


class KillAt(pl.Callback):
    """SIGKILL this process at optimiser step ``step``.

    ``when``: ``batch_start`` -- just before the batch that would be step ``step + 1`` (after every
    hook of step ``step``, its checkpoints included); ``epoch_end`` -- in ``on_train_epoch_end`` of
    the epoch ending at step ``step``, after the callbacks listed before this one (the alignment
    suite's epoch-end evaluation) and before Lightning's checkpoint callbacks, which run last.

    A SIGKILL cannot be caught: nothing is saved, the run stops exactly as a node failure or an
    out-of-memory kill would stop it.
    """

    def __init__(self, step: int, when: str = "batch_start", in_process: bool = False) -> None:
        if when not in WHEN:
            raise ValueError(f"KillAt.when must be one of {WHEN}, got {when!r}")
        self.step = step
        self.when = when
        self.in_process = in_process  # raise Killed instead (runs in the test's own process)

    def _kill(self, trainer: pl.Trainer, when: str) -> None:
        if when == self.when and trainer.global_step == self.step:
            if self.in_process:
                raise Killed(f"killed at step {self.step} ({when})")
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._kill(trainer, "batch_start")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._kill(trainer, "epoch_end")
