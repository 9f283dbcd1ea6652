"""NIGHTS 2AFC probe: does the model's image embedding pick the distortion people picked?

For each triplet the model's distances reference-left ``d0`` and reference-right ``d1`` (cosine
by default, as DreamSim) are scored with DreamSim's 2AFC against ``p`` = share of people who found
the right image closer: ``nights/2afc`` in [0, 1], higher = more human-like, 0.5 = chance for a
model that guesses. Beside it, ``nights/hard_accuracy``: the share of triplets where the image the
model finds closer is the one the majority chose (Hernandez-Camara et al.'s measure; with
``split: all``, ``min_votes: 0`` and ``distance: per_dimension_normalized_l2``, their whole protocol:
every triplet of ``data.csv``, their normalised distance). Reads NIGHTS through stage 1's reader
(``perceptlab.datamodules.nights``), so the probe and stage 1 agree on the vote filter and the splits.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

from perceptlab.core import scores, uncertainty
from perceptlab.callbacks.probes.base import Items, ProbeContext, TableProbe, select_items, to_uint8
from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.datamodules.nights import NightsTriplets


class NightsProbe(TableProbe):
    """DreamSim 2AFC on one NIGHTS split with the model's current embedding.

    Args:
        root: NIGHTS folder (``data.csv``, ``ref/``, ``distort/``).
        split: ``test`` (default), ``val``, ``train``, ``test_imagenet``, ``test_no_imagenet`` or
            ``all`` (every row of ``data.csv``).
        min_votes: keep triplets with at least this many votes (DreamSim: 6).
        distance: ``cosine`` (default, DreamSim's), ``l2`` or ``per_dimension_normalized_l2`` (each
            embedding dimension's squared difference divided by its mean over every pair of the
            split, Hernandez-Camara et al.'s; ``scores.per_dimension_normalized``).
        name: metric prefix (default ``nights``; set e.g. ``nights_imagenet`` for a second probe).
        **common: ``name``, ``max_items``, ``layer``, ``batch_size``, ``seed`` of :class:`Probe`,
            declared there once (``max_items`` counts triplets).
    """

    family = "nights"

    def __init__(
        self,
        root: str,
        split: str = "test",
        min_votes: int = 6,
        distance: str = "cosine",
        **common: Any,
    ) -> None:
        super().__init__(root, **common)  # name, max_items, layer, batch_size, seed: see Probe
        scores.check_distance(distance)
        self.split = split
        self.min_votes = min_votes
        self.distance = distance

    @property
    def name(self) -> str:
        return self._name or self.family

    def describe(self, metric: str) -> MetricInfo:
        """``<name>/2afc``: the share of votes the model's choice agrees with, a mean over triplets;
        ``<name>/hard_accuracy``: the share of triplets where it agrees with the majority."""
        return MetricInfo(probe=self.name, family=self.family, headline=metric == f"{self.name}/2afc")

    def load_table(self) -> int:
        self.triplets = NightsTriplets(self.path, self.split, transform=lambda im: im, min_votes=self.min_votes)
        self.kept = select_items(len(self.triplets), self.max_items, self.seed)
        self.p = torch.tensor(self.triplets.table["right_vote"].to_numpy()[self.kept], dtype=torch.float64)
        return len(self.kept)

    def load_images(self, items: list[int], transform: Callable) -> None:
        self.triplets.transform = lambda im: to_uint8(transform(im))
        with ThreadPoolExecutor(max_workers=max(1, self.num_workers)) as pool:
            rows = list(pool.map(self.triplets.__getitem__, [self.kept[i] for i in items]))
        empty = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        self.images = {k: torch.stack([r[k] for r in rows]) if rows else empty for k in ("ref", "left", "right")}

    def measure(self, ctx: ProbeContext) -> Items:
        """Per triplet: the distances reference-left ``d0`` and reference-right ``d1``, and ``p``."""
        ref, left, right = (self.features(ctx, self.images[k]) for k in ("ref", "left", "right"))
        d0, d1 = self.pair_distances(ctx, [(ref, left), (ref, right)], self.distance)
        return {self.name: {"d0": d0, "d1": d1, "p": self.p}}

    def score(self, items: Items) -> dict[str, float]:
        t = items[self.name]
        return {f"{self.name}/2afc": scores.two_afc(t["d0"], t["d1"], t["p"]),
                f"{self.name}/hard_accuracy": float(scores.hard_2afc_per_item(t["d0"], t["d1"], t["p"]).mean())}

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t, i = items[self.name], idx[self.name]
        return {f"{self.name}/2afc": uncertainty.mean(scores.two_afc_per_item(t["d0"], t["d1"], t["p"]), i),
                f"{self.name}/hard_accuracy": uncertainty.mean(scores.hard_2afc_per_item(t["d0"], t["d1"], t["p"]), i)}
