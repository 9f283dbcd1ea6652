"""Image-text pairs from Hugging Face ``datasets``: map-style and streaming."""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from perceptlab.datamodules.image_text.common import (
    PairBatcher,
    SkipCounter,
    MapPairs,
    _worker,
    clean_caption,
    decode_image,
)
from perceptlab.datamodules.image_text.source import PairSource, stream_loader

log = logging.getLogger(__name__)

class HFPairs(MapPairs):
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



def load_hf(path: str, split: str, streaming: bool = False, cache_dir: str | None = None):
    """A ``datasets`` split from a hub id, a local parquet file/glob, a ``save_to_disk`` folder or a
    local data-set folder."""
    import datasets

    local = Path(path).expanduser()
    saved_to_disk = (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()
    if local.is_dir() and saved_to_disk and not streaming:
        saved = datasets.load_from_disk(str(local))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise KeyError(f"{path}: no split {split!r}; has {', '.join(saved)}")
            saved = saved[split]
        return saved
    if path.endswith(".parquet") or glob.has_magic(path):
        files = sorted(glob.glob(str(local))) if glob.has_magic(path) else [str(local)]
        if not files or not all(Path(f).is_file() for f in files):
            raise FileNotFoundError(f"HF parquet data not found: {path}")
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming,
                                      cache_dir=cache_dir)
    if local.exists():
        return datasets.load_dataset(str(local), split=split, streaming=streaming, cache_dir=cache_dir)
    return datasets.load_dataset(path, split=split, streaming=streaming, cache_dir=cache_dir)


class HFSource(PairSource):
    """Pairs from a Hugging Face ``datasets`` data set: a hub id (needs ``HF_HUB_OFFLINE=0`` or a
    filled cache), a local ``*.parquet`` file or glob, a ``save_to_disk`` folder or a local folder.

    Args:
        train / val: the training and held-out data sets.
        image_key / caption_key: the image column (a ``datasets.Image``, bytes or a path) and the
            caption column.
        split / val_split: the splits of ``train`` / ``val`` (ignored for parquet files, one split).
        streaming: read ``train`` as a stream (then ``samples_per_epoch`` is required).
        samples_per_epoch: pairs per epoch over all ranks of a stream.
        shuffle_buffer: a stream's sample-shuffle buffer, in pairs.
        cache_dir: where ``datasets`` keeps its Arrow cache (default ``HF_DATASETS_CACHE``).
    """

    format = "hf"

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None, image_key: str = "image",
                 caption_key: str = "caption", split: str = "train", val_split: str = "validation",
                 streaming: bool = False, samples_per_epoch: int | None = None, shuffle_buffer: int = 1000,
                 cache_dir: str | None = None) -> None:
        super().__init__(train, val)
        self.image_key, self.caption_key = image_key, caption_key
        self.split, self.val_split = split, val_split
        self.streaming, self.samples_per_epoch, self.shuffle_buffer = streaming, samples_per_epoch, shuffle_buffer
        self.cache_dir = cache_dir

    def train_set(self, dm, transform, tokenizer, rank: int, world: int):
        dataset = load_hf(str(self.train), self.split, streaming=self.streaming, cache_dir=self.cache_dir)
        if not self.streaming:
            return HFPairs(dataset, transform, self.image_key, self.caption_key, name=str(self.train))
        if not self.samples_per_epoch:
            raise ValueError("HFSource(streaming=True) needs samples_per_epoch (a stream has no length)")
        from datasets.distributed import split_dataset_by_node

        if dm.hparams.shuffle:
            dataset = dataset.shuffle(seed=dm.seed(), buffer_size=self.shuffle_buffer)
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
        stream = HFStreamPairs(dataset, transform, tokenizer, dm.loader.batch_size,
                               dm.epoch_batches(self.samples_per_epoch, world), self.image_key, self.caption_key,
                               name=str(self.train))
        stream.num_workers = max(1, dm.loader.num_workers)
        return stream

    def val_set(self, dm, transform, tokenizer, rank: int, world: int) -> HFPairs:
        dataset = load_hf(str(self.val), self.val_split, cache_dir=self.cache_dir)
        return HFPairs(dataset, transform, self.image_key, self.caption_key, name=str(self.val))

    def train_loader(self, dm, dataset, tokenizer):
        return stream_loader(dm, dataset) if isinstance(dataset, HFStreamPairs) else super().train_loader(dm, dataset, tokenizer)

