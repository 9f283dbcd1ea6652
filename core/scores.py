"""Pure scoring functions of the alignment suite: tensors or lists in, numbers out.

No I/O, no models. Each function is the published definition, short enough to check by eye.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional import kendall_rank_corrcoef, pearson_corrcoef, spearman_corrcoef

__all__ = [
    "two_afc_per_item", "two_afc", "cue_conflict_labels", "cue_conflict_scores", "shape_bias",
    "srcc", "plcc", "krcc", "correlations", "normalized_drop", "embedding_distance", "DISTANCES", "antonym_probability",
    "hard_2afc_per_item", "squared_differences", "per_dimension_normalized",
]


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


def hard_2afc_per_item(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Hard 2AFC accuracy of each triplet, 1 or 0: right when the image the model finds closer is
    the one the majority chose (``p`` > 0.5: the right one; < 0.5: the left one). A tie in the
    distances or in the votes scores 0, as in the scripts of Hernandez-Camara et al. (a triplet
    counts as correct only under a strict inequality that agrees with a strict majority)."""
    d0, d1, p = d0.float(), d1.float(), p.float().to(d0.device)
    return (((d1 < d0) & (p > 0.5)) | ((d0 < d1) & (p < 0.5))).float()


# ------------------------------------------------------------------------------- cue conflict
def cue_conflict_labels(filename: str) -> tuple[str, str]:
    """``(shape_class, texture_class)`` of a cue-conflict image name.

    Accepts the stimulus names ``airplane1-bicycle2.png`` (``<shape><i>-<texture><j>``, with or
    without extension or directory) and the model-vs-human response names
    ``0001_s5n_s01_0_bird_00_bird3-bird2.png``, whose last ``_``-separated field is the stimulus
    name. Digits are instance indices and are dropped.
    """
    stem = str(filename).replace("\\", "/").rsplit("/", 1)[-1]
    if "." in stem:
        stem = stem.rsplit(".", 1)[0]
    stem = stem.rsplit("_", 1)[-1]
    parts = stem.split("-")
    if len(parts) != 2:
        raise ValueError(f"not a cue-conflict name <shape><i>-<texture><j>: {filename!r}")
    shape, texture = ("".join(ch for ch in p if not ch.isdigit()) for p in parts)
    if not shape or not texture:
        raise ValueError(f"not a cue-conflict name <shape><i>-<texture><j>: {filename!r}")
    return shape, texture


def cue_conflict_scores(predicted: Sequence, shape_labels: Sequence, texture_labels: Sequence) -> dict[str, float]:
    """Shape bias with shape and texture accuracy, model-vs-human style.

    Items whose shape and texture class are equal carry no conflict and are dropped. On the rest:
    ``shape_acc`` = share of decisions for the shape class, ``texture_acc`` = share for the texture
    class (both in [0, 1]), ``shape_bias`` = shape / (shape + texture decisions), in [0, 1]
    (1 = decides by shape only; humans ~0.96). ``nan`` when no decision hits either cue.
    Labels may be class names or class indices, as long as all three agree.
    """
    predicted, shape_labels, texture_labels = (_as_list(v) for v in (predicted, shape_labels, texture_labels))
    if not len(predicted) == len(shape_labels) == len(texture_labels):
        raise ValueError(
            f"lengths differ: predicted {len(predicted)}, shape_labels {len(shape_labels)}, "
            f"texture_labels {len(texture_labels)}"
        )
    conflict = [(p, s, t) for p, s, t in zip(predicted, shape_labels, texture_labels) if s != t]
    n = len(conflict)
    shape_hits = sum(p == s for p, s, _ in conflict)
    texture_hits = sum(p == t for p, _, t in conflict)
    decided = shape_hits + texture_hits
    return {
        "shape_bias": shape_hits / decided if decided else float("nan"),
        "shape_acc": shape_hits / n if n else float("nan"),
        "texture_acc": texture_hits / n if n else float("nan"),
    }


def shape_bias(predicted: Sequence, shape_labels: Sequence, texture_labels: Sequence) -> float:
    """Shape decisions / (shape + texture decisions) over cue-conflict items, in [0, 1].

    Higher = more shape-driven, i.e. more human-like (humans average about 0.96). Items whose
    shape and texture class agree are dropped (Geirhos et al. 2019; model-vs-human).
    """
    return cue_conflict_scores(predicted, shape_labels, texture_labels)["shape_bias"]


def _as_list(values: Sequence) -> list:
    if isinstance(values, torch.Tensor):
        return values.tolist()
    return list(values)


