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
    _MapPairs,
    _worker,
    clean_caption,
    decode_image,
)

log = logging.getLogger(__name__)

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
