"""What every alignment probe shares: item selection, decoded-image cache, sharded encoding.

A probe owns one data set. :meth:`TableProbe.prepare` reads its table, picks at most ``max_items``
items (a fixed, seeded subset, the same at every evaluation and on every process), and decodes
this process's share of the images once, through the backbone's eval transform (resize, centre
crop), into a ``uint8`` cache. :meth:`Probe.evaluate` encodes the cached images with the model as
it is now, gathers per-item results from all processes and scores them, so every process returns
the same numbers as a single process would.

Per-item outputs
    :meth:`Probe.evaluate` is :meth:`Probe.measure` (the model's per-item outputs with the human
    data they are scored against, gathered from all processes) followed by :meth:`Probe.score`
    (the metrics). :meth:`Probe.resampled` computes the same metrics on bootstrap resamples of the
    items (``perceptlab.core.uncertainty``), which the suite turns into intervals; the suite writes
    the per-item outputs of every evaluation to disk, so any analysis can be redone later.

Why the cache is ``uint8``: the eval transform resizes PIL images, whose pixels are 8-bit, and
``ToTensor`` divides by 255, so storing ``round(255 x)`` is exact and a quarter of float32's
memory (``items x images per item x 3 x S^2`` bytes per process, S = model input size).
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from perceptlab.callbacks.probes.metric_info import MetricInfo
from perceptlab.core import scores
from perceptlab.core.images import to_rgb

log = logging.getLogger(__name__)

# Per-item outputs of one evaluation: group (a data set) -> field -> values, first axis = items.
# A group's items are resampled together; different groups (e.g. benchmark tasks) independently.
Items = dict[str, dict[str, torch.Tensor]]


@dataclass
class ProbeContext:
    """How a probe reaches the model and the other processes during one evaluation.

    ``gather`` stacks a same-shaped tensor from every process: ``(n, ...) -> (world_size, n, ...)``.
    ``autocast`` is the trainer's precision context (``nullcontext`` on full precision).
    """

    backbone: Any  # perceptlab.core.backbone.CLIPBackbone
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.unsqueeze(0)
    autocast: Callable[[], AbstractContextManager] = nullcontext
    batch_size: int = 256

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the vision tower's weights (bf16 under ``bf16-true``, else float32)."""
        for p in self.backbone.visual.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32


# ----------------------------------------------------------------------------- sharding helpers
def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Items of process ``rank``: ``rank, rank + W, ...``, padded by wrapping around so every process
    holds ``ceil(n / W)`` items (collectives need equal shapes)."""
    per_rank = -(-n // world_size) if n else 0
    return [(rank + world_size * i) % n for i in range(per_rank)] if n else []


def unshard(gathered: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`shard_indices`: ``(W, per_rank, ...)`` -> ``(n, ...)`` in item order."""
    world, per_rank = gathered.shape[:2]
    return gathered.transpose(0, 1).reshape(world * per_rank, *gathered.shape[2:])[:n]


def select_items(n: int, max_items: int | None, seed: int) -> list[int]:
    """A fixed subset of ``range(n)``: all items, or ``max_items`` drawn with ``seed``, sorted."""
    if max_items is None or max_items >= n:
        return list(range(n))
    if max_items <= 0:
        raise ValueError(f"max_items must be positive or null, got {max_items}")
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:max_items].tolist())


