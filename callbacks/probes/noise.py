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
from typing import Callable, Sequence

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
from perceptlab.core.images import to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class NoiseRobustnessProbe(ZeroShotMixin, TableProbe):
    """Zero-shot accuracy clean and under pixel-space Gaussian noise.

    Args:
        root: image folder ``<class>/*.png`` (ignored when ``hf_dataset`` is set).
        dataset: name used in metric names (default: the folder's name).
        sigmas: noise standard deviations in [0, 1] pixel units (0 is always evaluated).
        classes: class names in label order (default: sorted folder names / the ClassLabel names).
        templates: prompt templates with one ``{}`` (default: open_clip's seven simple templates).
        hf_dataset / hf_split / image_column / label_column: read a Hugging Face data set instead.
        max_items / layer / batch_size / seed / name: see :class:`Probe`.
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
        max_items: int | None = 1000,
        layer: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(root, name=name, max_items=max_items, layer=layer, batch_size=batch_size, seed=seed)
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
        if self.hf_dataset:
            n, labels = self._load_hf()
        else:
            n, labels = self._load_folder()
        keep = select_items(n, self.max_items, self.seed)
        self.kept = keep
        self.labels = torch.tensor([labels[i] for i in keep])
        return len(keep)

    def _load_folder(self) -> tuple[int, list[int]]:
        root = self.path
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name}: classification folder not found: {root}")
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        classes = self.classes or folders
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise ValueError(f"{root}: class folder(s) {unknown} not among classes {classes}")
        files, labels = [], []
        for label, cls in enumerate(classes):
            for f in sorted((root / cls).glob("*")) if (root / cls).is_dir() else []:
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(label)
        if not files:
            raise FileNotFoundError(f"{self.name}: no images in class folders under {root}")
        self.classes = list(classes)
        self.files = files
        return len(files), labels

    def _load_hf(self) -> tuple[int, list[int]]:
        import datasets

        source = self.hf_dataset
        local = Path(source).expanduser()
        if local.suffix == ".parquet":
            if not local.is_file():
                raise FileNotFoundError(f"{self.name}: parquet file not found: {local}")
            ds = datasets.load_dataset("parquet", data_files=str(local), split="train")
        elif local.is_dir() and (local / "dataset_info.json").is_file():
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(source, split=self.hf_split)
        if isinstance(ds, datasets.DatasetDict):
            if self.hf_split not in ds:
                raise KeyError(f"{source}: no split {self.hf_split!r}; has {', '.join(ds)}")
            ds = ds[self.hf_split]
        for column in (self.image_column, self.label_column):
            if column not in ds.column_names:
                raise KeyError(f"{source}: missing column {column!r}; has {', '.join(ds.column_names)}")
        feature = ds.features[self.label_column]
        raw = ds[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            classes = self.classes or list(feature.names)
            labels = list(raw)
        else:
            classes = self.classes or sorted(set(map(str, raw)))
            index = {c: i for i, c in enumerate(classes)}
            missing = sorted(set(map(str, raw)) - set(index))
            if missing:
                raise ValueError(f"{source}: labels {missing[:5]} not among classes {classes}")
            labels = [index[str(v)] for v in raw]
        self.classes = list(classes)
        self.hf = ds
        return len(ds), labels

    def load_images(self, items: list[int], transform: Callable) -> None:
        if self.hf_dataset:
            rows = [self.kept[i] for i in items]
            images = self.hf.select(rows)[self.image_column] if rows else []
            self.images = torch.stack([to_uint8(transform(to_rgb(im))) for im in images]) if rows else \
                torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        else:
            self.images = decode_images([self.files[self.kept[i]] for i in items], transform, self.num_workers)
        self.item_ids = torch.tensor([self.kept[i] for i in items], dtype=torch.long)

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
        return self._metrics(accuracy, scores.normalized_drop)

    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = items[self.name]
        accuracy = {s: uncertainty.mean((t[f"predicted@sigma={_fmt(s)}"] == t["label"]).double(), idx[self.name])
                    for s in [0.0, *self.sigmas]}

        def drop(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:  # normalized_drop, elementwise
            return torch.where(clean > 0, 1 - noisy / clean, torch.full_like(clean, float("nan")))

        return self._metrics(accuracy, drop)

    def _metrics(self, accuracy: dict, drop) -> dict:
        metrics = {f"{self.name}/acc@sigma={_fmt(s)}": a for s, a in accuracy.items()}
        drops = {s: drop(accuracy[0.0], accuracy[s]) for s in self.sigmas}
        metrics.update({f"{self.name}/drop@sigma={_fmt(s)}": d for s, d in drops.items()})
        metrics[f"{self.name}/drop"] = sum(drops.values()) / len(drops) if drops else float("nan")
        return metrics


def _fmt(sigma: float) -> str:
    return f"{sigma:g}"
