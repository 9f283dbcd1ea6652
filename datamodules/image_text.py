"""Image-text pairs for contrastive pretraining (stage 2): webdataset shards, CSV/TSV or HF datasets.

Formats (``format``)
--------------------
``webdataset``
    tar shards as img2dataset writes them (``KEY.jpg`` + ``KEY.txt`` [+ ``KEY.json``]; ``png``,
    ``jpeg`` and ``webp`` images are read too). ``train_data`` is a brace pattern
    (``/data/yfcc/{00000..01500}.tar``), a glob (``/data/yfcc/*.tar``), several patterns joined by
    ``::`` (webdataset's convention), a list of any of these, or remote URLs (``pipe:curl -s ...``,
    ``s3://...``: opened by webdataset, never checked at set-up). A local pattern that matches no
    file raises ``FileNotFoundError`` naming the pattern.
``csv``
    open_clip's CSV semantics: one row per pair, an image-path column (``csv_image_key``, default
    ``filepath``) and a caption column (``csv_caption_key``, default ``title``), separator
    ``csv_separator`` (default TAB). Relative paths are resolved against ``image_root``
    (default: the CSV's own folder, where img2dataset and the toy world put the images).
``hf``
    a ``datasets`` dataset: a hub id (needs ``HF_HUB_OFFLINE=0`` or a filled cache), a local
    ``*.parquet`` file or glob, or a local folder (parquet files, or an ``imagefolder`` with a
    ``metadata.jsonl``/``csv`` caption column). Columns ``hf_image_key`` (a ``datasets.Image``,
    bytes or a path) and ``hf_caption_key``; ``hf_split`` / ``hf_val_split``;
    ``hf_streaming=True`` reads hub datasets as a stream (then ``samples_per_epoch`` is required).

Batches
-------
A dict: ``image`` float ``(B, 3, H, W)`` (normalised by the model's mean/std), ``text`` long
``(B, context_length)`` token ids from the model's open_clip tokenizer, ``skipped`` a long scalar:
how many samples the loader process dropped since its previous batch (undecodable image, missing
or empty caption, unreadable tar member). Decoding, augmentation and tokenisation all happen in
the loader workers; the count travels with the batch because a worker's own counters die with it.
The module sums it over steps and ranks into ``data/skipped``. Training batches always hold
exactly ``batch_size`` pairs on every rank (a contrastive loss gathered across ranks needs equal
sizes): a skipped webdataset/stream sample is replaced by the next one, a skipped CSV/HF row by
the next readable row.

Validation loaders (``val_dataloader``, in this order, each only when configured): held-out pairs
(``val_data``; loss and retrieval) and a zero-shot classification set (``zeroshot_data``: an image
folder ``ROOT/<class>/*`` or an HF dataset with a ``ClassLabel`` column); zero-shot batches are
``{"image", "label"}``. The class names (``zeroshot_classnames``, folder names with ``_`` read as
spaces) and prompt ``zeroshot_templates`` are attributes the module reads to build open_clip's
zero-shot classifier.

Where the transform and tokenizer come from
-------------------------------------------
Attached to a trainer whose module has a ``backbone`` (a ``CLIPBackbone``, as every perceptlab
stage module has), the data module takes the backbone's own transforms and tokenizer in
``setup``: data and model can never disagree on image size, normalisation or context length.
Used on its own (a benchmark, a notebook), it builds the same ones from ``model_name`` with
open_clip's preprocess configuration and ``open_clip.get_tokenizer``. A ``model_name`` that
contradicts the attached backbone is an error. ``augmentation``: ``clip`` (open_clip's train
transform: random resized crop, scale 0.9-1), ``mocov2`` (MoCo v2: random resized crop scale
0.2-1, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2, Gaussian blur p 0.5,
horizontal flip) or ``none`` (the eval transform: resize + centre crop).

Distribution and epochs
-----------------------
CSV/HF (map-style) data are split across ranks by a ``DistributedSampler`` the data module sets
itself (seeded by the run's seed; ``shuffle`` holds, ``drop_last`` keeps every rank's batch count
equal). Webdataset
shards are split across the ``world_size x num_workers`` loader processes by shard when there are
at least as many shards as processes, else by sample (every process reads every shard and keeps
one sample in ``world_size x num_workers``: slower I/O, still correct); ``resampled=True`` lets
each process draw shards with replacement instead (open_clip's choice for multi-node runs: no
process ever runs dry). Ranks and workers come from the trainer and the DataLoader, not from
environment variables. A webdataset epoch is ``samples_per_epoch`` pairs (default: the count in
img2dataset's ``*_stats.json`` or open_clip's ``sizes.json`` beside the shards, else the tar
headers are scanned); every process yields the same number of batches, cycling through its shards
as needed, so no rank waits for another at the end of an epoch. Shuffling is a shard-order shuffle
plus a sample buffer of ``shuffle_buffer`` pairs, seeded by (seed, epoch, process).

Resumption
----------
CSV and HF (map-style) training loaders are torchdata ``StatefulDataLoader``s: Lightning stores
their position in the checkpoint and a resumed run continues mid-epoch exactly where it stopped.
Webdataset and streaming-HF resumption is approximate: a run resumed in the middle of an epoch
restarts that epoch's stream with a fresh shuffle (seeded by the resumed global step), so the rest
of that epoch may repeat or miss some pairs; later epochs are as usual.
"""
from __future__ import annotations

