"""Images to score: a folder, a list file or a CSV, read so that a bad image never stops a run.

* a folder: every image below it (torchvision's image extensions), sorted, recursively;
* a list file (``.txt``/``.lst``): one path per line, relative paths against the file's folder;
* a CSV: the column ``column`` (default: the first), relative paths against the CSV's folder.

:class:`ImagePaths` yields ``(index, image tensor)`` for a readable image and ``(index, error
text)`` for one that is missing or undecodable; :func:`collate_scored` keeps the readable ones
in the batch and passes the failures on, so the caller can list them and count them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from perceptlab.core.images import to_rgb


def read_image_list(source: str | os.PathLike, column: str | None = None) -> list[str]:
    """Image paths of a folder, a list file or a CSV (see the module docstring), in order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    path = Path(source).expanduser()
    if path.is_dir():
        paths = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not paths:
            raise ValueError(f"{path}: no images ({', '.join(IMG_EXTENSIONS)}) in the folder")
        return paths
    if not path.is_file():
        raise FileNotFoundError(f"images not found: {path} (a folder, a list file or a CSV)")
    if path.suffix.lower() in (".csv", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False)
        name = column or table.columns[0]
        if name not in table.columns:
            raise ValueError(f"{path}: no column {name!r}; columns: {', '.join(table.columns)}")
        entries = table[name].tolist()
    else:
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not entries:
        raise ValueError(f"{path} lists no images")
    return [e if Path(e).is_absolute() else str(path.parent / e) for e in entries]


class ImagePaths(Dataset):
    """``(index, transform(RGB image))``, or ``(index, "<error>")`` when the image cannot be read."""

    def __init__(self, paths: list[str], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            with Image.open(self.paths[index]) as image:
                return index, self.transform(to_rgb(image))
        except Exception as exn:  # noqa: BLE001  one unreadable image is reported, not fatal
            return index, f"{type(exn).__name__}: {exn}"[:300]


def collate_scored(items: list[tuple[int, Any]]) -> dict[str, Any]:
    """``{"image": (n, ...) readable images, "index": (n,), "failed": [(index, error), ...]}``."""
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    failed = [(i, x) for i, x in items if not isinstance(x, torch.Tensor)]
    images = torch.stack([x for _, x in good]) if good else torch.zeros(0)
    return {"image": images, "index": torch.tensor([i for i, _ in good], dtype=torch.long), "failed": failed}
