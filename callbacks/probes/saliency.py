"""Saliency-correspondence probe: does the vision tower look where people look?

The model's saliency map of each image is its ViT's attention (``perceptlab.core.attention_maps``:
the last block's class-to-patch attention averaged over heads, or attention rollout), bilinearly
upsampled from the patch grid to the input frame, or the input gradient of the embedding's energy
(``gradient``, at full resolution), optionally blurred. The image, its fixation
density map and its fixation points are all put into that frame by the model's own eval transform
(resize, centre crop; points through ``core.transforms.point_frame``, points cropped away dropped),
so the map, the fixations and what the model saw are the same pixels. Per image the six metrics of
``perceptlab.core.saliency`` -- ``auc_judd``, ``sauc`` (negatives: the other images' fixations),
``nss``, ``cc``, ``kld`` (lower is better), ``sim`` -- averaged over images:
``saliency/<dataset>/<metric>``, ``nss`` the headline.

Reference line: a centre-bias Gaussian (``center_sigma`` of the frame's side), scored the same way,
``saliency/<dataset>/center_bias/<metric>``: a model no better than it has no saliency alignment
beyond looking at the middle.

Data: MIT1003, CAT2000 or SALICON in their published layouts (``perceptlab.datamodules.fixations``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from perceptlab.callbacks.probes.base import Items, ProbeContext, TableProbe, decode_images, select_items
from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.core import saliency, uncertainty
from perceptlab.core.attention_maps import METHODS, attention_maps, upsample
from perceptlab.core.images import to_rgb
from perceptlab.core.transforms import point_frame
from perceptlab.datamodules.fixations import LAYOUTS, read_fixation_set


class SaliencyProbe(TableProbe):
    """Saliency metrics of the model's attention maps against human fixations.

    Args:
        root: the fixation set's folder.
        layout: ``mit1003`` (default), ``cat2000`` or ``salicon``.
        split: SALICON's ``train``/``val`` (default ``val``), CAT2000's set folder.
        method: ``attention`` (the last block's class-token attention, heads averaged), ``rollout``
            or ``gradient`` (the input gradient of the embedding's squared norm).
        blur: Gaussian blur of the upsampled map, as a fraction of the frame's side (0: none).
        center_sigma: the centre-bias reference's standard deviation, a fraction of the side.
        max_items: default ``None`` (every image; MIT1003 has 1,003).
        **common: ``name``, ``batch_size``, ``seed`` of :class:`Probe`, declared there once.
    """

    family = "saliency"

    def __init__(self, root: str, layout: str = "mit1003", split: str = "val", method: str = "attention",
                 blur: float = 0.0, center_sigma: float = 0.25, max_items: int | None = None, **common: Any) -> None:
        super().__init__(root, max_items=max_items, **common)  # name, batch_size, seed: see Probe
        if layout not in LAYOUTS:
            raise ValueError(f"SaliencyProbe.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if method not in METHODS:
            raise ValueError(f"SaliencyProbe.method must be one of {', '.join(METHODS)}, got {method!r}")
        if self.layer is not None:
            raise ValueError("SaliencyProbe reads attention, not a layer's features: leave layer unset")
        self.layout, self.split, self.method = layout, split, method
        self.blur, self.center_sigma = float(blur), float(center_sigma)

    def describe(self, metric: str) -> MetricInfo:
        """``<name>/<metric>``: a mean over images of a per-image saliency metric (``kld``: lower is
        better); ``<name>/center_bias/<metric>``: the centre-bias map's, a model-free reference line
        drawn in the metric's chart."""
        parts = metric[len(self.name) + 1:].split("/")
        stat = parts[-1]
        direction = "min" if stat in saliency.LOWER_IS_BETTER else "max"
        # one chart (and figure panel) per statistic: the model's value and the centre bias's
        return MetricInfo(probe=self.name, family=self.family, direction=direction, reference=len(parts) == 2,
                          headline=parts == ["nss"], chart=f"{self.name}/{stat}")

    # -- data ------------------------------------------------------------------------------------
    def load_table(self) -> int:
        self.rows = read_fixation_set(self.path, self.layout, self.split)
        self.kept = select_items(len(self.rows), self.max_items, self.seed)
        return len(self.kept)

    def load_images(self, items: list[int], transform: Callable) -> None:
        """This process's images; every kept image's density map and fixation points in the model's
        frame (each process scores all images once the maps are gathered), and the centre bias."""
        rows = [self.rows[i] for i in self.kept]
        self.images = decode_images([rows[i].image for i in items], transform, self.num_workers)
        self.densities, self.points = [], []
        for row in rows:
            with Image.open(row.image) as im:
                width, height = im.size
            x, y, inside = point_frame(transform, width, height)(row.xs, row.ys)
            with Image.open(row.density) as im:
                self.densities.append(transform(to_rgb(im))[0].double().numpy())
            self.points.append((x[inside], y[inside]))
        empty = [str(r.image) for r, (x, _) in zip(rows, self.points) if not len(x)]
        if empty:
            raise ValueError(f"{self.name}: every fixation of {len(empty)} image(s) falls outside the model's "
                             f"centre crop (first: {empty[0]}); these images cannot be scored")
        self.size = self.densities[0].shape[0]
        center = saliency.center_bias(self.size, self.center_sigma)
        self.center = self._metrics([center] * len(rows))

    def _metrics(self, maps: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Per image, every metric of ``maps`` (one per kept image, in the model's frame)."""
        # every image's fixations in one array; image i's shuffled-AUC negatives are the rest (two slices)
        all_x = np.concatenate([p[0] for p in self.points])
        all_y = np.concatenate([p[1] for p in self.points])
        ends = np.cumsum([len(p[0]) for p in self.points])
        out: dict[str, list[float]] = {m: [] for m in saliency.METRICS}
        for i, smap in enumerate(maps):
            start, end = (ends[i - 1] if i else 0), ends[i]
            rest = (slice(0, start), slice(end, None)) if len(maps) > 1 else (slice(start, end),)
            other_x = np.concatenate([all_x[r] for r in rest])
            other_y = np.concatenate([all_y[r] for r in rest])
            xs, ys = all_x[start:end], all_y[start:end]
            for k, v in saliency.image_metrics(smap, self.densities[i], xs, ys, other_x, other_y).items():
                out[k].append(v)
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}

    # -- measuring -------------------------------------------------------------------------------
    def saliency_maps(self, ctx: ProbeContext, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(n, 3, S, S)`` -> the model's maps on the patch grid ``(n, gh, gw)``."""
        bs = self.batch_size or ctx.batch_size
        out = []
        for start in range(0, images.shape[0], bs):
            x = ctx.backbone.normalize(self.pixels(ctx, images[start:start + bs])).to(ctx.input_dtype)
            with ctx.autocast():
                out.append(attention_maps(ctx.backbone.visual, x, self.method))
        return torch.cat(out) if out else torch.empty(0, 0, 0, device=ctx.device)

    def measure(self, ctx: ProbeContext) -> Items:
        """Per image: each metric of the model's map and of the centre-bias map."""
        grid = self.gather_items(ctx, self.saliency_maps(ctx, self.images))
        maps = upsample(grid.double(), self.size).double().numpy()
        sigma = self.blur * self.size
        model = self._metrics([saliency.blur(m, sigma) for m in maps])
        return {self.name: {**model, **{f"center_bias/{k}": v for k, v in self.center.items()}}}

    def score(self, items: Items) -> dict[str, float]:
        return {f"{self.name}/{k}": float(v.mean()) for k, v in items[self.name].items()}

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"{self.name}/{k}": uncertainty.mean(v, idx[self.name]) for k, v in items[self.name].items()}
