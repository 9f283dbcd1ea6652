"""Optimiser and schedule shared by the stage modules.

AdamW with open_clip's weight-decay exclusions and a cosine schedule with linear warm-up counted
in optimiser steps. The schedule's formula is open_clip_train's own (``open_clip_train.scheduler.
cosine_lr``, installed with the open_clip wheel); what is ours is the wrapping: ``cosine_lr``
returns a function that writes the lr into the optimiser at each step, while Lightning steps and
checkpoints a ``torch.optim.lr_scheduler`` object, so the factor is served through ``LambdaLR``
(with a floor ``min_lr_ratio`` and held at its last value past ``total_steps``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """open_clip's rule: biases, norms, gains, embeddings of rank < 2 and the logit scale."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    exclude: Callable[[str, nn.Parameter], bool] = no_weight_decay,
    **options,
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group (frozen ones dropped).

    ``exclude(name, param)`` says which parameters get no weight decay (open_clip's rule by
    default); ``options`` (e.g. ``lr=...``) go into both groups.
    """
    decay, no_decay = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        (no_decay if exclude(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, **options})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **options})
    return groups


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | Callable[[], int],
                       min_lr_ratio: float = 0.0):
    """LambdaLR: linear warm-up from ~0 to the base lr over ``warmup_steps``, then cosine to
    ``min_lr_ratio`` x base lr at ``total_steps``.

    ``total_steps`` may be a function, called once, at the first step past 0 (step 0's factor does
    not depend on it). The stage modules pass :func:`total_training_steps` this way: asked in
    ``configure_optimizers``, Lightning's ``estimated_stepping_batches`` builds the training loader
    before a resumed run's loop state is restored, and Lightning then never loads the loader's
    saved position into it -- a run resumed mid-epoch (any run with ``max_epochs``) read other
    batches than the uninterrupted one.
    """
    from open_clip_train.scheduler import cosine_lr

    warmup_steps = max(0, int(warmup_steps))

    class _Sink:  # cosine_lr writes the lr it computes into an optimiser's groups: give it a scratch one
        param_groups = [{}]

    resolved: list = []  # [total, open_clip's factor] once known

    def schedule() -> tuple[int, Callable[[int], float]]:
        if not resolved:
            total = max(warmup_steps + 1, int(total_steps() if callable(total_steps) else total_steps))
            resolved.extend([total, cosine_lr(_Sink(), 1.0, warmup_steps, total)])
        return resolved[0], resolved[1]

    def factor(step: int) -> float:
        if step == 0 and not resolved:
            # warm-up's first factor, or the cosine at its start (1): the same for any length
            f = cosine_lr(_Sink(), 1.0, warmup_steps, warmup_steps + 1)(0)
        else:
            total, open_clip_factor = schedule()
            f = open_clip_factor(min(step, total))
        return f if step < warmup_steps else min_lr_ratio + (1 - min_lr_ratio) * f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class AdamWCosine:
    """The optimiser and schedule every stage trains with: AdamW, a linear warm-up of
    ``warmup_steps`` optimiser steps, then a cosine decay to zero over the run (``optim`` of each
    stage module; a YAML block ``optim: {lr: ..., warmup_steps: ...}``).

    Args:
        lr: the peak learning rate.
        weight_decay: AdamW's decoupled decay, not applied to biases, norms, gains, scales and
            embeddings of rank < 2 (open_clip's rule, :func:`no_weight_decay`).
        betas: AdamW's betas.
        eps: AdamW's epsilon.
        warmup_steps: the linear warm-up, in optimiser steps.
    """

    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0

    @classmethod
    def of(cls, value: "AdamWCosine | dict") -> "AdamWCosine":
        """The group from itself or its fields (a checkpoint's hyper-parameters hold a dict)."""
        return value if isinstance(value, cls) else cls(**{**dict(value), "betas": tuple(dict(value).get("betas", cls.betas))})

    def as_dict(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas), "eps": self.eps,
                "warmup_steps": self.warmup_steps}


#: Where a stage module's optimiser arguments of earlier versions went (``commands.moved``).
MOVED_OPTIMISER_ARGUMENTS = {k: f"optim: {{{k}: ...}} (the optimiser and schedule group, core.optim.AdamWCosine)"
                             for k in ("lr", "weight_decay", "betas", "eps", "warmup_steps")}


def adamw_cosine(
    groups: list[dict],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    warmup_steps: int,
    total_steps: int | Callable[[], int],
    fused: bool | None = None,
) -> dict:
    """What ``LightningModule.configure_optimizers`` returns: AdamW over parameter ``groups``
    (:func:`param_groups`) + a per-step cosine schedule with linear warm-up.

    ``fused``: torch's fused AdamW kernel (one launch for every parameter; the same update up to
    float rounding). ``None``: fused when every parameter is a plain CUDA tensor (torch's own
    default would be its multi-tensor ``foreach`` path), else torch's default."""
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        plain_cuda = bool(params) and all(p.is_cuda and type(p.data) is torch.Tensor for p in params)
        fused = True if plain_cuda else None
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
    scheduler = cosine_with_warmup(optimizer, warmup_steps, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def total_training_steps(trainer) -> int:
    """Optimiser steps of the whole run as Lightning estimates them (max_steps or epochs x batches)."""
    steps = trainer.estimated_stepping_batches
    if steps is None or not math.isfinite(steps) or steps <= 0:
        return max(1, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else 1
    return int(steps)
