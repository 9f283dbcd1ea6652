"""When the alignment suite evaluates: its epoch and step schedule, one owner of the arithmetic.

Once before training (the baseline, ``epoch: -1, step: 0``), after every ``every_n_epochs``
epochs (``epoch`` = Lightning's 0-based index of the epoch just finished, as in checkpoint names
``epoch=N``), every ``every_n_steps`` optimiser steps up to ``every_n_steps_until`` and every
``then_every_n_steps`` steps after it (``epoch`` = the epoch in progress), and at the end of
training if the last step was not evaluated yet. Never twice at one step: an evaluation due on
both schedules is recorded once, as the epoch-end one.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationSchedule:
    every_n_epochs: int | None = 1
    every_n_steps: int | None = None
    every_n_steps_until: int | None = None
    then_every_n_steps: int | None = None

    def __post_init__(self) -> None:
        for key in ("every_n_epochs", "every_n_steps", "every_n_steps_until", "then_every_n_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"AlignmentSuite.{key} must be a positive integer or null, got {value}")
        if self.then_every_n_steps is not None and self.every_n_steps_until is None:
            raise ValueError("AlignmentSuite.then_every_n_steps needs every_n_steps_until (the step where it takes over)")

    def step_due(self, step: int) -> bool:
        """Whether the step schedule evaluates after optimiser step ``step``."""
        early = self.every_n_steps_until is None or step <= self.every_n_steps_until
        every = self.every_n_steps if early else self.then_every_n_steps
        return bool(every) and step % every == 0

    def epoch_end_due(self, epoch: int) -> bool:
        """Whether the epoch schedule evaluates at the end of 0-based epoch ``epoch``."""
        return bool(self.every_n_epochs) and (epoch + 1) % self.every_n_epochs == 0
