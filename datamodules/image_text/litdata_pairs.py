"""Image-text pairs from a litdata-optimised dataset (``litdata.optimize`` / its ``BinaryWriter``).

A local folder holding ``index.json`` and the ``chunk-*.bin`` files it lists; every item a dict
with an image field (encoded bytes, a PIL image or a path) and a caption field. Reading, the split
over ranks and loader workers, the per-epoch shuffle and the exact mid-epoch resume are litdata's
own (``StreamingDataset`` + ``StreamingDataLoader``, whose ``state_dict`` Lightning stores in the
checkpoint). What is ours: the check that names a missing or truncated chunk before any training
starts (litdata would fail only when a worker reaches it), decoding with the project's rules, and
replacing an undecodable item by the next readable one so that every batch stays full.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from litdata import StreamingDataLoader, StreamingDataset

from perceptlab.core.safe_load import TRUST_ENV, TRUST_FLAG, UnsafeFileError, trusted
from perceptlab.datamodules.image_text.common import MapPairCollate, first_readable
from perceptlab.datamodules.image_text.source import PairSource

INDEX_NAME = "index.json"
#: litdata serialisers that decode bytes as data (``pickle`` and ``graph`` unpickle, so they could run code).
DATA_FORMATS = frozenset({"str", "text", "bool", "int", "float", "image", "pil", "jpeg", "jpeg_array", "bytes",
                          "no_header_numpy", "numpy", "no_header_tensor", "tensor", "json", "file"})


class ResumableStreamingLoader(StreamingDataLoader):
    """litdata's ``StreamingDataLoader``, whose restored position is used for one epoch only.

    Restored with ``load_state_dict``, litdata replays the saved position until an epoch's
    iterator runs to its end; Lightning stops an epoch at its batch count, before that end, so
    litdata 0.2.76 replayed the finished position at the next epoch too -- an epoch of no batch,
    and the resumed run ended an epoch early. Here the next iterator after the restored epoch has
    yielded starts a new epoch, as an uninterrupted run does. Its epoch count (which seeds litdata's
    shuffle) is kept by the data module too: Lightning restores no loader state from an epoch-end
    checkpoint, and a fresh loader would count from 0 and replay the first epoch's order.
    """

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._replayed = False
        if int(obj.get("num_samples_yielded", 0)) >= len(self) * int(self.batch_size or 1):
            # saved at the epoch's end (Lightning restores that too when max_steps bounds the run):
            # replayed, it would be an epoch of no batch; the next iterator is the next epoch
            self.restore = False

    def __iter__(self) -> Any:
        if self.restore and getattr(self, "_replayed", False):
            self.restore = False  # the restored epoch was read: a new epoch begins
        for batch in super().__iter__():
            self._replayed = True
            yield batch


def check_litdata(root: str | os.PathLike, image_key: str | None = "image", caption_key: str | None = "caption") -> dict:
    """The dataset's ``index.json`` after checking every chunk it lists is present and whole.

    Raises ``FileNotFoundError`` naming the folder, the index or the first missing chunks, and
    ``ValueError`` naming a chunk whose size differs from the index's (a truncated copy) or a field
    the items do not have.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"litdata dataset not found: {folder} (a folder holding {INDEX_NAME} and chunk-*.bin)")
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(f"{folder}: no {INDEX_NAME}; not a litdata-optimised dataset (litdata.optimize writes one)")
    try:
        index = json.loads(index_path.read_text())
        chunks = index["chunks"]
    except (ValueError, KeyError) as exn:
        raise ValueError(f"{index_path}: not a litdata index ({type(exn).__name__}: {exn})") from exn
    missing = [c["filename"] for c in chunks if not (folder / c["filename"]).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{folder}: {len(missing)} of {len(chunks)} chunks listed in {INDEX_NAME} are missing: "
                                f"{', '.join(missing[:3])}{more}")
    for c in chunks:
        size = (folder / c["filename"]).stat().st_size
        if "chunk_bytes" in c and size != int(c["chunk_bytes"]) and not index.get("config", {}).get("compression"):
            raise ValueError(f"{folder / c['filename']}: {size} bytes, {INDEX_NAME} says {c['chunk_bytes']} "
                             "(a truncated or corrupt chunk)")
    formats = [str(f) for f in index.get("config", {}).get("data_format") or []]
    unsafe = sorted({f for f in formats if f.split(":")[0] not in DATA_FORMATS})
    if unsafe and not trusted():
        raise UnsafeFileError(f"{index_path}: refused: items stored as {', '.join(unsafe)} run code when read "
                              f"(litdata unpickles them); {TRUST_FLAG} (or {TRUST_ENV}=1) reads a dataset you made yourself")
    fields = _fields(index.get("config", {}))
    for key, what in ((image_key, "image_key"), (caption_key, "caption_key")):
        if key is not None and fields is not None and key not in fields:
            raise ValueError(f"{folder}: items have no field {key!r} ({what}); fields are {sorted(fields)}")
    return index


def _fields(config: Mapping[str, Any]) -> set[str] | None:
    """The item dict's keys as the index records them (``None`` when it does not)."""
    types = config.get("types")
    if isinstance(types, Mapping):
        return set(types)
    try:  # older indexes: the pytree spec of the item
        spec = json.loads(config["data_spec"])
        return set(json.loads(spec[1]["context"]))
    except (KeyError, ValueError, TypeError, IndexError):
        return None


