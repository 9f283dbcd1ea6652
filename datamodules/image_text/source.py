"""Where image-text pairs come from: one reader object per format, chosen once.

``ImageTextDataModule(pairs=...)`` takes one :class:`PairSource` — ``WebDatasetSource``
(``wds_pairs``), ``CsvSource`` (``csv_pairs``), ``HFSource`` (``hf_pairs``) or ``LitdataSource``
(``litdata_pairs``) — that holds its format's settings and builds the training and held-out
datasets and their loaders; the data module holds what every format shares (batch sizes, workers,
transforms, shuffling, the zero-shot set). A new format is a subclass of :class:`PairSource` in its
own module, named by ``class_path`` (docs/extending.md), as open_clip_train's ``get_dataset_fn``
picks one reader per format.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

from perceptlab.datamodules.image_text.common import MapPairCollate

def _data(value):
    """``value``, with ``None`` for the string ``"None"``: LightningCLI hands a dotted override of a
    nested reader's argument (``--data.init_args.pairs.init_args.val=null``) through as that string,
    and no one's data is a file named ``None``."""
    return None if isinstance(value, str) and value.strip() in ("None", "null") else value


class PairSource(ABC):
    """One image-text format's training pairs (``train``) and held-out pairs (``val``: validation
    loss and retrieval recall; ``None``: none). Subclasses build the datasets; map-style datasets
    get the data module's resumable, seeded loaders by default."""

    #: the format's name in messages and run records
    format: str = ""

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None) -> None:
        self.train = _data(train)
        self.val = _data(val)

    @abstractmethod
    def train_set(self, dm, transform: Callable, tokenizer: Callable, rank: int, world: int):
        """The training dataset for process ``rank`` of ``world`` (``dm``: the data module)."""

    @abstractmethod
    def val_set(self, dm, transform: Callable, tokenizer: Callable, rank: int, world: int):
        """The held-out dataset (called only when ``val`` is set)."""

    def train_loader(self, dm, dataset, tokenizer: Callable):
        """The training loader: by default the data module's own sampler over a map-style dataset
        (``datamodules.sampling``: ``shuffle`` holds under DDP, the order follows the run's seed and
        epoch, a resumed run continues mid-epoch exactly)."""
        return dm.train_loader(dataset, shuffle=dm.hparams.shuffle, drop_last=True, seed=dm.seed(),
                               collate_fn=MapPairCollate(tokenizer), even_shards=True)

    def val_loader(self, dm, dataset, tokenizer: Callable):
        return dm.eval_loader(dataset, collate_fn=MapPairCollate(tokenizer), persistent_workers=False)

    def state_dict(self) -> dict[str, Any]:
        """What the format must keep in a checkpoint beyond its loader's own state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(train={self.train!r}, val={self.val!r})"


def stream_loader(dm, stream):
    """The loader of a stream that batches itself (webdataset, streaming HF): one batch per item,
    the epoch of the trainer; persistent workers keep their copy of the stream, so each counts its
    own epochs."""
    from torch.utils.data import DataLoader

    trainer = dm.trainer
    stream.start_epoch = int(trainer.current_epoch) if trainer is not None else 0
    workers = dm.loader.num_workers
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=dm.loader.pinned, persistent_workers=workers > 0)