# ----------------------------------------------------------------------------- image decoding
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float image -> uint8 (exact for tensors made by ``ToTensor`` from 8-bit images)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def decode_images(paths: Sequence[str | os.PathLike], transform: Callable, num_workers: int = 4) -> torch.Tensor:
    """Decode image files through ``transform`` (ending in a [0, 1] tensor) -> uint8 ``(n, 3, S, S)``.

    Threads, because PIL releases the GIL while decoding and resizing.
    """
    def load(path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                return to_uint8(transform(to_rgb(im)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's failure types
            # a probe's items are fixed at set-up (the same items at every evaluation): one that cannot
            # be read is named, not dropped from some evaluations and not others
            raise ValueError(f"unreadable probe image {path} ({type(err).__name__}: {err})") from None

    if not paths:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        return torch.stack(list(pool.map(load, paths)))


def resolve(root: str | os.PathLike, data_root: str | os.PathLike | None) -> Path:
    """``root`` itself when absolute or when there is no ``data_root``; else ``data_root / root``."""
    root = Path(root).expanduser()
    if root.is_absolute() or data_root is None:
        return root
    return Path(data_root).expanduser() / root


def require_columns(table, columns: Sequence[str], source: str | os.PathLike) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise KeyError(f"{source}: missing column(s) {', '.join(map(repr, missing))}; has {', '.join(table.columns)}")


# ------------------------------------------------------------------------------------- probes
class Probe(ABC):
    """Base class of the alignment probes (one data set, one family of metrics).

    Args:
        root: data folder of the probe; relative paths are taken under the suite's ``data_root``.
        name: metric prefix; default ``<family>/<dataset>`` (``nights`` for NIGHTS).
        max_items: evaluate a fixed random subset of this many items (``None``: all).
        layer: read features from this transformer block's class token (0-based, negative from
            the end) instead of the projected embedding (``None``).
        tokens: ``class`` (default), or ``all``: every token of ``layer``, for the distance
            probes with ``distance: per_dimension_normalized_l2`` (Hernandez-Camara et al.'s
            per-layer readout: each dimension's squared difference averaged over the tokens).
        batch_size: images per forward pass (default: the suite's).
        seed: seed of the item subset (and of the noise, where a probe adds any).
    """

    family: ClassVar[str] = ""
    needs_text: ClassVar[bool] = False

    def __init__(
        self,
        root: str,
        name: str | None = None,
        max_items: int | None = 1000,
        layer: int | None = None,
        tokens: str = "class",
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if tokens not in ("class", "all") or (tokens == "all" and layer is None):
            raise ValueError(f"{type(self).__name__}: tokens must be 'class', or 'all' with a layer; got {tokens!r}"
                             f"{'' if layer is not None else ' and no layer'}")
        self.root = root
        self.tokens = tokens
        self._name = name
        self.max_items = max_items
        self.layer = layer
        self.batch_size = batch_size
        self.seed = seed
        self.data_root: str | None = None
        self.num_workers = 4
        self.n_items = 0  # items evaluated (all processes together)
        self.local_items: list[int] = []  # positions in the selected subset held by this process
        self.rank, self.world_size = 0, 1
        self._prepared_for: tuple | None = None

    # -- naming -----------------------------------------------------------------------------
    @property
    def dataset(self) -> str:
        """Short data-set name used in metric names (``tid2013``, ``cue_conflict``, ...)."""
        return Path(str(self.root)).name or self.family

    @property
    def name(self) -> str:
        return self._name or f"{self.family}/{self.dataset}"

    def describe(self, metric: str) -> MetricInfo:
        """What ``metric`` (one of :meth:`score`'s keys) is: its direction, statistic, chart, whether
        it is the headline or a reference line (:class:`MetricInfo`). The suite stores it with the
        run; the report, the intervals and TensorBoard read it from there. The default: a mean
        (a 2AFC, an accuracy) where higher is better, the headline when it is named ``<name>``."""
        return MetricInfo(probe=self.name, family=self.family, headline=metric == self.name)

    def direction(self, metric: str) -> str:
        """``"max"`` when a larger value of ``metric`` is more human-like / better, else ``"min"``."""
        return self.describe(metric).direction

    @property
    def path(self) -> Path:
        return resolve(self.root, self.data_root)

    # -- lifecycle --------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, backbone, rank: int = 0, world_size: int = 1) -> None:
        """Read the data, pick the items and cache this process's share (once per setting);
        sets ``n_items``. Errors name the missing path or key."""

    @abstractmethod
    def measure(self, ctx: ProbeContext) -> Items:
        """The model's outputs on every item (all processes' items, gathered, on CPU) together
        with the human data they are scored against; identical on all processes."""

    @abstractmethod
    def score(self, items: Items) -> dict[str, float]:
        """The probe's metrics ``{metric name: value}`` from :meth:`measure`'s output."""

    @abstractmethod
    def resampled(self, items: Items, idx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The metrics of :meth:`score` on bootstrap resamples: ``idx[group]`` holds ``(B, n)`` item
        indices of each group; returns ``{metric name: (B,) values}``. Replicate ``b`` equals
        :meth:`score` on the items ``idx[group][b]`` (tested for every probe)."""

    def evaluate(self, ctx: ProbeContext) -> dict[str, float]:
        """Score the model as it is now; returns ``{metric name: value}``, identical on all processes."""
        return self.score(self.measure(ctx))

    # -- helpers for subclasses ---------------------------------------------------------------
    def gather_items(self, ctx: ProbeContext, local: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Per-item results of this process ``(len(local_items), ...)`` -> all ``n`` items
        (default ``n_items``) ``(n, ...)`` in item order, on CPU."""
        n = self.n_items if n is None else n
        if ctx.world_size == 1:
            return local.detach().cpu()[:n]
        return unshard(ctx.gather(local.detach().contiguous()).cpu(), n)

    def pair_distances(self, ctx: ProbeContext, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       kind: str) -> list[torch.Tensor]:
        """Distances of this process's feature pairs ``[(a, b), ...]`` (each ``(len(local_items),
        d)``), gathered to every item ``(n_items,)``, one tensor per pair list. ``kind`` is one of
        ``scores.DISTANCES``; ``per_dimension_normalized_l2`` normalises each dimension over every
        pair of every list once all processes' pairs are gathered (``scores.per_dimension_normalized``)."""
        if kind == "per_dimension_normalized_l2":
            squared = [self.gather_items(ctx, scores.squared_differences(a, b)) for a, b in pairs]
            return [d.float() for d in scores.per_dimension_normalized(*squared)]
        if self.tokens == "all":
            raise ValueError(f"{self.name}: tokens: all reads every token; only distance: per_dimension_normalized_l2 "
                             f"averages over them (got {kind})")
        return [self.gather_items(ctx, scores.embedding_distance(a, b, kind)) for a, b in pairs]

    def features(self, ctx: ProbeContext, images: torch.Tensor, text_space: bool = False) -> torch.Tensor:
        """Encode uint8 images ``(n, 3, S, S)`` in batches -> float32 features ``(n, d)`` on ``ctx.device``."""
        bs = self.batch_size or ctx.batch_size
        out = [self.encode_batch(ctx, self.pixels(ctx, images[start:start + bs]), text_space)
               for start in range(0, images.shape[0], bs)]
        return torch.cat(out) if out else torch.empty(0, 0, device=ctx.device)

    @staticmethod
    def pixels(ctx: ProbeContext, images: torch.Tensor) -> torch.Tensor:
        """uint8 cache rows -> float [0, 1] on ``ctx.device``."""
        return images.to(ctx.device, non_blocking=True).float().div_(255)

    def encode_batch(self, ctx: ProbeContext, x: torch.Tensor, text_space: bool = False) -> torch.Tensor:
        """Features of a batch of [0, 1] images ``(b, 3, S, S)`` -> float32 ``(b, d)``.

        ``text_space=False``: raw (unnormalised) projected embedding, or the class token of
        ``layer``. ``text_space=True``: L2-normalised features comparable to text embeddings; with
        ``layer`` set, that block's class token is read out through the tower's final norm and
        projection (a logit-lens readout; ViT towers only). Pixel-space perturbations are applied
        to ``x`` by the caller, before the backbone's normalisation here.
        """
        backbone = ctx.backbone
        x = backbone.normalize(x).to(ctx.input_dtype)
        with ctx.autocast():
            if text_space and self.tokens == "all":
                raise ValueError(f"{self.name}: tokens: all has no text-space readout; use tokens: class")
            if text_space and self.layer is not None:
                f = self._project_layer(backbone, backbone.encode_image(x, normalize=False, layer=self.layer))
            else:
                every = {"tokens": "all"} if self.tokens == "all" else {}  # asked only when wanted
                f = backbone.encode_image(x, normalize=text_space, layer=self.layer, **every)
        return f.float()

    @staticmethod
    def _project_layer(backbone, cls: torch.Tensor) -> torch.Tensor:
        visual = backbone.visual
        if not (hasattr(visual, "ln_post") and getattr(visual, "proj", None) is not None):
            raise ValueError(
                "layer readout in the text space needs a ViT tower with ln_post and proj; "
                f"{type(visual).__name__} has none: set layer: null for text-matched probes"
            )
        return F.normalize(visual.ln_post(cls) @ visual.proj, dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.path)!r}, max_items={self.max_items})"


class TableProbe(Probe):
    """A probe over one table of items (NIGHTS triplets, IQA images, cue-conflict or labelled
    images): :meth:`prepare` reads the table (:meth:`load_table`), shards its items over processes
    and decodes this process's images (:meth:`load_images`)."""

    def prepare(self, backbone, rank: int = 0, world_size: int = 1) -> None:
        key = (str(self.path), backbone.image_size, rank, world_size)
        if self._prepared_for == key:
            return
        transform = backbone.transform(train=False, normalize=False)
        n = self.load_table()
        self.n_items = n
        self.rank, self.world_size = rank, world_size
        self.local_items = shard_indices(n, rank, world_size)
        self.load_images(self.local_items, transform)
        self._prepared_for = key

    @abstractmethod
    def load_table(self) -> int:
        """Read the probe's table, apply ``max_items``; return the number of items kept."""

    @abstractmethod
    def load_images(self, items: list[int], transform: Callable) -> None:
        """Decode the images of ``items`` (positions in the kept table) into the cache."""


class ZeroShotMixin:
    """Zero-shot classification with CLIP_benchmark's classifier (``core.benchmark_metrics``: class-name
    prompts averaged over templates). Templates are ``str.format`` strings with one ``{}`` (or
    ``{c}``); ``None`` means open_clip's ``SIMPLE_IMAGENET_TEMPLATES`` (the seven short CLIP templates)."""

    def zero_shot_weights(self, ctx: ProbeContext, classnames: Sequence[str], templates: Sequence[str] | None) -> torch.Tensor:
        from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

        from perceptlab.core.benchmark_metrics import zeroshot_classifier

        backbone = ctx.backbone
        with ctx.autocast():
            weights = zeroshot_classifier(backbone.model, backbone.tokenizer, [c.replace("_", " ") for c in classnames],
                                          list(templates) if templates else SIMPLE_IMAGENET_TEMPLATES, ctx.device)
        return weights.float()  # (d, classes), columns L2-normalised
