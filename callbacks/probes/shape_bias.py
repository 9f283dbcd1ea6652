"""Shape-bias probe: 16-way zero-shot classification of texture-shape cue-conflict images.

Each image has the shape of one class and the texture of another (Geirhos et al., ICLR 2019);
the model's zero-shot decision is scored with the model-vs-human definition
(``scores.cue_conflict_scores``): ``shape_bias/<dataset>`` = shape / (shape + texture decisions),
higher = more shape-driven, i.e. more human-like (humans ~0.96, CLIP RN50 ~0.20);
``shape_bias/<dataset>/shape_acc`` and ``/texture_acc`` = shares of conflict items classified as
their shape / texture class.

Data: ``ROOT/<shape_class>/<shape><i>-<texture><j>.<ext>`` (labels come from the file name).
Needs a text tower; the suite skips it for vision-only backbones.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from perceptlab.core import scores
from perceptlab.core.images import IMAGE_SUFFIXES
from perceptlab.callbacks.probes.base import Items, ProbeContext, TableProbe, ZeroShotMixin, decode_images, select_items
from perceptlab.callbacks.probes.metric_info import MetricInfo

CUE_CONFLICT_CLASSES = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
)


class ShapeBiasProbe(ZeroShotMixin, TableProbe):
    """Shape bias, shape accuracy and texture accuracy on a cue-conflict set.

    Args:
        root: cue-conflict folder (``<shape_class>/<shape><i>-<texture><j>.png``).
        dataset: name used in metric names (default ``cue_conflict``).
        classes: the class names (default: the 16 of the stimulus set); prompts use them with
            ``_`` shown as a space.
        templates: prompt templates with one ``{}`` (default: open_clip's seven simple templates).
        max_items: default ``None`` (all 1,280 stimuli of the real set).
        **common: ``name``, ``layer``, ``batch_size``, ``seed`` of :class:`Probe`, declared there once.
    """

    family = "shape_bias"
    needs_text = True

    def __init__(
        self,
        root: str,
        dataset: str = "cue_conflict",
        classes: Sequence[str] = CUE_CONFLICT_CLASSES,
        templates: Sequence[str] | None = None,
        max_items: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, max_items=max_items, **common)  # name, layer, batch_size, seed: see Probe
        self._dataset = dataset
        self.classes = list(classes)
        self.templates = list(templates) if templates else None

    @property
    def dataset(self) -> str:
        return self._dataset

    def describe(self, metric: str) -> MetricInfo:
        """``<name>``: the shape bias, shape decisions / (shape + texture decisions), a ratio of two
        counts; ``<name>/shape_acc`` and ``/texture_acc``: means over the conflict images. Humans
        decide by texture on ~3 % of them: less texture accuracy is more human-like."""
        if metric == self.name:
            return MetricInfo(probe=self.name, family=self.family, statistic="ratio", headline=True)
        return MetricInfo(probe=self.name, family=self.family, direction="min" if metric.endswith("/texture_acc") else "max")

    def load_table(self) -> int:
        root = self.path
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name}: cue-conflict folder not found: {root}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{self.name}: no images under {root}")
        index = {c: i for i, c in enumerate(self.classes)}
        shapes, textures = [], []
        for f in files:
            shape, texture = scores.cue_conflict_labels(f.name)
            unknown = [c for c in (shape, texture) if c not in index]
            if unknown:
                raise ValueError(f"{f}: class {unknown[0]!r} is not among classes {self.classes}")
            shapes.append(index[shape])
            textures.append(index[texture])
        keep = select_items(len(files), self.max_items, self.seed)
        self.files = [files[i] for i in keep]
        self.shape_labels = torch.tensor([shapes[i] for i in keep])
        self.texture_labels = torch.tensor([textures[i] for i in keep])
        return len(keep)

    def load_images(self, items: list[int], transform: Callable) -> None:
        self.images = decode_images([self.files[i] for i in items], transform, self.num_workers)

    def measure(self, ctx: ProbeContext) -> Items:
        """Per image: the predicted class, the shape class and the texture class."""
        weights = self.zero_shot_weights(ctx, self.classes, self.templates)
        image = self.features(ctx, self.images, text_space=True)
        local = (image @ weights).argmax(dim=-1)
        return {self.name: {"predicted": self.gather_items(ctx, local), "shape": self.shape_labels,
                            "texture": self.texture_labels}}

    def score(self, items: Items) -> dict[str, float]:
        t = items[self.name]
        result = scores.cue_conflict_scores(t["predicted"], t["shape"], t["texture"])
        return {
            self.name: result["shape_bias"],
            f"{self.name}/shape_acc": result["shape_acc"],
            f"{self.name}/texture_acc": result["texture_acc"],
        }

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t, i = items[self.name], idx[self.name]
        conflict = (t["shape"] != t["texture"]).double()
        shape_hits = ((t["predicted"] == t["shape"]).double() * conflict)[i].sum(dim=-1)
        texture_hits = ((t["predicted"] == t["texture"]).double() * conflict)[i].sum(dim=-1)
        n = conflict[i].sum(dim=-1)
        return {  # 0 / 0 = nan, as the plain scores
            self.name: shape_hits / (shape_hits + texture_hits),
            f"{self.name}/shape_acc": shape_hits / n,
            f"{self.name}/texture_acc": texture_hits / n,
        }