import abc
import glob
import io
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import transforms as T

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "csv", "hf")
AUGMENTATIONS = ("clip", "mocov2", "none")
ZEROSHOT_FORMATS = ("imagefolder", "hf")
#: Image and caption members of a webdataset sample, in order of preference.
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt",)
#: open_clip's seven "simple" ImageNet prompts, as ``str.format`` templates.
DEFAULT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")
# A stream that opens this many shards in a row without one sample is stuck, not unlucky.
_SHARDS_WITHOUT_SAMPLES = 64
# A map-style row that fails is replaced by the next one; this many failures in a row is a broken set.
_MAX_REPLACEMENTS = 64


# ----------------------------------------------------------------------------------- shards
def _is_remote(url: str) -> bool:
    return url.startswith(_REMOTE_PREFIXES)


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Expand shard patterns into a list of URLs/paths.

    ``spec`` is a brace pattern, a glob, several patterns joined by ``::``, or a list of any of
    these. Local patterns are checked: one that matches no file raises ``FileNotFoundError``
    naming it, and so does a brace expansion naming files that do not exist.
    """
    import braceexpand

    patterns = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for entry in patterns:
        for pattern in str(entry).split("::"):
            pattern = os.path.expandvars(os.path.expanduser(pattern.strip()))
            if not pattern:
                continue
            expanded = list(braceexpand.braceexpand(pattern))
            if _is_remote(pattern):
                urls.extend(expanded)
                continue
            found: list[str] = []
            missing: list[str] = []
            for item in expanded:
                if glob.has_magic(item):
                    found.extend(sorted(glob.glob(item)))
                elif os.path.isfile(item):
                    found.append(item)
                else:
                    missing.append(item)
            if not found:
                raise FileNotFoundError(f"webdataset shard pattern {pattern!r} matches no file")
            if missing:
                shown = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
                raise FileNotFoundError(f"webdataset shard pattern {pattern!r} names missing files: {shown}")
            urls.extend(found)
    if not urls:
        raise FileNotFoundError(f"webdataset shard spec {spec!r} names no shard")
    return urls


def count_samples(urls: Sequence[str]) -> int:
    """Number of samples in local shards.

    Read from open_clip's ``sizes.json`` (``{shard file name: count}``) beside the shards, else
    img2dataset's ``NNNNN_stats.json`` (``successes``) beside each tar, else by scanning the tar
    headers for image members (no image is decoded). Remote shards raise ``ValueError``: set
    ``samples_per_epoch``.
    """
    if any(_is_remote(u) for u in urls):
        raise ValueError("cannot count samples of remote shards: set samples_per_epoch")
    sizes_cache: dict[Path, dict | None] = {}
    total = 0
    for url in urls:
        path = Path(url)
        if path.parent not in sizes_cache:
            sizes_file = path.parent / "sizes.json"
            sizes_cache[path.parent] = json.loads(sizes_file.read_text()) if sizes_file.is_file() else None
        sizes = sizes_cache[path.parent]
        if sizes is not None and path.name in sizes:
            total += int(sizes[path.name])
            continue
        stats = path.with_name(path.name[: -len(".tar")] + "_stats.json") if path.name.endswith(".tar") else None
        if stats is not None and stats.is_file():
            total += int(json.loads(stats.read_text())["successes"])
            continue
        keys = set()
        with tarfile.open(path) as tar:
            for member in tar:
                base, _, ext = member.name.rpartition(".")
                if member.isreg() and ext.lower() in IMAGE_KEYS:
                    keys.add(base)
        total += len(keys)
    return total


# ----------------------------------------------------------------------- transforms, tokens
def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def mocov2_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """MoCo v2's augmentation (He et al. 2020; Chen et al. 2020), normalised for the model."""
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # ~10% of the side, odd, as MoCo's 23 px at 224
    return T.Compose([
        _to_rgb,
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# ----------------------------------------------------------------------------- skip counting
class SkipCounter:
    """Counts samples a loader process drops, and says so in the log without flooding it.

    Used as a webdataset error handler (``handler(exn) -> True`` = skip and continue) and directly
    (``skip(reason)``). ``take()`` returns the count since the previous ``take`` and resets it.
    The first few skips are logged with their reason, later ones at powers of two.
    """

    def __init__(self, where: str = "") -> None:
        self.where = where
        self.total = 0
        self._pending = 0

    def skip(self, reason: str) -> None:
        self.total += 1
        self._pending += 1
        if self.total <= 3 or (self.total & (self.total - 1)) == 0:
            log.warning("image-text loader%s skipped a sample (%s); %d skipped so far in this process",
                        f" ({self.where})" if self.where else "", reason, self.total)

    def handler(self, exn: BaseException) -> bool:
        self.skip(f"{type(exn).__name__}: {exn}"[:300])
        return True

    def take(self) -> int:
        n, self._pending = self._pending, 0
        return n


def decode_image(value: Any, root: Path | None = None) -> Image.Image:
    """A fully loaded RGB PIL image from bytes, a ``datasets`` image dict, a PIL image or a path."""
    if isinstance(value, dict):  # datasets' undecoded Image: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, Image.Image):
        image = value
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value)
        image = Image.open(path if path.is_absolute() or root is None else root / path)
    else:
        raise TypeError(f"cannot read an image from {type(value).__name__}")
    return image.convert("RGB")  # forces the full decode, so a truncated file fails here


def clean_caption(value: Any) -> str:
    """The caption as a stripped string; ``ValueError`` if there is none."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("missing caption")
    text = str(value).strip()
    if not text:
        raise ValueError("empty caption")
    return text


class PairBatcher:
    """Stacks transformed images and tokenises their captions into a batch dict."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, images: list[torch.Tensor], captions: list[str], skipped: int) -> dict[str, torch.Tensor]:
        return {
            "image": torch.stack(images),
            "text": self.tokenizer(captions),
            "skipped": torch.tensor(skipped, dtype=torch.long),
        }


def _sample_image_caption(sample: dict) -> tuple[Any, Any]:
    image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    caption = next((sample[k] for k in CAPTION_KEYS if k in sample), None)
    if image is None:
        raise ValueError(f"no image member ({'/'.join(IMAGE_KEYS)}) in sample {sample.get('__key__')!r}")
    if caption is None:
        raise ValueError(f"no caption (.txt) in sample {sample.get('__key__')!r}")
    return image, caption


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# --------------------------------------------------------------------------------- webdataset
class WebDatasetPairs(IterableDataset):
    """Batches of image-text pairs streamed from webdataset shards (see the module docstring).

    Training mode (``epoch_batches`` set): each loader process yields exactly ``epoch_batches``
    full batches per epoch, cycling through its shards. Evaluation mode (``epoch_batches=None``):
    one pass, split by sample, every process padded to the same number of samples
    (``num_samples`` / processes, rounded up; the first samples are repeated, as
    ``DistributedSampler`` does) and the last batch may be short.
    """

    def __init__(
        self,
        urls: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        epoch_batches: int | None,
        rank: int = 0,
        world_size: int = 1,
        resampled: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.transform = transform
        self.batcher = PairBatcher(tokenizer)
        self.batch_size = int(batch_size)
        self.epoch_batches = epoch_batches
        self.rank, self.world_size = int(rank), int(world_size)
        self.resampled = resampled
        self.shuffle = shuffle
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.num_samples = num_samples
        self.num_workers = 1  # the DataLoader's; set by the data module before iterating
        # Epoch bookkeeping: the data module sets these from the trainer (the current epoch and
        # the global step a resumed run starts from); each iteration of this object is one epoch.
        # Loader workers are persistent, so their copy counts its own iterations.
        self.start_epoch = 0
        self.resume_step = 0
        self._iterations = 0

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("an evaluation stream has no fixed length")
        return self.epoch_batches * max(1, self.num_workers)

    def _shard_stream(self, epoch: int, consumer: int, consumers: int, by_shard: bool, progress: dict) -> Iterator[dict]:
        tag = f"{self.seed}-{epoch}-{self.resume_step}"
        if self.resampled:
            rng = random.Random(f"resample-{tag}-{consumer}")
            while True:
                progress["shards"] += 1
                self._check_progress(progress)
                yield {"url": rng.choice(self.urls)}
        cycle = 0
        while True:
            order = list(self.urls)
            if self.shuffle:  # the same order in every process, so the split below is a partition
                random.Random(f"order-{tag}-{cycle}").shuffle(order)
            for url in order[consumer::consumers] if by_shard else order:
                progress["shards"] += 1
                self._check_progress(progress)
                yield {"url": url}
            cycle += 1
            if self.epoch_batches is None:
                return

    def _check_progress(self, progress: dict) -> None:
        if progress["shards"] - progress["at_last_sample"] > max(_SHARDS_WITHOUT_SAMPLES, 2 * len(self.urls)):
            raise RuntimeError(
                f"webdataset stream opened {progress['shards'] - progress['at_last_sample']} shards without one "
                f"sample (first shard {self.urls[0]!r}): are they tar files of KEY.jpg/KEY.txt?"
            )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        import webdataset as wds

        worker, num_workers = _worker()
        epoch = self.start_epoch + self._iterations
        self._iterations += 1
        consumers = self.world_size * num_workers
        consumer = self.rank * num_workers + worker
        training = self.epoch_batches is not None
        by_shard = training and len(self.urls) >= consumers
        counter = SkipCounter(where=f"rank {self.rank}, worker {worker}")
        progress = {"shards": 0, "at_last_sample": 0}

        shards = self._shard_stream(epoch, consumer, consumers, by_shard, progress)
        samples: Iterator[dict] = wds.tarfile_to_samples(handler=counter.handler)(shards)
        if not by_shard:
            samples = islice(samples, consumer, None, consumers)
        if not training and self.num_samples is not None:
            samples = _pad_to(samples, math.ceil(self.num_samples / consumers))
        if self.shuffle and self.shuffle_buffer > 1 and training:
            rng = random.Random(f"buffer-{self.seed}-{epoch}-{self.resume_step}-{consumer}")
            samples = wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, max(1, self.shuffle_buffer // 10)),
                                  rng=rng)(samples)

        images: list[torch.Tensor] = []
        captions: list[str] = []
        produced = 0
        for sample in samples:
            progress["at_last_sample"] = progress["shards"]
            try:
                image, caption = _sample_image_caption(sample)
                caption = clean_caption(caption)
                images.append(self.transform(decode_image(image)))
                captions.append(caption)
            except Exception as exn:  # noqa: BLE001  a bad sample must not end the epoch: count it, go on
                counter.handler(exn)
                continue
            if len(images) == self.batch_size:
                yield self.batcher(images, captions, counter.take())
                images, captions = [], []
                produced += 1
                if training and produced >= self.epoch_batches:
                    return
        if images:
            yield self.batcher(images, captions, counter.take())


def _pad_to(samples: Iterator[dict], n: int) -> Iterator[dict]:
    """Exactly ``n`` samples: truncate, or repeat the first one (every rank runs as many batches).

    A sample-level split leaves each process ``n`` or ``n - 1`` samples, so the padding is at most
    one repeat; only the first sample is kept for it.
    """
    first = None
    count = 0
    for sample in islice(samples, n):
        if first is None:
            first = sample
        count += 1
        yield sample
    if first is not None:
        for _ in range(n - count):
            yield first


# ------------------------------------------------------------------------------ map-style sets
class _MapPairs(Dataset, abc.ABC):
    """Base for map-style pairs: an unreadable row is replaced by the next readable one."""

    name = "pairs"

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of rows."""

    @abc.abstractmethod
    def _raw(self, index: int) -> tuple[Any, Any]:
        """Row ``index`` as (image value, caption value), undecoded."""

    def _root(self) -> Path | None:
        return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        n = len(self)
        failures = 0
        for attempt in range(_MAX_REPLACEMENTS):
            i = (index + attempt) % n
            try:
                image, caption = self._raw(i)
                caption = clean_caption(caption)
                return self.transform(decode_image(image, self._root())), caption, failures
            except Exception as exn:  # noqa: BLE001  counted (the batch carries it to data/skipped), replaced
                failures += 1
                if failures <= 3:
                    log.warning("%s: skipped row %d (%s: %s)", self.name, i, type(exn).__name__, str(exn)[:200])
        raise RuntimeError(f"{self.name}: {_MAX_REPLACEMENTS} rows in a row from row {index} are unreadable")


class CsvPairs(_MapPairs):
    """Pairs from a CSV/TSV with an image-path column and a caption column (open_clip's format)."""

    def __init__(self, path: str | os.PathLike, transform, image_key: str = "filepath", caption_key: str = "title",
                 separator: str = "\t", image_root: str | os.PathLike | None = None) -> None:
        super().__init__(transform)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"image-text CSV not found: {self.path}")
        table = pd.read_csv(self.path, sep=separator, dtype=str, keep_default_na=False)
        for key, what in ((image_key, "csv_image_key"), (caption_key, "csv_caption_key")):
            if key not in table.columns:
                raise ValueError(
                    f"{self.path}: no column {key!r} ({what}); columns are {list(table.columns)} "
                    f"(separator {separator!r})"
                )
        self.images = table[image_key].tolist()
        self.captions = table[caption_key].tolist()
        self.root = Path(image_root).expanduser() if image_root else self.path.parent
        self.name = str(self.path)

    def __len__(self) -> int:
        return len(self.images)

    def _raw(self, index: int) -> tuple[Any, Any]:
        return self.images[index], self.captions[index]

    def _root(self) -> Path | None:
        return self.root


class HFPairs(_MapPairs):
    """Pairs from a map-style ``datasets.Dataset``."""

    def __init__(self, dataset, transform, image_key: str = "image", caption_key: str = "caption",
                 name: str = "hf", root: str | os.PathLike | None = None) -> None:
        super().__init__(transform)
        for key, what in ((image_key, "hf_image_key"), (caption_key, "hf_caption_key")):
            if key not in dataset.column_names:
                raise ValueError(f"{name}: no column {key!r} ({what}); columns are {dataset.column_names}")
        self.dataset = dataset
        self.image_key, self.caption_key = image_key, caption_key
        self.name = name
        self.root = Path(root) if root else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _raw(self, index: int) -> tuple[Any, Any]:
        row = self.dataset[index]
        return row[self.image_key], row[self.caption_key]

    def _root(self) -> Path | None:
        return self.root


class MapPairCollate:
    """Collates ``(image, caption, failures)`` items into the batch dict, tokenising in the worker."""

    def __init__(self, tokenizer) -> None:
        self.batcher = PairBatcher(tokenizer)

    def __call__(self, items: list[tuple[torch.Tensor, str, int]]) -> dict[str, torch.Tensor]:
        return self.batcher([i[0] for i in items], [i[1] for i in items], sum(i[2] for i in items))


class HFStreamPairs(IterableDataset):
    """Batches from a streaming ``datasets.IterableDataset`` (already split by rank).

    ``datasets`` splits the stream's files over the DataLoader workers by itself. Each worker
    yields ``epoch_batches`` full batches per epoch, starting the stream over (re-shuffled with
    ``set_epoch``) when it runs out.
    """

    def __init__(self, dataset, transform, tokenizer, batch_size: int, epoch_batches: int,
                 image_key: str = "image", caption_key: str = "caption", name: str = "hf") -> None:
        super().__init__()
        self.dataset = dataset
        self.transform = transform
        self.batcher = PairBatcher(tokenizer)
        self.batch_size, self.epoch_batches = int(batch_size), int(epoch_batches)
        self.image_key, self.caption_key, self.name = image_key, caption_key, name
        self.num_workers = 1
        self.start_epoch = 0
        self._iterations = 0

    def __len__(self) -> int:
        return self.epoch_batches * max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, _ = _worker()
        counter = SkipCounter(where=f"{self.name}, worker {worker}")
        epoch = self.start_epoch + self._iterations
        self._iterations += 1
        images: list[torch.Tensor] = []
        captions: list[str] = []
        produced, cycle = 0, 0
        while produced < self.epoch_batches:
            self.dataset.set_epoch(epoch * 1000 + cycle)
            seen = 0
            for row in self.dataset:
                seen += 1
                try:
                    caption = clean_caption(row.get(self.caption_key))
                    images.append(self.transform(decode_image(row[self.image_key])))
                    captions.append(caption)
                except Exception as exn:  # noqa: BLE001  as in WebDatasetPairs: count, go on
                    counter.handler(exn)
                    continue
                if len(images) == self.batch_size:
                    yield self.batcher(images, captions, counter.take())
                    images, captions = [], []
                    produced += 1
                    if produced >= self.epoch_batches:
                        return
            if seen == 0:
                raise RuntimeError(f"{self.name}: the stream gave this loader worker no rows (fewer data files "
                                   "than num_workers x ranks? lower num_workers)")
            cycle += 1


# ------------------------------------------------------------------------------- zero-shot set
class ZeroShotImages(Dataset):
    """Labelled images for zero-shot classification: ``(image tensor, class index)``.

    ``rows`` is any sequence of ``(image, label)`` (paths, bytes or PIL images); an HF dataset is
    read row by row through ``image_key`` / ``label_key``, so its images are decoded lazily.
    """

    def __init__(self, rows, transform, image_key: str | None = None, label_key: str | None = None) -> None:
        self.rows, self.transform = rows, transform
        self.image_key, self.label_key = image_key, label_key

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        image, label = (row[self.image_key], row[self.label_key]) if self.image_key else row
        return self.transform(decode_image(image)), int(label)


def _zeroshot_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([i[0] for i in items]), "label": torch.tensor([i[1] for i in items])}


def image_folder(root: str | os.PathLike) -> tuple[list[str], list[str], list[int]]:
    """``ROOT/<class>/<image>`` -> (class names, image paths, labels); classes sorted by folder name."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"zero-shot image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"zero-shot image folder {root} has no class sub-folders (expected ROOT/<class>/*.png)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMG_EXTENSIONS:
                paths.append(str(path))
                labels.append(label)
    if not paths:
        raise ValueError(f"zero-shot image folder {root} holds no images")
    return [c.replace("_", " ") for c in classes], paths, labels


# ------------------------------------------------------------------------------- data module
def load_hf(path: str, split: str, streaming: bool = False, cache_dir: str | None = None):
    """A ``datasets`` split from a hub id, a local parquet file/glob or a local folder."""
    import datasets

    local = Path(path).expanduser()
    if path.endswith(".parquet") or glob.has_magic(path):
        files = sorted(glob.glob(str(local))) if glob.has_magic(path) else [str(local)]
        if not files or not all(Path(f).is_file() for f in files):
            raise FileNotFoundError(f"HF parquet data not found: {path}")
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming,
                                      cache_dir=cache_dir)
    if local.exists():
        return datasets.load_dataset(str(local), split=split, streaming=streaming, cache_dir=cache_dir)
    return datasets.load_dataset(path, split=split, streaming=streaming, cache_dir=cache_dir)


def _templates(value: list[str] | str | None) -> list[str]:
    if value is None or value == "simple_imagenet":
        return list(DEFAULT_TEMPLATES)
    if value == "openai_imagenet":
        import open_clip

        return [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    if isinstance(value, str):
        value = [value]
    templates = [str(t) for t in value]
    if not templates:
        raise ValueError("zeroshot_templates is empty")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"zero-shot template {template!r} has no '{{}}' for the class name")
    return templates


def _classnames(value: list[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if value == "imagenet":
        import open_clip

        return list(open_clip.IMAGENET_CLASSNAMES)
    if isinstance(value, str):
        raise TypeError(f"zeroshot_classnames must be a list of names or 'imagenet', got {value!r}")
    return [str(v) for v in value]


class ImageTextDataModule(pl.LightningDataModule):
    """Image-text pairs (webdataset, CSV or HF) for contrastive pretraining; see the module docstring.

    Args:
        format: ``webdataset``, ``csv`` or ``hf``.
        train_data: shard pattern(s), CSV path, or HF id/path of the training pairs.
        val_data: the same for held-out pairs (validation loss and retrieval); ``None`` = none.
        batch_size: pairs per training step and per device (the contrastive batch of one rank;
            with the module's ``accum_freq`` it is split into micro-batches).
        val_batch_size: pairs per validation batch (default ``batch_size``).
        num_workers: loader processes per device; decoding, augmentation and tokenisation run there.
        model_name: open_clip architecture for transform and tokenizer when no model is attached.
        augmentation: ``clip``, ``mocov2`` or ``none`` (training only; validation uses the eval
            transform).
        samples_per_epoch: pairs per epoch over all ranks for webdataset and streaming HF
            (default for webdataset: counted from the shards, see :func:`count_samples`).
        resampled: webdataset: draw shards with replacement in every process (multi-node).
        shuffle: shuffle training pairs (sampler for CSV/HF; shard order and buffer for webdataset).
        shuffle_buffer: webdataset/streaming sample-shuffle buffer, in pairs.
        seed: base seed of the webdataset/stream shuffles (default: the run's seed, else 0).
        csv_image_key, csv_caption_key, csv_separator: CSV columns and separator (open_clip's
            defaults ``filepath``, ``title``, TAB).
        image_root: base folder of relative CSV image paths (default: the CSV's folder).
        hf_image_key, hf_caption_key: HF columns.
        hf_split, hf_val_split: HF splits of ``train_data`` / ``val_data`` (ignored for parquet
            files, which are one split).
        hf_streaming: stream the HF dataset instead of downloading/memory-mapping it.
        hf_cache_dir: where ``datasets`` keeps its Arrow cache (default ``HF_DATASETS_CACHE``).
        zeroshot_data: image folder (``ROOT/<class>/*``) or HF dataset for zero-shot accuracy.
        zeroshot_format: ``imagefolder`` or ``hf``.
        zeroshot_split, zeroshot_image_key, zeroshot_label_key: HF zero-shot split and columns
            (the label column must be a ``ClassLabel``: its names are the class names).
        zeroshot_templates: prompts, ``{}`` is replaced by the class name; the class embedding is
            the normalised mean over templates (open_clip's classifier builder). Also the names
            ``simple_imagenet`` (open_clip's 7 prompts, the default) or ``openai_imagenet`` (CLIP's 80).
        zeroshot_classnames: class names in label order, overriding the folder names / ClassLabel
            names (an ImageNet folder is named by WordNet ids); ``imagenet`` = open_clip's 1000
            ImageNet class names.
        pin_memory: pin batches for faster host-to-GPU copies (on when CUDA is available).
    """

    def __init__(
        self,
        format: str = "webdataset",
        train_data: str | list[str] | None = None,
        val_data: str | list[str] | None = None,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        model_name: str | None = None,
        augmentation: str = "clip",
        samples_per_epoch: int | None = None,
        resampled: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int | None = None,
        csv_image_key: str = "filepath",
        csv_caption_key: str = "title",
        csv_separator: str = "\t",
        image_root: str | None = None,
        hf_image_key: str = "image",
        hf_caption_key: str = "caption",
        hf_split: str = "train",
        hf_val_split: str = "validation",
        hf_streaming: bool = False,
        hf_cache_dir: str | None = None,
        zeroshot_data: str | None = None,
        zeroshot_format: str = "imagefolder",
        zeroshot_split: str = "test",
        zeroshot_image_key: str = "image",
        zeroshot_label_key: str = "label",
        zeroshot_templates: list[str] | str | None = None,
        zeroshot_classnames: list[str] | str | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"unknown image-text format {format!r}; expected one of {', '.join(FORMATS)}")
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; expected one of {', '.join(AUGMENTATIONS)}")
        if zeroshot_format not in ZEROSHOT_FORMATS:
            raise ValueError(f"unknown zeroshot_format {zeroshot_format!r}; expected one of {', '.join(ZEROSHOT_FORMATS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        # model_name stays out of hparams: Lightning refuses a data module and a model whose
        # hparams share a key with different values.
        self.save_hyperparameters(ignore=["model_name"])
        self.model_name = model_name
        self.format = format
        self.zeroshot_templates: list[str] = _templates(zeroshot_templates)
        self._classnames_override = _classnames(zeroshot_classnames)
        self.zeroshot_classnames: list[str] | None = None
        self.train_set: Dataset | IterableDataset | None = None
        self.val_set: Dataset | IterableDataset | None = None
        self.zeroshot_set: Dataset | None = None
        self._processing: tuple[Callable, Callable, Callable] | None = None

    # ----------------------------------------------------------------------------- helpers
    def _backbone(self):
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        return getattr(module, "backbone", None)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _seed(self) -> int:
        if self.hparams.seed is not None:
            return int(self.hparams.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))

    def processing(self) -> tuple[Callable, Callable, Callable]:
        """(train transform, eval transform, tokenizer): the attached backbone's, or ``model_name``'s."""
        if self._processing is not None:
            return self._processing
        backbone = self._backbone()
        aug = self.hparams.augmentation
        if backbone is not None:
            if self.model_name and self.model_name != backbone.model_name:
                raise ValueError(
                    f"ImageTextDataModule.model_name={self.model_name!r} but the model's backbone is "
                    f"{backbone.model_name!r}: drop data.model_name (the attached model decides) or make them agree"
                )
            if backbone.tokenizer is None:
                raise ValueError("the attached backbone has no text tower (vision_only=True): it cannot tokenize captions")
            eval_tf, tokenizer = backbone.transform(train=False), backbone.tokenizer
            size, mean, std = backbone.image_size, backbone.image_mean, backbone.image_std
            clip_train_tf = backbone.transform(train=True)
        else:
            if not self.model_name:
                raise ValueError(
                    "ImageTextDataModule needs model_name (an open_clip architecture) for its transform and "
                    "tokenizer when it is not attached to a model with a backbone"
                )
            import open_clip
            from open_clip.transform import image_transform_v2

            from lightning_modules.backbone import preprocess_cfg_for

            cfg = preprocess_cfg_for(self.model_name)
            eval_tf = image_transform_v2(cfg, is_train=False)
            clip_train_tf = image_transform_v2(cfg, is_train=True)
            tokenizer = open_clip.get_tokenizer(self.model_name)
            size = cfg.size[0] if isinstance(cfg.size, (tuple, list)) else cfg.size
            mean, std = cfg.mean, cfg.std
        if aug == "clip":
            train_tf = clip_train_tf
        elif aug == "mocov2":
            train_tf = mocov2_transform(int(size), mean, std)
        else:
            train_tf = eval_tf
        self._processing = (train_tf, eval_tf, tokenizer)
        return self._processing

    # ------------------------------------------------------------------------------ set-up
    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        train_tf, eval_tf, tokenizer = self.processing()
        rank, world = self._rank_world()
        if stage in (None, "fit") and self.train_set is None:
            if hp.train_data is None:
                raise ValueError("ImageTextDataModule: train_data is required for fitting")
            self.train_set = self._build_train(train_tf, tokenizer, rank, world)
        if stage in (None, "fit", "validate"):
            if hp.val_data is not None and self.val_set is None:
                self.val_set = self._build_val(eval_tf, tokenizer, rank, world)
            if hp.zeroshot_data is not None and self.zeroshot_set is None:
                self.zeroshot_set = self._build_zeroshot(eval_tf)

    def _epoch_batches(self, samples: int, world: int) -> int:
        """Batches per loader process per epoch (open_clip's arithmetic: every process equal)."""
        workers = max(1, self.hparams.num_workers)
        global_batch = self.hparams.batch_size * world
        batches = max(1, math.ceil(samples / global_batch))
        return max(1, math.ceil(batches / workers))

    def _build_train(self, transform, tokenizer, rank: int, world: int):
        hp = self.hparams
        if hp.format == "webdataset":
            urls = expand_shards(hp.train_data)
            samples = hp.samples_per_epoch or count_samples(urls)
            stream = WebDatasetPairs(
                urls, transform, tokenizer, hp.batch_size, self._epoch_batches(samples, world), rank=rank,
                world_size=world, resampled=hp.resampled, shuffle=hp.shuffle, shuffle_buffer=hp.shuffle_buffer,
                seed=self._seed(),
            )
            stream.num_workers = max(1, hp.num_workers)
            if not hp.resampled and len(urls) < world * max(1, hp.num_workers):
                log.info("%d shards for %d loader processes: splitting by sample (every process reads every shard)",
                         len(urls), world * max(1, hp.num_workers))
            return stream
        if hp.format == "csv":
            return CsvPairs(hp.train_data, transform, hp.csv_image_key, hp.csv_caption_key, hp.csv_separator, hp.image_root)
        dataset = load_hf(str(hp.train_data), hp.hf_split, streaming=hp.hf_streaming, cache_dir=hp.hf_cache_dir)
        if hp.hf_streaming:
            if not hp.samples_per_epoch:
                raise ValueError("hf_streaming=True needs samples_per_epoch (a stream has no length)")
            from datasets.distributed import split_dataset_by_node

            if hp.shuffle:
                dataset = dataset.shuffle(seed=self._seed(), buffer_size=hp.shuffle_buffer)
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
            stream = HFStreamPairs(dataset, transform, tokenizer, hp.batch_size,
                                   self._epoch_batches(hp.samples_per_epoch, world), hp.hf_image_key,
                                   hp.hf_caption_key, name=str(hp.train_data))
            stream.num_workers = max(1, hp.num_workers)
            return stream
        return HFPairs(dataset, transform, hp.hf_image_key, hp.hf_caption_key, name=str(hp.train_data))

    def _build_val(self, transform, tokenizer, rank: int, world: int):
        hp = self.hparams
        if hp.format == "webdataset":
            urls = expand_shards(hp.val_data)
            stream = WebDatasetPairs(urls, transform, tokenizer, self.val_batch_size, None, rank=rank,
                                     world_size=world, shuffle=False, seed=self._seed(),
                                     num_samples=count_samples(urls) if not any(map(_is_remote, urls)) else None)
            stream.num_workers = max(1, hp.num_workers)
            return stream
        if hp.format == "csv":
            return CsvPairs(hp.val_data, transform, hp.csv_image_key, hp.csv_caption_key, hp.csv_separator, hp.image_root)
        dataset = load_hf(str(hp.val_data), hp.hf_val_split, cache_dir=hp.hf_cache_dir)
        return HFPairs(dataset, transform, hp.hf_image_key, hp.hf_caption_key, name=str(hp.val_data))

    def _build_zeroshot(self, transform) -> ZeroShotImages:
        hp = self.hparams
        if hp.zeroshot_format == "imagefolder":
            classes, paths, labels = image_folder(hp.zeroshot_data)
            self.zeroshot_classnames = self._override_classnames(classes)
            return ZeroShotImages(list(zip(paths, labels)), transform)
        dataset = load_hf(str(hp.zeroshot_data), hp.zeroshot_split, cache_dir=hp.hf_cache_dir)
        feature = dataset.features.get(hp.zeroshot_label_key)
        names = getattr(feature, "names", None)
        if not names:
            raise ValueError(
                f"{hp.zeroshot_data}: column {hp.zeroshot_label_key!r} (zeroshot_label_key) is not a ClassLabel "
                f"with class names; columns are {dataset.column_names}"
            )
        if hp.zeroshot_image_key not in dataset.column_names:
            raise ValueError(f"{hp.zeroshot_data}: no column {hp.zeroshot_image_key!r} (zeroshot_image_key); "
                             f"columns are {dataset.column_names}")
        self.zeroshot_classnames = self._override_classnames([n.replace("_", " ") for n in names])
        return ZeroShotImages(dataset, transform, hp.zeroshot_image_key, hp.zeroshot_label_key)

    def _override_classnames(self, found: list[str]) -> list[str]:
        if self._classnames_override is None:
            return found
        if len(self._classnames_override) != len(found):
            raise ValueError(
                f"zeroshot_classnames has {len(self._classnames_override)} names but {self.hparams.zeroshot_data} "
                f"has {len(found)} classes"
            )
        return list(self._classnames_override)

    @property
    def val_batch_size(self) -> int:
        return int(self.hparams.val_batch_size or self.hparams.batch_size)

    # -------------------------------------------------------------------------- loaders
    def _pin(self) -> bool:
        return torch.cuda.is_available() if self.hparams.pin_memory is None else bool(self.hparams.pin_memory)

    def train_dataloader(self):
        hp = self.hparams
        if self.train_set is None:
            self.setup("fit")
        _, _, tokenizer = self.processing()
        workers = hp.num_workers
        if isinstance(self.train_set, (WebDatasetPairs, HFStreamPairs)):
            trainer = self.trainer
            self.train_set.start_epoch = int(trainer.current_epoch) if trainer is not None else 0
            if isinstance(self.train_set, WebDatasetPairs):
                self.train_set.resume_step = int(trainer.global_step) if trainer is not None else 0
            # Persistent workers keep their copy of the stream, so each counts its own epochs.
            return DataLoader(self.train_set, batch_size=None, num_workers=workers, pin_memory=self._pin(),
                              persistent_workers=workers > 0)
        rank, world = self._rank_world()
        sampler = None
        if world > 1:
            # Our own sampler, so that `shuffle` holds under DDP too (Lightning's injected one always
            # shuffles training data); Lightning keeps it and calls its set_epoch.
            sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=hp.shuffle,
                                         seed=self._seed(), drop_last=True)
        return StatefulDataLoader(
            self.train_set, batch_size=hp.batch_size, shuffle=hp.shuffle if sampler is None else None,
            sampler=sampler, drop_last=True, num_workers=workers, collate_fn=MapPairCollate(tokenizer),
            pin_memory=self._pin(), persistent_workers=workers > 0,
        )

    def val_dataloader(self):
        if self.val_set is None and self.zeroshot_set is None:
            self.setup("validate")
        _, _, tokenizer = self.processing()
        workers = self.hparams.num_workers
        loaders = []
        if self.val_set is not None:
            if isinstance(self.val_set, WebDatasetPairs):
                loaders.append(DataLoader(self.val_set, batch_size=None, num_workers=workers, pin_memory=self._pin()))
            else:
                loaders.append(DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False,
                                          num_workers=workers, collate_fn=MapPairCollate(tokenizer),
                                          pin_memory=self._pin()))
        if self.zeroshot_set is not None:
            loaders.append(DataLoader(self.zeroshot_set, batch_size=self.val_batch_size, shuffle=False,
                                      num_workers=workers, collate_fn=_zeroshot_collate, pin_memory=self._pin()))
        return loaders