def count_items(root: str | os.PathLike) -> int:
    """Items in the dataset, from its (checked) index."""
    return sum(int(c["chunk_size"]) for c in check_litdata(root, None, None)["chunks"])


class LitdataPairs(StreamingDataset):
    """``(image, caption, items skipped, index)`` from a litdata dataset, for ``MapPairCollate``.

    ``index`` is the item's position in the dataset, whatever rank or worker read it.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable, image_key: str = "image",
                 caption_key: str = "caption", shuffle: bool = False, seed: int = 0, drop_last: bool = True) -> None:
        folder = Path(root).expanduser()
        check_litdata(folder, image_key, caption_key)
        super().__init__(str(folder), shuffle=shuffle, drop_last=drop_last, seed=seed)
        self.image_transform = transform
        self.image_key, self.caption_key = image_key, caption_key
        self.name = str(folder)

    def __getitem__(self, index) -> tuple[torch.Tensor, str, int, int]:
        position = int(getattr(index, "index", index))

        def raw(i: int, attempt: int) -> tuple[Any, Any]:
            # the first read goes through litdata's chunk scheduling; a replacement by position
            item = StreamingDataset.__getitem__(self, index if attempt == 0 else i)
            return item[self.image_key], item[self.caption_key]

        return first_readable(raw, position, len(self), self.image_transform, self.name, Path(self.name), "item")


def write_litdata(items: Iterable[Mapping[str, Any]], out: str | os.PathLike, chunk_bytes: int | str | None = "64MB",
                  chunk_size: int | None = None) -> Path:
    """Writes ``items`` (dicts of one layout) as a litdata-optimised dataset with litdata's own
    writer (the one ``litdata.optimize`` uses), in order, in this process; returns the folder.
    ``chunk_size`` (items per chunk), when given, replaces ``chunk_bytes``. The index's time stamp
    (``updated_at``) is set to 0, so that the same items always give the same bytes."""
    from litdata.streaming.writer import BinaryWriter

    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("chunk-*.bin")) + [folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    writer = BinaryWriter(str(folder), chunk_size=chunk_size) if chunk_size else \
        BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    for i, item in enumerate(items):
        writer[i] = dict(item)
    writer.done()
    writer.merge()
    index_path = folder / INDEX_NAME
    index = json.loads(index_path.read_text())
    if "updated_at" in index:
        index["updated_at"] = "0"
        index_path.write_text(json.dumps(index, sort_keys=True))
    return folder


class LitdataItems(torch.utils.data.Dataset):
    """A map-style view of a :class:`LitdataPairs` (validation: read once, in order, split over
    ranks by the evaluation sampler like every other held-out set)."""

    def __init__(self, pairs: LitdataPairs) -> None:
        self.pairs = pairs
        self.name = pairs.name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int, int]:
        return self.pairs[int(index)]


class LitdataSource(PairSource):
    """Pairs from litdata-optimised data sets (``litdata.optimize``'s output: ``index.json`` +
    ``chunk-*.bin``) in local folders; each item a dict with an image field (encoded bytes, a PIL
    image or a path) and a caption field. Every chunk the index lists is checked at set-up; ranks,
    workers, the per-epoch shuffle (seeded by the run's seed) and the epoch length are litdata's.

    Args:
        train / val: the training and held-out data set folders.
        image_key / caption_key: the items' image and caption fields.
    """

    format = "litdata"

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None, image_key: str = "image",
                 caption_key: str = "caption") -> None:
        super().__init__(train, val)
        self.image_key, self.caption_key = image_key, caption_key
        self._loader: ResumableStreamingLoader | None = None
        self._resume_epoch = 0

    def train_set(self, dm, transform, tokenizer, rank: int, world: int) -> LitdataPairs:
        return LitdataPairs(self.train, transform, self.image_key, self.caption_key, shuffle=dm.hparams.shuffle,
                            seed=dm.seed(), drop_last=True)

    def val_set(self, dm, transform, tokenizer, rank: int, world: int) -> LitdataItems:
        return LitdataItems(LitdataPairs(self.val, transform, self.image_key, self.caption_key, shuffle=False,
                                         drop_last=False))

    def train_loader(self, dm, dataset: LitdataPairs, tokenizer):
        rank, world = dm.rank_world()
        built = dataset.distributed_env
        if (built.global_rank, built.world_size) != (rank, world):
            # built before the process group existed (a setup call outside the trainer): litdata
            # fixes rank and world at construction (from the environment until then), so build it
            # again for this process
            dataset = dm.train_set = self.train_set(dm, dm.processing()[0], tokenizer, rank, world)
        # litdata splits the items over ranks and workers itself and reshuffles each epoch; Lightning
        # stores this loader's state_dict, so a resumed run continues mid-epoch exactly.
        self._loader = ResumableStreamingLoader(dataset, batch_size=dm.loader.batch_size,
                                                num_workers=dm.loader.num_workers, drop_last=True,
                                                collate_fn=MapPairCollate(tokenizer), pin_memory=dm.loader.pinned)
        self._loader.current_epoch = self._resume_epoch  # litdata's count of finished epochs
        return self._loader

    def state_dict(self) -> dict:
        # litdata counts its epochs itself (its shuffle's seed)
        return {} if self._loader is None else {"litdata_epoch": int(self._loader.current_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self._resume_epoch = int(state.get("litdata_epoch", 0))

