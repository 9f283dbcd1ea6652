"""Data for the perceptual tasks: image memorability (LaMem), no-reference image quality (pyiqa
meta-info CSVs) and visual emotion (EmoSet).

Every data module yields batches ``{"image": float (B, 3, H, W), "target": ...}``; the target is a
float score (regression; higher = more memorable / better quality after the normalisation below)
or an int64 class index (classification). With ``test_crops > 1`` test images come as
``(B, K, 3, H, W)``: K fixed crops whose predictions the model averages.

On-disk layouts (the real data sets; the toy world writes the same):

* **LaMem** -- ``ROOT/images/<file>``, ``ROOT/splits/{train,val,test}_<k>.txt`` for k = 1..5,
  one image per line: ``<file> <score> [more columns ignored]``, whitespace separated; the
  score is the memorability in [0, 1] (higher = more memorable) and is the target unchanged.
* **IQA** -- a pyiqa meta-info CSV with the images in a separate folder. With a pyiqa preset its
  columns are read by position, as pyiqa reads them (image name, score; full-reference sets:
  reference, distorted, score), since the headers differ between releases of the files (SPAQ:
  ``img_name,mos`` or ``Image name,MOS``); without one, or when named, by name (``img_name``, ``mos``).
  Splits: a split column with values ``train``/``val``/``test`` (KonIQ-10k's official split is
  pyiqa's ``official_split`` column; the toy world writes ``split``; pyiqa's ratio splits are
  columns like ``ratio802_seed123_split_01``) or, when the CSV has none (LIVE-C), a seeded
  ratio split. See :class:`IQASet`.
* **EmoSet** -- ``ROOT/{train,val,test}.json``, each a list of
  ``[emotion, image_path, annotation_path]`` with paths relative to ROOT; the target is the
  emotion's index in ``emotions`` (default :data:`EMOTIONS`, EmoSet's order).

What pyiqa contributes: its dataset registry (``pyiqa/default_dataset_configs.yml``) is read as
*presets* -- a set named ``koniq10k`` gets pyiqa's MOS range, direction, meta-info file name and
split column; ``livec`` gets pyiqa's rule of dropping the first 7 rows (LIVE-C's training
images). Its normalisation ``(mos - lo) / (hi - lo)``, flipped when lower is better, is the
``range`` mode here, and pyiqa's pickled split files (``split_file``/``split_index``) are
honoured. pyiqa's dataset classes are not used: they return their own tensors and options, not
open_clip's transforms, and importing pyiqa costs seconds for every worker.

Transforms come from the attached model's backbone when there is one (so data and model never
disagree on size or normalisation); on its own a data module builds open_clip's transform for
``model_name``.
"""
from __future__ import annotations

import abc
import json
import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import transforms as T