# ------------------------------------------------------------------------------ correlations
def _correlation_inputs(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """float64 1-D copies, or ``None`` when a correlation is undefined (fewer than 3 items or a
    constant input; torchmetrics would return 0 or nan with a warning)."""
    pred = torch.as_tensor(pred).detach().flatten().to(torch.float64).cpu()
    target = torch.as_tensor(target).detach().flatten().to(torch.float64).cpu()
    if pred.numel() != target.numel():
        raise ValueError(f"pred has {pred.numel()} values, target {target.numel()}")
    if pred.numel() < 3 or bool((pred == pred[0]).all()) or bool((target == target[0]).all()):
        return None
    return pred, target


def srcc(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Spearman rank correlation in [-1, 1] (torchmetrics; ties get average ranks); nan if undefined."""
    xy = _correlation_inputs(pred, target)
    return float("nan") if xy is None else float(spearman_corrcoef(*xy))


def plcc(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson linear correlation in [-1, 1] of the raw scores (no logistic fit); nan if undefined."""
    xy = _correlation_inputs(pred, target)
    return float("nan") if xy is None else float(pearson_corrcoef(*xy))


def krcc(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Kendall rank correlation (tau-b) in [-1, 1] (torchmetrics); nan if undefined."""
    xy = _correlation_inputs(pred, target)
    return float("nan") if xy is None else float(kendall_rank_corrcoef(*xy, variant="b"))


def correlations(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``{"srcc", "plcc", "krcc"}`` of model scores against human scores, both higher = better.

    Orient both inputs before calling (e.g. pass ``-distance`` against MOS): a positive value then
    means the model agrees with people.
    """
    return {"srcc": srcc(pred, target), "plcc": plcc(pred, target), "krcc": krcc(pred, target)}


# ------------------------------------------------------------------------------------ noise
def normalized_drop(acc_clean, acc_noisy):
    """Relative accuracy lost under a perturbation: ``1 - acc_noisy / acc_clean``.

    0 = robust, 1 = down to zero accuracy (lower is better); nan when ``acc_clean`` is 0. Floats
    give a float; tensors (e.g. bootstrap replicates) an elementwise tensor.
    """
    if isinstance(acc_clean, torch.Tensor) or isinstance(acc_noisy, torch.Tensor):
        clean, noisy = torch.as_tensor(acc_clean), torch.as_tensor(acc_noisy)
        return torch.where(clean > 0, 1 - noisy / clean, torch.full_like(clean, float("nan")))
    return 1.0 - acc_noisy / acc_clean if acc_clean > 0 else float("nan")


# ------------------------------------------------------------------------- embedding distances
#: Pairwise distances of image embeddings. ``per_dimension_normalized_l2`` needs every pair of the
#: data set at once (:func:`per_dimension_normalized`); the others are row by row
#: (:func:`embedding_distance`).
DISTANCES = ("cosine", "l2", "per_dimension_normalized_l2")
#: Names of earlier versions that are no longer distances of their own.
RETIRED_DISTANCES = {"normalized_l2": "it was l2 / sqrt(d), a constant rescale of l2 (the same ranks, the same "
                                      "2AFC and correlations): use l2, or per_dimension_normalized_l2 for the "
                                      "per-dimension normalisation of Hernandez-Camara et al."}


def check_distance(kind: str) -> str:
    """``kind`` if it is a distance of :data:`DISTANCES`, else ``ValueError`` saying which to use."""
    if kind in RETIRED_DISTANCES:
        raise ValueError(f"distance {kind!r} is gone: {RETIRED_DISTANCES[kind]}")
    if kind not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {kind!r}")
    return kind


def embedding_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Row-wise distance between feature batches ``(n, d)`` -> ``(n,)``; 0 = identical.

    ``cosine``: 1 - cos(a, b), in [0, 2], blind to feature scale. ``l2``: Euclidean norm of the
    difference.
    """
    a, b = a.float(), b.float()
    if kind == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
    if kind == "l2":
        return (a - b).norm(dim=-1)
    check_distance(kind)
    raise ValueError(f"{kind} normalises over the whole data set: use squared_differences and per_dimension_normalized")


def squared_differences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-dimension squared differences of feature batches: ``(n, d)`` -> ``(n, d)``; for token
    features ``(n, tokens, d)``, averaged over the tokens (Hernandez-Camara et al.'s per-layer
    readout: every token, not the class token alone)."""
    s = (a.double() - b.double()) ** 2
    return s.mean(dim=1) if s.ndim == 3 else s


def per_dimension_normalized(*squared: torch.Tensor) -> list[torch.Tensor]:
    """Hernandez-Camara et al.'s distance for the pairs of one data set: each dimension's squared
    difference ``s_k`` divided by its mean ``m_k`` over **all** pairs given (every array, every
    row: the pairs of the whole data set, gathered from every process), then
    ``d = sqrt(mean_k s_k / m_k)``. ``squared``: arrays ``(n_i, d)`` of
    :func:`squared_differences`; returns one ``(n_i,)`` distance per array. A dimension that never
    differs (``m_k`` = 0) contributes 0."""
    m = torch.cat(squared).mean(dim=0)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return [(s / m).mean(dim=-1).sqrt() for s in squared]


def antonym_probability(image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                        logit_scale: float = 100.0) -> torch.Tensor:
    """CLIP-IQA: probability of the positive prompt of each antonym pair, averaged over pairs.

    ``image``: L2-normalised embeddings ``(n, d)``; ``positive``/``negative``: L2-normalised text
    embeddings ``(pairs, d)``. Per pair, softmax over ``logit_scale * cos`` of the two prompts;
    returns ``(n,)`` in [0, 1], higher = judged better quality.
    """
    pos = logit_scale * image.float() @ positive.float().T
    neg = logit_scale * image.float() @ negative.float().T
    return torch.stack([pos, neg], dim=-1).softmax(dim=-1)[..., 0].mean(dim=-1)
