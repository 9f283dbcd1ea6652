"""Noise-robustness probe: zero-shot top-1 accuracy, clean and under Gaussian pixel noise.

Gaussian noise of standard deviation ``sigma`` (in units of the [0, 1] pixel range) is added to
the resized, cropped image before the backbone's normalisation and clipped back to [0, 1]. The
noise pattern of an item is fixed (drawn from ``seed`` and the item's index) and shared by all
sigmas, so changes across evaluations come from the model alone and the accuracy-vs-sigma curve
is not blurred by resampling.

Metrics: ``noise/<dataset>/acc@sigma=0`` (clean) and ``acc@sigma=<s>`` (in [0, 1], higher is
better), ``drop@sigma=<s>`` = 1 - acc_noisy / acc_clean and ``noise/<dataset>/drop``, its mean over
the sigmas (lower is more robust).

Data: an image folder ``ROOT/<class>/*.png`` (class names from folder names), or a Hugging Face
data set (``hf_dataset``: a local parquet file, a ``save_to_disk`` folder or a hub id; its label
column a ``ClassLabel`` or class-name strings). Needs a text tower (zero-shot classifier).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from perceptlab.callbacks.probes.base import (
    Items,
    ProbeContext,
    TableProbe,
    ZeroShotMixin,
    decode_images,
    select_items,
    to_uint8,
)
from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.core import scores, uncertainty
from perceptlab.datamodules.image_text.common import decode_image
from perceptlab.datamodules.labelled_images import read_labelled_images


class NoiseRobustnessProbe(ZeroShotMixin, TableProbe):
    """Zero-shot accuracy clean and under pixel-space Gaussian noise.

    Args:
        root: image folder ``<class>/*.png`` (ignored when ``hf_dataset`` is set).
        dataset: name used in metric names (default: the folder's name).
        sigmas: noise standard deviations in [0, 1] pixel units (0 is always evaluated).
        classes: class names in label order (default: sorted folder names / the ClassLabel names).
        templates: prompt templates with one ``{}`` (default: open_clip's seven simple templates).
        hf_dataset / hf_split / image_column / label_column: read a Hugging Face data set instead.
        **common: ``name``, ``max_items``, ``layer``, ``batch_size``, ``seed`` of :class:`Probe`, declared there once.
    """

    family = "noise"
    needs_text = True

    def __init__(
        self,
        root: str = "",
        dataset: str | None = None,
        sigmas: Sequence[float] = (0.05, 0.1, 0.2),
        classes: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        hf_dataset: str | None = None,
        hf_split: str = "test",
        image_column: str = "image",
        label_column: str = "label",
        **common: Any,
    ) -> None:
        super().__init__(root, **common)  # name, max_items, layer, batch_size, seed: see Probe
        if not root and not hf_dataset:
            raise ValueError("NoiseRobustnessProbe needs root (an image folder) or hf_dataset")
        bad = [s for s in sigmas if not 0 < float(s) <= 1]
        if bad:
            raise ValueError(f"sigmas are standard deviations in (0, 1] pixel units, got {bad}")
        self.sigmas = sorted(float(s) for s in sigmas)
        self._dataset = dataset
        self.classes = list(classes) if classes else None
        self.templates = list(templates) if templates else None
        self.hf_dataset = hf_dataset
        self.hf_split = hf_split
        self.image_column = image_column
        self.label_column = label_column

    @property
    def dataset(self) -> str:
        if self._dataset:
            return self._dataset
        source = self.hf_dataset or str(self.root)
        return Path(source).stem if source.endswith(".parquet") else Path(source).name

    def describe(self, metric: str) -> MetricInfo:
        """``<name>/acc@sigma=s``: accuracy, a mean; ``<name>/drop@sigma=s``: the normalised drop
        ``1 - acc_s / acc_0``, a ratio of two means (lower is more robust); ``<name>/drop``, their
        mean over the levels, is the headline."""
        if "/drop" in metric:
            return MetricInfo(probe=self.name, family=self.family, direction="min", statistic="relative_drop",
                              headline=metric == f"{self.name}/drop")
        return MetricInfo(probe=self.name, family=self.family)

    # -- data -------------------------------------------------------------------------------
    def load_table(self) -> int:
        # the one labelled-image reader (stage 2's zero-shot validation reads through it too)
        source = self.hf_dataset or self.path
        try:
            found = read_labelled_images(source, "hf" if self.hf_dataset else "imagefolder", self.hf_split,
                                         self.image_column, self.label_column, self.classes)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        self.classes = found.classes
        self.found = found
        self.kept = select_items(len(found), self.max_items, self.seed)
        self.labels = torch.tensor([found.labels[i] for i in self.kept])
        return len(self.kept)

    def load_images(self, items: list[int], transform: Callable) -> None:
        rows = [self.kept[i] for i in items]
        if self.found.paths is not None:
            self.images = decode_images(self.found.images(rows), transform, self.num_workers)
        else:
            self.images = torch.stack([to_uint8(transform(decode_image(im))) for im in self.found.images(rows)]) \
                if rows else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        self.item_ids = torch.tensor(rows, dtype=torch.long)

    # -- scoring ----------------------------------------------------------------------------
    def unit_noise(self, item_ids: list[int], shape: torch.Size) -> torch.Tensor:
        """Standard normal noise ``(len(item_ids), *shape)``, one fixed pattern per item index."""
        out = torch.empty((len(item_ids), *shape))
        for j, item in enumerate(item_ids):
            out[j] = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + item))
        return out

    def measure(self, ctx: ProbeContext) -> Items:
        """Per image: its label and the predicted class at each noise level."""
        weights = self.zero_shot_weights(ctx, self.classes, self.templates)
        levels = [0.0, *self.sigmas]
        bs = self.batch_size or ctx.batch_size
        predictions: list[list[torch.Tensor]] = [[] for _ in levels]
        for start in range(0, self.images.shape[0], bs):
            x = self.pixels(ctx, self.images[start:start + bs])
            # One noise draw per batch, shared by every sigma (see the module docstring).
            z = self.unit_noise(self.item_ids[start:start + bs].tolist(), x.shape[1:]).to(x.device)
            for k, sigma in enumerate(levels):
                noisy = (x + sigma * z).clamp_(0, 1) if sigma else x
                predictions[k].append((self.encode_batch(ctx, noisy, text_space=True) @ weights).argmax(dim=-1))
        out = {"label": self.labels}
        for k, sigma in enumerate(levels):
            local = torch.cat(predictions[k]) if predictions[k] else torch.zeros(0, dtype=torch.long, device=ctx.device)
            out[f"predicted@sigma={_fmt(sigma)}"] = self.gather_items(ctx, local)
        return {self.name: out}

    def score(self, items: Items) -> dict[str, float]:
        t = items[self.name]
        accuracy = {s: float((t[f"predicted@sigma={_fmt(s)}"] == t["label"]).float().mean()) if len(t["label"])
                    else float("nan") for s in [0.0, *self.sigmas]}
        return self._metrics(accuracy)

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = items[self.name]
        accuracy = {s: uncertainty.mean((t[f"predicted@sigma={_fmt(s)}"] == t["label"]).double(), idx[self.name])
                    for s in [0.0, *self.sigmas]}
        return self._metrics(accuracy)

    def _metrics(self, accuracy: dict) -> dict:
        """Accuracies (floats, or ``(B,)`` replicates) -> the metrics, through the one drop formula."""
        metrics = {f"{self.name}/acc@sigma={_fmt(s)}": a for s, a in accuracy.items()}
        drops = {s: scores.normalized_drop(accuracy[0.0], accuracy[s]) for s in self.sigmas}
        metrics.update({f"{self.name}/drop@sigma={_fmt(s)}": d for s, d in drops.items()})
        metrics[f"{self.name}/drop"] = sum(drops.values()) / len(drops) if drops else float("nan")
        return metrics


def _fmt(sigma: float) -> str:
    return f"{sigma:g}"
