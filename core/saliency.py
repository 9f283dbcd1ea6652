"""Saliency-correspondence metrics of one image: a model's saliency map against where people looked.

The six metrics of Bylinskii et al. (2019, TPAMI, "What do different evaluation metrics tell us
about saliency models?"), each as pysaliency computes it (``tests/test_saliency.py`` runs
pysaliency on the same maps and asserts equality to 1e-9):

* ``auc_judd``: the ROC area of the map as a classifier of fixated against unfixated pixels, the
  thresholds at the fixated values (pysaliency ``AUC_per_image(nonfixations='unfixated',
  thresholds='fixations')``, i.e. ``AUC_Judd`` without its tie-breaking jitter);
* ``sauc``: shuffled AUC, the negatives the fixations of the *other* images of the set (which
  discounts a centre bias), every value a threshold (``nonfixations='shuffled'``);
* ``nss``: the map standardised over the image, averaged at the fixations;
* ``cc``: Pearson correlation of the map with the fixation density map;
* ``kld``: KL divergence of the model's density from the fixation density (lower is better), the
  MIT benchmark's regularisation (pysaliency ``MIT_KLDiv``);
* ``sim``: histogram intersection of the two densities.

Written here, not called from pysaliency: pysaliency builds from source with numba and Cython and
takes its own ``Stimuli``/``Fixations`` objects; what the probe needs is these few formulas on
arrays, one image at a time. Maps are float64 ``(H, W)`` arrays; fixations are integer pixel
coordinates ``xs`` (column) and ``ys`` (row).
"""
from __future__ import annotations

import numpy as np

METRICS = ("auc_judd", "sauc", "nss", "cc", "kld", "sim")
#: Metrics where lower is better.
LOWER_IS_BETTER = ("kld",)
_EPS = 2.2204e-16  # the MIT saliency benchmark's KL regularisation (MATLAB's eps)


def roc_auc(positives: np.ndarray, negatives: np.ndarray, judd: bool) -> float:
    """Area under the ROC curve of ``positives`` against ``negatives`` (pysaliency's
    ``general_roc``): thresholds at every value (``judd=False``), or at the positives only plus
    one above and one below everything (``judd=True``, Judd et al.'s AUC); at each threshold the
    hit rate is the share of positives >= it and the false-positive rate the share of negatives."""
    pos = np.sort(np.asarray(positives, dtype=np.float64))
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    if judd:
        thresholds = np.concatenate([[max(pos[-1], neg[-1]) + 1], pos, [min(pos[0], neg[0])]])
    else:
        thresholds = np.concatenate([pos, neg])
    thresholds = np.sort(thresholds)[::-1]
    hits = (len(pos) - np.searchsorted(pos, thresholds, side="left")) / len(pos)
    false = (len(neg) - np.searchsorted(neg, thresholds, side="left")) / len(neg)
    return float(np.trapezoid(np.concatenate([[0.0], hits]), np.concatenate([[0.0], false])))


def auc_judd(smap: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> float:
    fixated = np.zeros(smap.shape, dtype=bool)
    fixated[ys, xs] = True
    return roc_auc(smap[ys, xs], smap[~fixated], judd=True)


def shuffled_auc(smap: np.ndarray, xs: np.ndarray, ys: np.ndarray, other_xs: np.ndarray, other_ys: np.ndarray) -> float:
    """``other_xs``/``other_ys``: the other images' fixations, in this image's frame."""
    return roc_auc(smap[ys, xs], smap[other_ys, other_xs], judd=False)


def nss(smap: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> float:
    std = smap.std()
    values = smap[ys, xs] - smap.mean()
    return float((values / std if std else values).mean())


def cc(smap: np.ndarray, density: np.ndarray) -> float:
    a, b = smap.ravel() - smap.mean(), density.ravel() - density.mean()
    if not a.std():
        return 0.0 if b.std() else float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def to_density(smap: np.ndarray, minimum: float = 0.0) -> np.ndarray:
    """A map shifted to be non-negative, plus ``minimum``, divided by its sum (uniform if all 0)."""
    smap = smap - smap.min() if smap.min() < 0 else smap.astype(np.float64, copy=True)
    smap = smap + minimum
    total = smap.sum()
    return smap / total if total else np.full(smap.shape, 1.0 / smap.size)


def kld(smap: np.ndarray, density: np.ndarray) -> float:
    """KL(fixation density || model density) with the MIT benchmark's regularisation."""
    p, q = to_density(density), to_density(smap)
    return float((p * np.log(_EPS + p / (q + _EPS))).sum())


def sim(smap: np.ndarray, density: np.ndarray) -> float:
    return float(np.minimum(to_density(smap), to_density(density)).sum())


def image_metrics(smap: np.ndarray, density: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                  other_xs: np.ndarray, other_ys: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one image."""
    smap = np.asarray(smap, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    return {"auc_judd": auc_judd(smap, xs, ys), "sauc": shuffled_auc(smap, xs, ys, other_xs, other_ys),
            "nss": nss(smap, xs, ys), "cc": cc(smap, density), "kld": kld(smap, density), "sim": sim(smap, density)}


def center_bias(size: int, sigma: float = 0.25) -> np.ndarray:
    """An isotropic Gaussian centred on a ``size`` x ``size`` frame, its standard deviation
    ``sigma`` x ``size``: the centre-bias map, a model of where people look that ignores the image."""
    r = (np.arange(size, dtype=np.float64) - (size - 1) / 2) / (sigma * size)
    return np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2))


def blur(smap: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels (0: unchanged)."""
    if not sigma:
        return smap
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(smap, dtype=np.float64), sigma)
