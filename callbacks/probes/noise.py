"""Noise-robustness probe: zero-shot top-1 accuracy, clean and under Gaussian pixel noise.

Gaussian noise of standard deviation ``sigma`` (in units of the [0, 1] pixel range) is added, and
the image clipped back to [0, 1], where ``noise_at`` says: ``input`` (default) in the model's input
frame, after the resize and crop, before the normalisation; ``native`` at the image's own
resolution, before the resize (CIFAR's 32 px: the noise is then upsampled with the image, as in a
pipeline that corrupts the stored images). With ``native`` the resize and crop are the eval
transform's own steps applied to tensors (bicubic with antialiasing, as torchvision does on
tensors: within a few grey levels of PIL's), for the clean images too, so clean and noisy differ by
the noise alone. The noise pattern of an item is fixed (drawn from ``seed`` and the item's index)
and shared by all sigmas, so changes across evaluations come from the model alone and the
accuracy-vs-sigma curve is not blurred by resampling.

Metrics: ``noise/<dataset>/acc@sigma=0`` (clean) and ``acc@sigma=<s>`` (in [0, 1], higher is
better), ``drop@sigma=<s>`` = 1 - acc_noisy / acc_clean and ``noise/<dataset>/drop``, its mean over
the sigmas (lower is more robust).

Data: an image folder ``ROOT/<class>/*.png`` (class names from folder names), CIFAR's python
pickles (``ROOT`` = ``cifar-100-python``, found by its ``meta`` file), or a Hugging Face data set
(``hf_dataset``: a local parquet file, a ``save_to_disk`` folder or a hub id; its label column a
``ClassLabel`` or class-name strings). ``preset: cifar100`` is the texture-bias paper's set: the
CIFAR-100 test split (10,000 images), CLIP_benchmark's 18 CIFAR-100 templates, the Hugging Face
``cifar100`` columns (``img``, ``fine_label``). Needs a text tower (zero-shot classifier).
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
from perceptlab.datamodules.labelled_images import clip_benchmark_templates, read_labelled_images

#: Data-set presets: name in metrics, CLIP_benchmark's templates, Hugging Face columns.
PRESETS = {"cifar100": {"templates": "cifar100", "image_column": "img", "label_column": "fine_label"}}
NOISE_AT = ("input", "native")


class NoiseRobustnessProbe(ZeroShotMixin, TableProbe):
    """Zero-shot accuracy clean and under pixel-space Gaussian noise.

    Args:
        root: image folder ``<class>/*.png`` (ignored when ``hf_dataset`` is set).
        dataset: name used in metric names (default: the folder's name).
        sigmas: noise standard deviations in [0, 1] pixel units (0 is always evaluated).
        classes: class names in label order (default: sorted folder names / the ClassLabel names).
        templates: prompt templates with one ``{}`` (default: open_clip's seven simple templates).
        hf_dataset / hf_split / image_column / label_column: read a Hugging Face data set instead.
        preset: ``cifar100``: CLIP_benchmark's templates and the Hugging Face columns of that set
            (the data set's own class names, as CLIP_benchmark reads them).
        noise_at: ``input`` (after the resize and crop) or ``native`` (at the stored resolution).
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
        image_column: str | None = None,
        label_column: str | None = None,
        preset: str | None = None,
        noise_at: str = "input",
        **common: Any,
    ) -> None:
        super().__init__(root, **common)  # name, max_items, layer, batch_size, seed: see Probe
        if not root and not hf_dataset:
            raise ValueError("NoiseRobustnessProbe needs root (an image folder) or hf_dataset")
        bad = [s for s in sigmas if not 0 < float(s) <= 1]
        if bad:
            raise ValueError(f"sigmas are standard deviations in (0, 1] pixel units, got {bad}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"NoiseRobustnessProbe.preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if noise_at not in NOISE_AT:
            raise ValueError(f"NoiseRobustnessProbe.noise_at must be one of {', '.join(NOISE_AT)}, got {noise_at!r}")
        spec = PRESETS.get(preset or "", {})
        self.sigmas = sorted(float(s) for s in sigmas)
        self._dataset = dataset or preset
        self.classes = list(classes) if classes else None
        self.templates = list(templates) if templates else (clip_benchmark_templates(spec["templates"]) if spec else None)
        self.hf_dataset = hf_dataset
        self.hf_split = hf_split
        self.image_column = image_column or spec.get("image_column", "image")
        self.label_column = label_column or spec.get("label_column", "label")
        self.noise_at = noise_at

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
        fmt = "hf" if self.hf_dataset else \
            "cifar" if (self.path / "meta").is_file() or (self.path / "batches.meta").is_file() else "imagefolder"
        try:
            found = read_labelled_images(source, fmt, self.hf_split, self.image_column, self.label_column, self.classes)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        self.classes = found.classes
        self.found = found
        self.kept = select_items(len(found), self.max_items, self.seed)
        self.labels = torch.tensor([found.labels[i] for i in self.kept])
        return len(self.kept)

    def load_images(self, items: list[int], transform: Callable) -> None:
        rows = [self.kept[i] for i in items]
        if self.noise_at == "native":
            self._load_native(rows, transform)
        elif self.found.paths is not None:
            self.images = decode_images(self.found.images(rows), transform, self.num_workers)
        else:
            self.images = torch.stack([to_uint8(transform(decode_image(im))) for im in self.found.images(rows)]) \
                if rows else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        self.item_ids = torch.tensor(rows, dtype=torch.long)

    def _load_native(self, rows: list[int], transform) -> None:
        """The images at their stored size (uint8), and the eval transform's resize and crop to
        apply after the noise."""
        from torchvision import transforms as T

        images = [T.PILToTensor()(decode_image(im)) for im in self.found.images(rows)]
        sizes = sorted({tuple(im.shape[1:]) for im in images})
        if len(sizes) > 1:
            raise ValueError(f"{self.name}: noise_at: native needs images of one size, found {sizes[:3]}")
        self.images = torch.stack(images) if images else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        self.geometry = T.Compose([t for t in transform.transforms if isinstance(t, (T.Resize, T.CenterCrop))])
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
                if self.noise_at == "native":  # the resize and crop after the noise, on every level alike
                    noisy = self.geometry(noisy).clamp_(0, 1)
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