from perceptlab.core.images import to_rgb
from perceptlab.datamodules.base import BackboneDataModule, check_images, name_some
from perceptlab.datamodules.iqa import (  # noqa: F401 (re-exported)
    PHASES,
    IQASet,
    iqa_preset,
    pyiqa_column,
    read_iqa_set,
    split_labels,
)
from perceptlab.datamodules.protocols import get_protocol

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- data modules
class PerceptualDataModule(BackboneDataModule, abc.ABC):
    """Shared loaders and transforms of the perceptual-task data modules.

    Args:
        batch_size: images per batch and per device.
        num_workers: loader processes per device (they decode the images).
        eval_batch_size: images per batch in val/test (default ``batch_size``).
        model_name: open_clip architecture for the transform when no model is attached.
        pretrained: open_clip tag whose mean/std apply when no model is attached.
        image_size: input size when no model is attached (default: the architecture's).
        train_augment: open_clip's training transform (random resized crop) for training.
        test_crops: 1 (the eval transform), 5 or 10 fixed crops per test image (averaged by the model).
        test_resize_ratio: multi-crop resize of the shorter side, in units of the input size.
        test_protocol: a PerceptCLIP model card's test protocol for the test sets instead
            (``perceptclip_iqa``: 15 random 224-px crops of the image resized to 512x384, averaged;
            ``perceptclip_memorability`` / ``perceptclip_emotions``: one centre crop;
            :mod:`perceptlab.datamodules.protocols`). Its output mapping is affine, so the test
            correlations it would change are none; ``perceptlab predict`` applies it.
        protocol_seed: the seed of the protocol's random crops (the same image, the same crops).
        verify_images: check at set-up that every listed image file exists (named if not).
        pin_memory: pin batches for faster host-to-GPU copies.
    """

    task: str = "regression"

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 4,
        eval_batch_size: int | None = None,
        model_name: str | None = None,
        pretrained: str | None = None,
        image_size: int | None = None,
        train_augment: bool = False,
        test_crops: int = 1,
        test_resize_ratio: float = 1.15,
        test_protocol: str | None = None,
        protocol_seed: int = 0,
        verify_images: bool = True,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(model_name, pretrained, image_size)
        if test_crops not in (1, 5, 10):
            raise ValueError(f"test_crops must be 1, 5 or 10, got {test_crops}")
        self.test_protocol = get_protocol(test_protocol) if test_protocol else None
        if self.test_protocol is not None and test_crops != 1:
            raise ValueError(f"test_crops={test_crops} and test_protocol={test_protocol}: the protocol sets the crops")
        if self.test_protocol is not None and self.test_protocol.task != self.task:
            raise ValueError(f"test_protocol {test_protocol} is for {self.test_protocol.task}; "
                             f"{type(self).__name__} serves {self.task}")
        self.protocol_seed = protocol_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.train_augment = train_augment
        self.test_crops = test_crops
        self.test_resize_ratio = test_resize_ratio
        self.verify_images = verify_images
        self.pin_memory = pin_memory
        self.datasets: dict[str, ImageTargets] = {}

    # -- what subclasses provide
    @property
    @abc.abstractmethod
    def test_set_names(self) -> list[str]:
        """Names of the test dataloaders, in order (metrics are logged as ``test/<name>/...``)."""

    @abc.abstractmethod
    def rows(self, phase: str, name: str | None = None) -> tuple[list[str], list]:
        """(image paths, targets) of ``phase``; ``name`` picks a test set."""

    # -- transforms
    def transforms(self) -> tuple[Callable, Callable, Callable]:
        """(train, eval, test) transforms, from the attached backbone or open_clip's config."""
        pp = self.preprocessing(train_augment=self.train_augment)
        test_tf = pp.eval if self.test_crops == 1 else multicrop_transform(
            pp.size, pp.mean, pp.std, self.test_crops, self.test_resize_ratio, pp.interpolation)
        if self.test_protocol is not None:
            test_tf = self.test_protocol.transform(self.protocol_seed)
        return pp.train, pp.eval, test_tf

    # -- set-up
    def setup(self, stage: str | None = None) -> None:
        train_tf, eval_tf, test_tf = self.transforms()
        wanted: dict[str, tuple[str, str | None, Callable]] = {}
        if stage in (None, "fit"):
            wanted["train"] = ("train", None, train_tf)
        if stage in (None, "fit", "validate"):
            wanted["val"] = ("val", None, eval_tf)
        if stage in (None, "test"):
            for name in self.test_set_names:
                wanted[f"test/{name}"] = ("test", name, test_tf)
        for key, (phase, name, tf) in wanted.items():
            if key in self.datasets:
                self.datasets[key].transform = tf
                continue
            paths, targets = self.rows(phase, name)
            if self.verify_images:
                _check_files(paths, f"{type(self).__name__} {key}")
            self.datasets[key] = ImageTargets(paths, targets, tf, classification=self.task == "classification")

    # -- loaders
    def train_dataloader(self) -> StatefulDataLoader:
        # Stateful: Lightning stores the sampler position, so a resumed run continues mid-epoch.
        return self.train_loader(self.datasets["train"], self.batch_size, self.num_workers, self.pin_memory)

    def _eval_loader(self, key: str) -> DataLoader:
        return self.eval_loader(self.datasets[key], self.eval_batch_size or self.batch_size, self.num_workers,
                                self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(f"test/{name}") for name in self.test_set_names]


