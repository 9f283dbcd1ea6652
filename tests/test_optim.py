"""The stage modules' schedule is open_clip_train's cosine with warm-up, as a Lightning-steppable LambdaLR."""
from __future__ import annotations

import pytest
import torch
from open_clip_train.scheduler import cosine_lr

from perceptlab.core.optim import cosine_with_warmup


def test_schedule_equals_open_clip_train_on_its_steps_and_holds_after():
    lrs = []
    p = torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([p], lr=0.5)
    schedule = cosine_with_warmup(ours, warmup_steps=4, total_steps=20)
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    adjust = cosine_lr(reference, 0.5, 4, 20)
    for step in range(24):
        lrs.append(ours.param_groups[0]["lr"])
        expected = adjust(min(step, 20))  # open_clip_train's own trainer stops at its last step
        assert ours.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
        ours.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.5 / 4) and lrs[3] == pytest.approx(0.5) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
