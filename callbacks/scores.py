"""Pure scoring functions of the alignment suite: tensors or lists in, numbers out.

No I/O, no models. Each function is the published definition, short enough to check by eye.
"""
from __future__ import annotations

import torch


def two_afc_per_item(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """DreamSim's 2AFC agreement of each triplet, in [0, 1] (higher = more human-like).

    ``d0``/``d1``: model distances of the reference to the left/right image, shape ``(n,)``;
    ``p``: share of people who judged the right image closer (NIGHTS ``right_vote``).
    The model "chooses" left when ``d0 < d1``; it scores the share of people who agree with it;
    a tie scores 0.5.
    """
    d0, d1, p = d0.float(), d1.float(), p.float().to(d0.device)
    return (d0 < d1).float() * (1 - p) + (d1 < d0).float() * p + (d0 == d1).float() * 0.5


def two_afc(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> float:
    """Mean 2AFC score over triplets: mean((d0<d1)(1-p) + (d1<d0)p + 0.5[d0==d1])."""
    return float(two_afc_per_item(d0, d1, p).mean())
