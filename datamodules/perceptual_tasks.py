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

from perceptlab.datamodules.base import BackboneDataModule
from perceptlab.datamodules.iqa import PHASES, iqa_preset, pyiqa_column, split_labels

log = logging.getLogger(__name__)

#: EmoSet's eight emotions, in the order of its class indices (positive first, then negative).
EMOTIONS: tuple[str, ...] = (
    "amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness",
)
LAMEM_SPLITS = ("train", "val", "test")
_SHOWN = 5


def _name_some(items: Sequence[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" (and {more} more)" if more > 0 else "")


def _check_files(paths: Sequence[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} {what} image file(s) missing: {_name_some(missing)}")


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


@dataclass
class IQASet:
    """One IQA data set given by a pyiqa meta-info CSV.

    Args:
        name: the set's name in logs (``test/<name>/srcc``).
        root: folder that relative ``meta_info_file`` and ``image_dir`` are resolved against.
        meta_info_file: the CSV (default: the preset's file name, in ``root``).
        image_dir: folder of the images named in ``name_column`` (relative to ``root``).
        preset: a pyiqa dataset name (``koniq10k``, ``livec``, ``spaq``, ``kadid10k``,
            ``tid2013``, ...) whose registry entry supplies ``mos_range``, ``lower_better``, the
            meta-info file name, the split column and LIVE-C's ``drop_first=7``; explicit
            fields win.
        name_column: image file column, by name (default: with a preset, pyiqa's position -- the
            first column, the second (distorted image) for full-reference sets; else ``img_name``).
        mos_column: score column, by name (default: with a preset, pyiqa's position -- the second
            column, the third for full-reference sets; else ``mos``).
        lower_better: MOS direction of this set; required (here or by ``preset``), never guessed.
        mos_range: the MOS scale ``[lo, hi]`` for ``range`` normalisation (default: preset's, else
            the CSV's min and max).
        mos_normalize: ``range`` -> ``(mos - lo) / (hi - lo)`` (pyiqa's; in [0, 1]); ``zscore`` ->
            ``(mos - mean) / std`` over the set's training rows (all rows if it has no split);
            ``none`` -> the MOS itself. Lower-better sets are flipped in every mode so that the
            target is always higher-is-better.
        split_column: ``auto`` (preset's split column, else ``official_split`` or ``split`` if
            present, else a seeded ratio split), a column name (values train/val/test), or
            ``null`` for a seeded ratio split.
        split_ratio: train/val/test fractions of the seeded ratio split.
        split_seed: seed of the ratio split.
        split_file: a pyiqa split pickle ``{index: {"train": [rows], "val": [...], "test": [...]}}``;
            overrides ``split_column``.
        split_index: key in ``split_file``.
        drop_first: rows dropped from the top of the CSV before splitting (pyiqa drops 7 for LIVE-C).
        subset: ``split`` -> a phase gets its split's rows; ``all`` -> every row (cross-dataset tests).
    """

    name: str
    root: str
    meta_info_file: str | None = None
    image_dir: str = "images"
    preset: str | None = None
    name_column: str | None = None
    mos_column: str | None = None
    lower_better: bool | None = None
    mos_range: tuple[float, float] | None = None
    mos_normalize: Literal["range", "zscore", "none"] = "range"
    split_column: str | None = "auto"
    split_ratio: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    split_file: str | None = None
    split_index: int | str = 1
    drop_first: int | None = None
    subset: Literal["split", "all"] = "split"


def _resolved(cfg: IQASet) -> dict[str, Any]:
    """``cfg`` with the pyiqa preset filled in where fields were left unset."""
    out = dict(vars(cfg))
    preset = None
    if cfg.preset:
        try:
            preset = iqa_preset(cfg.preset)
        except ValueError as exc:
            raise ValueError(f"IQA set {cfg.name!r}: {exc}") from None
    if out["meta_info_file"] is None:
        if preset is None or not preset.meta_info_file:
            raise ValueError(f"IQA set {cfg.name!r}: give meta_info_file (or a pyiqa preset that names one)")
        out["meta_info_file"] = preset.meta_info_file
    if out["lower_better"] is None:
        if preset is None or preset.lower_better is None:
            raise ValueError(
                f"IQA set {cfg.name!r}: set lower_better (the MOS direction is configuration, not a guess) "
                "or a pyiqa preset"
            )
        out["lower_better"] = preset.lower_better
    if out["mos_range"] is None and preset is not None:
        out["mos_range"] = preset.mos_range
    if out["drop_first"] is None:
        out["drop_first"] = preset.drop_first if preset is not None else 0
    out["preset_split"] = preset.split_column if preset is not None else None
    # Unnamed columns: pyiqa's positions with a preset (name, score; FR: reference, distorted,
    # score), else the usual names.
    out["name_position"] = preset.name_position if preset is not None and out["name_column"] is None else None
    out["mos_position"] = preset.score_position if preset is not None and out["mos_column"] is None else None
    out["name_column"] = out["name_column"] or "img_name"
    out["mos_column"] = out["mos_column"] or "mos"
    return out


def read_iqa_set(cfg: IQASet, phase: str) -> pd.DataFrame:
    """Rows of one phase (``train``/``val``/``test``) of an IQA set: ``file, path, mos, score``.

    ``mos`` is the CSV value, ``score`` the normalised higher-is-better target (see
    :class:`IQASet`). Raises ``FileNotFoundError`` naming the CSV and ``ValueError`` naming a
    missing column (with the columns found) or a split value outside train/val/test.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    c = _resolved(cfg)
    root = Path(c["root"]).expanduser()
    csv = Path(c["meta_info_file"]).expanduser()
    csv = csv if csv.is_absolute() else root / csv
    if not csv.is_file():
        raise FileNotFoundError(f"IQA set {cfg.name!r}: meta-info CSV not found: {csv}")
    table = pd.read_csv(csv)
    for key in ("name", "mos"):
        if c[f"{key}_position"] is not None:
            c[f"{key}_column"] = pyiqa_column(table, c[f"{key}_position"], csv)
    for role, col in (("image name", c["name_column"]), ("MOS", c["mos_column"])):
        if col not in table.columns:
            raise ValueError(
                f"{csv}: no {role} column {col!r} (set {role.split()[-1].lower()}_column of IQA set {cfg.name!r}); "
                f"columns: {', '.join(map(str, table.columns))}"
            )
    if not pd.api.types.is_numeric_dtype(table[c["mos_column"]]):
        raise ValueError(f"{csv}: MOS column {c['mos_column']!r} is not numeric")
    table = table.iloc[int(c["drop_first"]):].reset_index(drop=True)

    split = split_labels(table, csv, c["split_column"], c["preset_split"], c["split_file"], c["split_index"],
                         c["split_ratio"], c["split_seed"])
    mos = table[c["mos_column"]].astype(float).to_numpy()
    fit_rows = split == "train" if (split == "train").any() else np.ones(len(table), bool)
    score = _normalize(mos, c, fit_rows)
    keep = np.ones(len(table), bool) if c["subset"] == "all" else split == phase
    if not keep.any():
        raise ValueError(f"IQA set {cfg.name!r}: no rows for phase {phase!r} in {csv}")
    image_dir = Path(c["image_dir"]).expanduser()
    image_dir = image_dir if image_dir.is_absolute() else root / image_dir
    files = table[c["name_column"]].astype(str).to_numpy()[keep]
    return pd.DataFrame({
        "file": files,
        "path": [str(image_dir / f) for f in files],
        "mos": mos[keep],
        "score": score[keep],
    })


def _normalize(mos: np.ndarray, c: dict, fit_rows: np.ndarray) -> np.ndarray:
    mode = c["mos_normalize"]
    sign = -1.0 if c["lower_better"] else 1.0
    if mode == "none":
        return sign * mos
    if mode == "zscore":
        ref = mos[fit_rows]
        std = ref.std()
        return sign * (mos - ref.mean()) / (std if std > 0 else 1.0)
    if mode != "range":
        raise ValueError(f"unknown mos_normalize {mode!r}; expected range, zscore or none")
    lo, hi = c["mos_range"] if c["mos_range"] is not None else (float(mos.min()), float(mos.max()))
    if hi <= lo:
        raise ValueError(f"mos_range must be [lo, hi] with lo < hi, got {[lo, hi]}")
    x = (mos - lo) / (hi - lo)
    return 1.0 - x if c["lower_better"] else x


# ------------------------------------------------------------------------------------ dataset
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
                image = im.convert("RGB")
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
        verify_images: bool = True,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(model_name, pretrained, image_size)
        if test_crops not in (1, 5, 10):
            raise ValueError(f"test_crops must be 1, 5 or 10, got {test_crops}")
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
        return StatefulDataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True,
                                  drop_last=False, **self.loader_kwargs(self.num_workers, self.pin_memory))

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
                 pin_memory: bool = True) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, model_name, pretrained, image_size,
                         train_augment, test_crops, test_resize_ratio, verify_images, pin_memory)
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
                 pin_memory: bool = True) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, model_name, pretrained, image_size,
                         train_augment, test_crops, test_resize_ratio, verify_images, pin_memory)
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
                 pin_memory: bool = True) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size, model_name, pretrained, image_size,
                         train_augment, test_crops, test_resize_ratio, verify_images, pin_memory)
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
