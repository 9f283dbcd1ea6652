"""Labelled images for zero-shot classification: an image folder or a Hugging Face data set, read in
one place for stage 2's zero-shot validation and the noise-robustness probe.

* **image folder**: ``ROOT/<class>/<image>`` (image suffixes: ``core.images.IMAGE_SUFFIXES``),
  classes in sorted folder order unless ``classes`` gives the order;
* **Hugging Face**: a local parquet file or glob, a ``save_to_disk`` folder, a local data-set folder
  or a hub id (``image_text.hf_pairs.load_hf``), with an image column and a label column that is a
  ``ClassLabel`` (its names are the classes) or class-name strings (Hugging Face's ``cifar100``:
  ``image_column: img``, ``label_column: fine_label``);
* **CIFAR's python pickles** (``cifar``): the official ``cifar-100-python`` folder (``test`` or
  ``train`` with ``data``, rows of 3,072 bytes, the red, green and blue 32 x 32 planes, and
  ``fine_labels``; ``meta`` with ``fine_label_names``), read as data (``core.safe_load``: a pickle
  that would run code is refused). ``cifar-10-batches-py`` reads too (``test_batch``, ``labels``,
  ``batches.meta``'s ``label_names``).

Class names are returned as found (``_`` kept); the zero-shot prompts read ``_`` as a space.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from perceptlab.core.images import IMAGE_SUFFIXES

FORMATS = ("imagefolder", "hf", "cifar")


@dataclass
class LabelledImages:
    """``len(self)`` images with ``labels`` (indices into ``classes``)."""

    source: str
    classes: list[str]
    labels: list[int]
    paths: list[str] | None = None  # an image folder's files
    dataset: Any = field(default=None, repr=False)  # a ``datasets.Dataset``
    image_column: str = "image"

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self) -> Sequence:
        """What a dataset indexes: file paths, or the HF data set's rows."""
        return self.paths if self.paths is not None else self.dataset

    def images(self, rows: Sequence[int]) -> list:
        """The images of ``rows``: file paths (an image folder), or PIL images / datasets' image
        dicts (one ``select`` of the HF data set, so its rows are decoded once)."""
        if self.paths is not None:
            return [self.paths[i] for i in rows]
        return list(self.dataset.select(list(rows))[self.image_column]) if len(rows) else []


def read_labelled_images(source: str | os.PathLike, format: str = "imagefolder", split: str = "test",
                         image_column: str = "image", label_column: str = "label",
                         classes: Sequence[str] | None = None, cache_dir: str | None = None) -> LabelledImages:
    """Read an image folder or a Hugging Face data set (see the module docstring). ``classes``: the
    class names in label order (a folder's sub-folders must be among them; a ``ClassLabel``'s names
    are replaced by them, as many; string labels must be among them). Errors name the source and
    the missing folder, column or label."""
    if format not in FORMATS:
        raise ValueError(f"unknown labelled-image format {format!r}; expected one of {', '.join(FORMATS)}")
    classes = list(classes) if classes else None
    if format == "cifar":
        return _cifar(Path(source).expanduser(), split, classes)
    return _image_folder(Path(source).expanduser(), classes) if format == "imagefolder" else \
        _hf(str(source), split, image_column, label_column, classes, cache_dir)


def _cifar(root: Path, split: str, classes: list[str] | None) -> LabelledImages:
    # Not torchvision's CIFAR100: it unpickles the files with pickle.load, which runs whatever a
    # file names; these are read as data (core.safe_load), the same arrays and labels.
    import numpy as np

    from perceptlab.core.safe_load import load_plain_pickle

    ten = (root / "batches.meta").is_file()
    data_file = root / (("test_batch" if split == "test" else "data_batch_1") if ten else split)
    meta_file = root / ("batches.meta" if ten else "meta")
    for path in (data_file, meta_file):
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR python folder {root}: {path.name} is missing")
    data = load_plain_pickle(data_file, encoding="bytes")
    meta = load_plain_pickle(meta_file, encoding="bytes")
    labels_key, names_key = (b"labels", b"label_names") if ten else (b"fine_labels", b"fine_label_names")
    for table, key, path in ((data, b"data", data_file), (data, labels_key, data_file), (meta, names_key, meta_file)):
        if key not in table:
            raise KeyError(f"{path}: no {key.decode()!r} entry; has {', '.join(k.decode() for k in table)}")
    names = [n.decode() for n in meta[names_key]]
    if classes is not None and len(classes) != len(names):
        raise ValueError(f"{root}: {len(classes)} class names given for its {len(names)} classes")
    pixels = np.asarray(data[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return LabelledImages(str(root), classes or names, [int(v) for v in data[labels_key]], dataset=ArrayImages(pixels))


class ArrayImages:
    """Images held as one ``(n, H, W, 3)`` uint8 array, served as PIL images (CIFAR's pickles)."""

    def __init__(self, pixels) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def select(self, rows: Sequence[int]) -> dict[str, list]:
        from PIL import Image

        return {"image": [Image.fromarray(self.pixels[i]) for i in rows]}


def clip_benchmark_templates(dataset: str) -> list[str]:
    """The zero-shot templates (with ``{}``) CLIP_benchmark ships for ``dataset`` (its
    ``en_zeroshot_classification_templates.json``; ``cifar100``: 18 prompts). Its CIFAR class
    names are the data set's own (torchvision reads them from ``meta``), as here."""
    import json
    from importlib.resources import files

    templates = json.loads((files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json").read_text())
    if dataset not in templates:
        raise ValueError(f"CLIP_benchmark ships no templates for {dataset!r}")
    return [t.replace("{c}", "{}") for t in templates[dataset]]


def _image_folder(root: Path, classes: list[str] | None) -> LabelledImages:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"image folder {root} has no class sub-folders (expected ROOT/<class>/*.png)")
    unknown = sorted(set(folders) - set(classes)) if classes else []
    if unknown:
        raise ValueError(f"{root}: class folder(s) {unknown} not among classes {classes}")
    classes = classes or folders
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(path))
                labels.append(label)
    if not paths:
        raise ValueError(f"image folder {root} holds no images in its class folders")
    return LabelledImages(str(root), classes, labels, paths=paths)


def _hf(source: str, split: str, image_column: str, label_column: str, classes: list[str] | None,
        cache_dir: str | None) -> LabelledImages:
    import datasets

    from perceptlab.datamodules.image_text.hf_pairs import load_hf

    dataset = load_hf(source, split, cache_dir=cache_dir)
    for key, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in dataset.column_names:
            raise KeyError(f"{source}: no column {column!r} ({key}); columns are {', '.join(dataset.column_names)}")
    feature = dataset.features[label_column]
    raw = dataset[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if classes is not None and len(classes) != len(feature.names):
            raise ValueError(f"{source}: {len(classes)} class names given for the {len(feature.names)} classes of "
                             f"its {label_column!r} column")
        return LabelledImages(source, classes or list(feature.names), [int(v) for v in raw], dataset=dataset,
                              image_column=image_column)
    values = [str(v) for v in raw]
    classes = classes or sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(values) - set(index))
    if missing:
        raise ValueError(f"{source}: labels {missing[:5]} not among classes {classes}")
    return LabelledImages(source, classes, [index[v] for v in values], dataset=dataset, image_column=image_column)

