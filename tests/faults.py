"""Fault injection for the reliability tests: callbacks that break a real training on purpose."""
from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class KillAt(pl.Callback):
    """SIGKILL this process just before the batch that would be optimiser step ``step + 1``.

    A SIGKILL cannot be caught: nothing is saved, the run stops exactly as a node failure or an
    out-of-memory kill would stop it.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
