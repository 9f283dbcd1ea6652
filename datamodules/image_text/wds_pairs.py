"""Image-text pairs from webdataset tar shards (img2dataset's layout), as batches.

Resuming mid-epoch is approximate: a stream cannot seek, so the rest of the killed epoch is drawn
from a new shard order and shuffle, seeded by the resume step. Its ``B - b`` batches (after batch
``b`` of ``B``) repeat some of the ``b`` batches already read and leave as many of the epoch unread;
:func:`resume_redraw_estimate` gives the expected counts (``benchmarks/resume_webdataset.py``
measures them), and the data module writes them to the run directory's :data:`RESUMES_NAME`.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from perceptlab.datamodules.base import tar_sample_count
from perceptlab.datamodules.image_text.common import (
    CAPTION_KEYS,
    IMAGE_KEYS,
    PairBatcher,
    SkipCounter,
    _worker,
    clean_caption,
)
from perceptlab.datamodules.image_text.source import PairSource, stream_loader

log = logging.getLogger(__name__)

_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")
# A stream that opens this many shards in a row without one sample is stuck, not unlucky.
_SHARDS_WITHOUT_SAMPLES = 64


#: One JSON line per approximate (webdataset) resume in a run directory: where it resumed and the
#: samples it is expected to repeat and skip in that epoch (:func:`resume_redraw_estimate`).
RESUMES_NAME = "data_resumes.jsonl"


def resume_redraw_estimate(samples: int, batch_size: int, batches_read: int, epoch_batches: int) -> dict[str, float]:
    """Expected samples repeated and skipped in an epoch of ``epoch_batches`` batches over
    ``samples`` pairs, resumed after ``batches_read``: the remaining batches are a fresh draw
    without replacement from all ``samples``, each drawn pair already read with probability
    ``read / samples``; the epoch's own pairs not drawn again are skipped."""
    read = batches_read * batch_size
    redrawn = max(0, epoch_batches - batches_read) * batch_size
    share = min(1.0, read / samples) if samples else 0.0
    epoch = min(samples, epoch_batches * batch_size)
    return {"redrawn": redrawn, "repeated": round(redrawn * share, 1),
            "skipped": round(max(0.0, (epoch - read) - redrawn * (1 - share) * (epoch - read) / max(1, samples - read)), 1)}


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
        total += tar_sample_count(path, IMAGE_KEYS)
    return total



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
        tag = f"{self.seed}-{epoch}-{self._resume_tag(epoch)}"
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

    def _resume_tag(self, epoch: int) -> int:
        """The resume step seeds the redraw of the resumed epoch only; the epochs after it are the
        uninterrupted run's."""
        return self.resume_step if epoch == self.start_epoch else 0

    def _check_progress(self, progress: dict) -> None:
        if progress["shards"] - progress["at_last_sample"] > max(_SHARDS_WITHOUT_SAMPLES, 2 * len(self.urls)):
            raise RuntimeError(
                f"webdataset stream opened {progress['shards'] - progress['at_last_sample']} shards without one "
                f"sample (first shard {self.urls[0]!r}): are they tar files of KEY.jpg/KEY.txt?"
            )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch: webdataset's own pipeline stages, around our shard order and batch collation.

        The shard source (:meth:`_shard_stream`) is ours because it keeps today's guarantees:
        a per-epoch seeded shard order that is the same in every process (so the by-shard split
        is a partition), cycling so that every process yields the same number of batches, and
        seeded resampling. Everything after it is webdataset's: ``tarfile_to_samples``, the
        by-sample split (``slice``), ``shuffle``, ``decode``, ``to_tuple``, ``batched`` and
        ``with_epoch``, each with the skip counter as its error handler.
        """
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

        def seen(samples: Iterator[dict]) -> Iterator[dict]:  # a stream that opens shard after shard with no sample is stuck
            for sample in samples:
                progress["at_last_sample"] = progress["shards"]
                yield sample

        stages: list = [lambda: self._shard_stream(epoch, consumer, consumers, by_shard, progress),
                        wds.tarfile_to_samples(handler=counter.handler), seen]
        if not training:  # the position in the whole evaluation stream, counted before the split
            stages.append(_numbered)
        if not by_shard:  # every process reads every shard and keeps one sample in `consumers`
            stages.append(wds.slice(consumer, None, consumers))
        if not training and self.num_samples is not None:
            n = math.ceil(self.num_samples / consumers)
            stages.append(lambda samples: _pad_to(samples, n))
        if self.shuffle and self.shuffle_buffer > 1 and training:
            rng = random.Random(f"buffer-{self.seed}-{epoch}-{self._resume_tag(epoch)}-{consumer}")
            stages.append(wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, max(1, self.shuffle_buffer // 10)),
                                      rng=rng))
        stages += [
            wds.decode("pilrgb", only=[*IMAGE_KEYS, *CAPTION_KEYS], handler=counter.handler),
            wds.to_tuple(";".join(CAPTION_KEYS), ";".join(IMAGE_KEYS), *([] if training else ["__index__"]),
                         handler=counter.handler),
            wds.map_tuple(clean_caption, *([None] if training else [None, None]), handler=counter.handler),
            # The transform runs in the collation, on the batch's own samples only: `batched` reads
            # one sample ahead, and a random crop of that sample would shift the worker's RNG.
            wds.batched(self.batch_size, collation_fn=lambda pairs: self._collate(pairs, counter),
                        partial=not training),
        ]
        pipeline = wds.DataPipeline(*stages)
        if training:
            pipeline = pipeline.with_epoch(self.epoch_batches)
        yield from pipeline

    def _collate(self, pairs: list[tuple], counter: SkipCounter) -> dict[str, torch.Tensor]:
        """``(caption, image[, index])`` samples -> the batch dict (with ``index`` in evaluation)."""
        return self.batcher([self.transform(p[1]) for p in pairs], [p[0] for p in pairs], counter.take(),
                            [p[2] for p in pairs] if pairs and len(pairs[0]) > 2 else None)


def _numbered(samples: Iterator[dict]) -> Iterator[dict]:
    """Tag each sample with its position in the stream (``__index__``): every process and worker
    of an evaluation reads the same stream before splitting it, so the position is the sample's
    place in the evaluation set, whoever keeps it."""
    for i, sample in enumerate(samples):
        sample["__index__"] = i
        yield sample


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


class WebDatasetSource(PairSource):
    """Pairs from webdataset tar shards as img2dataset writes them.

    Args:
        train / val: a brace pattern (``/data/yfcc/{00000..01500}.tar``), a glob, several patterns
            joined by ``::``, a list of any of these, or remote URLs (never checked at set-up).
        samples_per_epoch: pairs per epoch over all ranks (default: counted from the shards,
            :func:`count_samples`).
        resampled: draw shards with replacement in every process (open_clip's multi-node choice).
        shuffle_buffer: the sample-shuffle buffer, in pairs.
    """

    format = "webdataset"

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None, samples_per_epoch: int | None = None,
                 resampled: bool = False, shuffle_buffer: int = 1000) -> None:
        super().__init__(train, val)
        self.samples_per_epoch, self.resampled, self.shuffle_buffer = samples_per_epoch, resampled, shuffle_buffer

    def train_set(self, dm, transform, tokenizer, rank: int, world: int) -> WebDatasetPairs:
        urls = expand_shards(self.train)
        samples = self.samples_per_epoch or count_samples(urls)
        workers = max(1, dm.loader.num_workers)
        stream = WebDatasetPairs(urls, transform, tokenizer, dm.loader.batch_size, dm.epoch_batches(samples, world),
                                 rank=rank, world_size=world, resampled=self.resampled, shuffle=dm.hparams.shuffle,
                                 shuffle_buffer=self.shuffle_buffer, seed=dm.seed())
        stream.num_workers = workers
        if not self.resampled and len(urls) < world * workers:
            log.info("%d shards for %d loader processes: splitting by sample (every process reads every shard)",
                     len(urls), world * workers)
        return stream

    def val_set(self, dm, transform, tokenizer, rank: int, world: int) -> WebDatasetPairs:
        urls = expand_shards(self.val)
        stream = WebDatasetPairs(urls, transform, tokenizer, dm.loader.eval_size, None, rank=rank, world_size=world,
                                 shuffle=False, seed=dm.seed(),
                                 num_samples=count_samples(urls) if not any(map(_is_remote, urls)) else None)
        stream.num_workers = max(1, dm.loader.num_workers)
        return stream

    def train_loader(self, dm, dataset: WebDatasetPairs, tokenizer):
        loader = stream_loader(dm, dataset)
        self.place(dm, dataset)
        return loader

    def val_loader(self, dm, dataset: WebDatasetPairs, tokenizer):
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=None, num_workers=dm.loader.num_workers, pin_memory=dm.loader.pinned)

    def place(self, dm, stream: WebDatasetPairs) -> None:
        """Where a (resumed) run's stream starts: the epoch of the next batch from the global step
        (one batch a step), and, resumed inside an epoch, a redraw of that epoch's rest seeded by the
        step (approximate, see the module docstring), written to the run's :data:`RESUMES_NAME`."""
        trainer = dm.trainer
        step = int(trainer.global_step) if trainer is not None else 0
        per_epoch = len(stream)
        limit = getattr(trainer, "limit_train_batches", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            per_epoch = min(per_epoch, limit)
        elif isinstance(limit, float) and 0 < limit < 1:
            per_epoch = max(1, int(per_epoch * limit))
        stream.start_epoch, read = divmod(step, per_epoch)
        stream.resume_step = step if read else 0  # at an epoch boundary the next epoch is the uninterrupted one's
        if not read:
            return
        rank, world = dm.rank_world()
        batch_size = dm.loader.batch_size
        samples = (self.samples_per_epoch or count_samples(stream.urls)) // max(1, world)
        estimate = resume_redraw_estimate(samples, batch_size, read, per_epoch)
        log.warning("webdataset resumed inside epoch %d after %d of its %d batches: the rest is redrawn, "
                    "about %.0f samples repeated and %.0f skipped in this epoch (per rank)", stream.start_epoch,
                    read, per_epoch, estimate["repeated"], estimate["skipped"])
        run_dir = getattr(getattr(trainer, "logger", None), "log_dir", None)
        if run_dir and rank == 0:
            with open(Path(run_dir) / RESUMES_NAME, "a") as f:
                f.write(json.dumps({"format": "webdataset", "step": step, "epoch": stream.start_epoch,
                                    "batches_read": read, "epoch_batches": per_epoch, "batch_size": batch_size,
                                    "samples_per_rank": samples, "expected": estimate}) + "\n")

