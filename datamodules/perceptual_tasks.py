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
import logging
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from perceptlab.datamodules.base import BackboneDataModule
from perceptlab.datamodules.iqa import IQASet, read_iqa_set
from perceptlab.datamodules.loader import Loader
from perceptlab.datamodules.protocols import get_protocol
from perceptlab.datamodules.task_sets import (
    EMOTIONS,
    ImageTargets,
    _check_files,
    multicrop_transform,
    read_emoset_split,
    read_lamem_split,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data modules
class PerceptualDataModule(BackboneDataModule, abc.ABC):
    """Shared loaders and transforms of the perceptual-task data modules.

    Args:
        loader: batch sizes (images per batch and per device), loader processes (they decode the
            images) and pinning (:class:`perceptlab.datamodules.loader.Loader`).
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
    """

    task: str = "regression"

    def __init__(
        self,
        loader: Loader = Loader(batch_size=32, num_workers=4),
        model_name: str | None = None,
        pretrained: str | None = None,
        image_size: int | None = None,
        train_augment: bool = False,
        test_crops: int = 1,
        test_resize_ratio: float = 1.15,
        test_protocol: str | None = None,
        protocol_seed: int = 0,
        verify_images: bool = True,
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
        self.loader = Loader.of(loader)  # stored by the subclass's save_loader_hyperparameters
        self.train_augment = train_augment
        self.test_crops = test_crops
        self.test_resize_ratio = test_resize_ratio
        self.verify_images = verify_images
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
        return self.train_loader(self.datasets["train"])

    def _eval_loader(self, key: str) -> DataLoader:
        return self.eval_loader(self.datasets[key])

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
        **common: the loaders, transforms and test crops of :class:`PerceptualDataModule`, declared there once.
    """

    task = "regression"

    def __init__(self, root: str, split_index: int = 1, name: str = "lamem", **common: Any) -> None:
        super().__init__(**common)  # loaders, transforms, test crops: see PerceptualDataModule
        self.save_loader_hyperparameters(self.loader)
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
        **common: the loaders, transforms and test crops of :class:`PerceptualDataModule`, declared there once.
    """

    task = "classification"

    def __init__(self, root: str, emotions: list[str] | None = None, name: str = "emoset", **common: Any) -> None:
        super().__init__(**common)  # loaders, transforms, test crops: see PerceptualDataModule
        self.save_loader_hyperparameters(self.loader)
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
        **common: the loaders, transforms and test crops of :class:`PerceptualDataModule`, declared there once.
    """

    task = "regression"

    def __init__(self, train_set: IQASet, extra_test_sets: list[IQASet] | None = None, **common: Any) -> None:
        super().__init__(**common)  # loaders, transforms, test crops: see PerceptualDataModule
        self.save_loader_hyperparameters(self.loader)
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