class LaMemDataModule(PerceptualDataModule):
    """LaMem memorability regression (target: the score in the split file, higher = more memorable).

    Args:
        root: LaMem folder (``images/``, ``splits/``).
        split_index: which of the five official splits (``train_<k>.txt`` ...), 1..5.
        name: the test set's name in logs (``test/<name>/srcc``).
        **kwargs: see :class:`PerceptualDataModule`.
    """

    task = "regression"

    def __init__(self, root: str, split_index: int = 1, name: str = "lamem", batch_size: int = 32,
                 num_workers: int = 4, eval_batch_size: int | None = None, model_name: str | None = None,
                 pretrained: str | None = None, image_size: int | None = None, train_augment: bool = False,
                 test_crops: int = 1, test_resize_ratio: float = 1.15, verify_images: bool = True,
                 pin_memory: bool = True, test_protocol: str | None = None, protocol_seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, model_name, pretrained, image_size,
                         train_augment, test_crops, test_resize_ratio, test_protocol, protocol_seed,
                         verify_images, pin_memory)
        self.save_hyperparameters(ignore=list(self.MODEL_KEYS))
        self.root = Path(root).expanduser()
        self.split_index = split_index
        self.name = name

    @property
    def test_set_names(self) -> list[str]:
        return [self.name]

    def rows(self, phase: str, name: str | None = None) -> tuple[list[str], list]:
        table = read_lamem_split(self.root, phase, self.split_index)
        return table["path"].tolist(), table["score"].tolist()


class EmoSetDataModule(PerceptualDataModule):
    """EmoSet visual-emotion classification (target: index of the emotion in ``emotions``).

    Args:
        root: EmoSet folder (``train.json``, ``val.json``, ``test.json``, ``image/``).
        emotions: class names in index order (EmoSet's eight by default).
        name: the test set's name in logs.
        **kwargs: see :class:`PerceptualDataModule`.
    """

    task = "classification"

    def __init__(self, root: str, emotions: list[str] | None = None, name: str = "emoset", batch_size: int = 32,
                 num_workers: int = 4, eval_batch_size: int | None = None, model_name: str | None = None,
                 pretrained: str | None = None, image_size: int | None = None, train_augment: bool = False,
                 test_crops: int = 1, test_resize_ratio: float = 1.15, verify_images: bool = True,
                 pin_memory: bool = True, test_protocol: str | None = None, protocol_seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, model_name, pretrained, image_size,
                         train_augment, test_crops, test_resize_ratio, test_protocol, protocol_seed,
                         verify_images, pin_memory)
        self.save_hyperparameters(ignore=list(self.MODEL_KEYS))
        self.root = Path(root).expanduser()
        self.class_names = list(emotions) if emotions is not None else list(EMOTIONS)
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def test_set_names(self) -> list[str]:
        return [self.name]

    def rows(self, phase: str, name: str | None = None) -> tuple[list[str], list]:
        table = read_emoset_split(self.root, phase, self.class_names)
        return table["path"].tolist(), table["label"].tolist()


class IQADataModule(PerceptualDataModule):
    """No-reference IQA regression on pyiqa meta-info CSVs, with cross-dataset tests.

    Training and validation use the ``train``/``val`` rows of ``train_set``; ``trainer.test``
    evaluates its ``test`` rows and then every set of ``extra_test_sets`` (typically with
    ``subset: all``), each logged under its own name. Targets are normalised MOS, higher =
    better quality (see :class:`IQASet`).

    Args:
        train_set: the set trained on (see :class:`IQASet`).
        extra_test_sets: further sets for ``trainer.test`` (cross-dataset evaluation).
        **kwargs: see :class:`PerceptualDataModule`.
    """

    task = "regression"

    def __init__(self, train_set: IQASet, extra_test_sets: list[IQASet] | None = None, batch_size: int = 32,
                 num_workers: int = 4, eval_batch_size: int | None = None, model_name: str | None = None,
                 pretrained: str | None = None, image_size: int | None = None, train_augment: bool = False,
                 test_crops: int = 1, test_resize_ratio: float = 1.15, verify_images: bool = True,
                 pin_memory: bool = True, test_protocol: str | None = None, protocol_seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, model_name, pretrained, image_size,
                         train_augment, test_crops, test_resize_ratio, test_protocol, protocol_seed,
                         verify_images, pin_memory)
        self.save_hyperparameters(ignore=list(self.MODEL_KEYS))
        self.train_set = train_set
        self.extra_test_sets = list(extra_test_sets or [])
        names = [train_set.name, *(s.name for s in self.extra_test_sets)]
        if len(set(names)) != len(names):
            raise ValueError(f"IQA set names must be distinct (they name the test metrics), got {names}")

    @property
    def test_set_names(self) -> list[str]:
        return [self.train_set.name, *(s.name for s in self.extra_test_sets)]

    def rows(self, phase: str, name: str | None = None) -> tuple[list[str], list]:
        cfg = self.train_set
        if name is not None and name != cfg.name:
            cfg = next(s for s in self.extra_test_sets if s.name == name)
        table = read_iqa_set(cfg, phase)
        return table["path"].tolist(), table["score"].tolist()
