"""Image-text pairs from a CSV/TSV, as open_clip reads it (image-path column, caption column)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from perceptlab.datamodules.image_text.common import MapPairs
from perceptlab.datamodules.image_text.source import PairSource

log = logging.getLogger(__name__)

class CsvPairs(MapPairs):
    """Pairs from a CSV/TSV with an image-path column and a caption column (open_clip's format)."""

    def __init__(self, path: str | os.PathLike, transform, image_key: str = "filepath", caption_key: str = "title",
                 separator: str = "\t", image_root: str | os.PathLike | None = None) -> None:
        super().__init__(transform)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"image-text CSV not found: {self.path}")
        try:
            table = pd.read_csv(self.path, sep=separator, dtype=str, keep_default_na=False)
        except UnicodeDecodeError as exn:
            raise ValueError(f"{self.path}: not UTF-8 text ({exn.reason} at byte {exn.start}); "
                             "captions are read as UTF-8 (re-save the file so)") from None
        for key, what in ((image_key, "image_key"), (caption_key, "caption_key")):
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


class CsvSource(PairSource):
    """Pairs from CSV/TSV files, as open_clip reads them: one row per pair.

    Args:
        train / val: the training and held-out CSV files.
        image_key: the image-path column (open_clip's default ``filepath``).
        caption_key: the caption column (``title``).
        separator: the column separator (TAB).
        image_root: base folder of relative image paths (default: the CSV's own folder, where
            img2dataset and the toy world put the images).
    """

    format = "csv"

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None, image_key: str = "filepath",
                 caption_key: str = "title", separator: str = "\t", image_root: str | None = None) -> None:
        super().__init__(train, val)
        self.image_key, self.caption_key, self.separator, self.image_root = image_key, caption_key, separator, image_root

    def _pairs(self, path, transform) -> CsvPairs:
        return CsvPairs(path, transform, self.image_key, self.caption_key, self.separator, self.image_root)

    def train_set(self, dm, transform, tokenizer, rank: int, world: int) -> CsvPairs:
        return self._pairs(self.train, transform)

    def val_set(self, dm, transform, tokenizer, rank: int, world: int) -> CsvPairs:
        return self._pairs(self.val, transform)

