"""The perceptual tasks' data below the data modules: the LaMem and EmoSet split readers, the
image-and-target dataset they and the IQA sets feed, and the fixed test-time crops.

The on-disk layouts are described in :mod:`perceptlab.datamodules.perceptual_tasks`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from perceptlab.core.images import to_rgb
from perceptlab.datamodules.base import check_images, name_some

#: EmoSet's eight emotions, in the order of its class indices (positive first, then negative).
EMOTIONS: tuple[str, ...] = (
    "amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness",
)
LAMEM_SPLITS = ("train", "val", "test")
_SHOWN = 5




def _check_files(paths: Sequence[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} {what} image file(s) missing: {name_some(missing)}")
    check_images(paths, what)


# ------------------------------------------------------------------------------------ readers
def read_lamem_split(root: str | os.PathLike, split: str, index: int = 1) -> pd.DataFrame:
    """Rows of ``ROOT/splits/<split>_<index>.txt`` as a DataFrame ``file, path, score``.

    ``score`` is the LaMem memorability (float, higher = more memorable) exactly as written.
    Raises ``FileNotFoundError`` naming the split file, ``ValueError`` naming file and line of a
    malformed line.
    """
    if split not in LAMEM_SPLITS:
        raise ValueError(f"unknown LaMem split {split!r}; expected one of {', '.join(LAMEM_SPLITS)}")
    root = Path(root).expanduser()
    path = root / "splits" / f"{split}_{index}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"LaMem split file not found: {path} (expected ROOT/splits/{{train,val,test}}_<k>.txt, k = 1..5)"
        )
    files, scores = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) < 2:
                raise ValueError("no score")
            score = float(fields[1])
        except ValueError:
            raise ValueError(f"{path}:{n}: expected '<file> <score>', got {line.strip()!r}") from None
        files.append(fields[0])
        scores.append(score)
    if not files:
        raise ValueError(f"LaMem split file {path} lists no images")
    return pd.DataFrame({"file": files, "path": [str(root / "images" / f) for f in files], "score": scores})


def read_emoset_split(
    root: str | os.PathLike, split: str, emotions: Sequence[str] = EMOTIONS
) -> pd.DataFrame:
    """Rows of ``ROOT/<split>.json`` as a DataFrame ``emotion, label, path, annotation``.

    ``label`` is ``emotions.index(emotion)``. Raises ``FileNotFoundError`` naming the JSON file and
    ``ValueError`` naming the file, entry and value of an unknown emotion or a malformed entry.
    """
    root = Path(root).expanduser()
    path = root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"EmoSet split file not found: {path} (expected ROOT/{{train,val,test}}.json)")
    items = json.loads(path.read_text())
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of [emotion, image_path, annotation_path]")
    index = {e: i for i, e in enumerate(emotions)}
    rows = []
    for n, item in enumerate(items):
        if not isinstance(item, (list, tuple)) or len(item) < 2:
            raise ValueError(f"{path}: entry {n} is {item!r}, expected [emotion, image_path, annotation_path]")
        emotion = str(item[0])
        if emotion not in index:
            raise ValueError(
                f"{path}: entry {n} has unknown emotion label {emotion!r}; known: {', '.join(emotions)}"
            )
        rows.append((emotion, index[emotion], str(root / str(item[1])),
                     str(root / str(item[2])) if len(item) > 2 and item[2] else None))
    if not rows:
        raise ValueError(f"EmoSet split file {path} lists no images")
    return pd.DataFrame(rows, columns=["emotion", "label", "path", "annotation"])


class ImageTargets(Dataset):
    """Map-style dataset of ``{"image": transform(PIL RGB), "target": float | int64}``."""

    def __init__(self, paths: Sequence[str], targets: Sequence[float] | Sequence[int], transform: Callable,
                 classification: bool = False) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets] if classification else [float(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                image = to_rgb(im)
        except Exception as err:
            raise OSError(f"cannot decode image {path}: {err}") from err
        return {"image": self.transform(image), "target": self.targets[index]}


# ------------------------------------------------------------------------------- transforms
def multicrop_transform(size: int, mean: Sequence[float], std: Sequence[float], crops: int,
                        resize_ratio: float = 1.15, interpolation: str = "bicubic") -> T.Compose:
    """Test-time crops: resize the shorter side to ``size * resize_ratio``, then torchvision's
    ``FiveCrop`` (``crops=5``: corners + centre) or ``TenCrop`` (``crops=10``: plus mirrors);
    returns a tensor ``(crops, 3, size, size)``."""
    if crops not in (5, 10):
        raise ValueError(f"test_crops must be 1, 5 or 10, got {crops}")
    mode = T.InterpolationMode.BICUBIC if interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    crop = T.FiveCrop(size) if crops == 5 else T.TenCrop(size)
    return T.Compose([
        T.Resize(int(math.ceil(size * resize_ratio)), interpolation=mode),
        crop,
        _EachCrop(T.Compose([T.ToTensor(), T.Normalize(mean, std)])),
    ])


class _EachCrop:
    """Applies a transform to each crop and stacks them (a class, not a lambda: workers pickle it)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, views) -> torch.Tensor:
        return torch.stack([self.transform(v) for v in views])
