"""NIGHTS: DreamSim's human image-similarity triplets (Fu et al., 2023).

On-disk layout (the real data set; the toy world writes the same)::

    ROOT/data.csv          id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,prompt
    ROOT/ref/000/000.png   reference images
    ROOT/distort/000/000_0.png, ROOT/distort/000/000_1.png    the two distortions (left, right)

Columns are read by name (extra columns are ignored; ``prompt`` is optional). ``right_vote`` is the
share of people, in [0, 1], who judged the right image closer to the reference; it is the target
``p`` of every triplet. Rows with fewer than ``min_votes`` votes (6, as in DreamSim) are dropped.

Splits: ``train``, ``val``, ``test`` (all test rows), and DreamSim's ``test_imagenet`` /
``test_no_imagenet`` (test rows whose ``is_imagenet`` is true / false).

Preprocessing is DreamSim's: bicubic resize of the shorter side to the model's input size, centre
crop (a no-op on NIGHTS' square images), tensor in [0, 1], then the backbone's normalisation; no
augmentation unless ``train_augment`` asks for open_clip's training transform. By default
(``uint8_images``) the loader workers stop at ``uint8`` tensors after the PIL steps and the
backbone does the [0, 1] conversion and normalisation on the model's device: the same numbers,
a quarter of the bytes between processes and to the GPU.

Where the transform comes from (:class:`NightsDataModule`): when the data module is attached to a
trainer whose LightningModule has a ``backbone`` (every perceptlab stage module), the backbone's
own eval transform is used, so data and model can never disagree on size or normalisation. Used
on its own (a script, a benchmark), it builds the same transform with open_clip's preprocess
configuration for ``model_name`` (and ``pretrained`` tag, ``image_size`` override).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from perceptlab.core.images import to_rgb
from perceptlab.datamodules.base import BackboneDataModule, check_images, name_some
from perceptlab.datamodules.loader import Loader

#: ``all``: every row of ``data.csv``, whatever its split (the protocol of Hernandez-Camara et al.,
#: who score all 20,019 triplets).
SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet", "all")
REQUIRED_COLUMNS = ("id", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
IMAGE_COLUMNS = ("ref_path", "left_path", "right_path")
# How many offending names an error message spells out before it only counts the rest.
_SHOWN = 5

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def _as_bool(values: pd.Series, column: str, csv: Path) -> pd.Series:
    """``is_imagenet`` as booleans; NIGHTS writes ``True``/``False``, other tools 0/1."""
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    bad = sorted(set(text[~text.isin(_TRUE | _FALSE)]))
    if bad:
        raise ValueError(f"{csv}: column {column!r} must hold booleans (True/False or 1/0); found {bad[:_SHOWN]}")
    return text.isin(_TRUE)




def load_nights_table(root: str | os.PathLike, split: str, min_votes: int = 6) -> pd.DataFrame:
    """The rows of one NIGHTS split, validated, with at least ``min_votes`` votes each.

    Returns a DataFrame with a fresh 0-based index and every column of ``data.csv``;
    ``is_imagenet`` is boolean and ``right_vote`` float. Raises ``FileNotFoundError`` naming
    ``data.csv`` or the first missing image files (and how many more are missing), and
    ``ValueError`` naming a missing column, an unknown split, a ``right_vote`` outside [0, 1], or
    a split left with no rows after the vote filter.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown NIGHTS split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    csv = root / "data.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"NIGHTS table not found: {csv} (root must hold data.csv, ref/ and distort/)")
    table = pd.read_csv(csv)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing_cols:
        raise ValueError(
            f"{csv}: missing column(s) {', '.join(repr(c) for c in missing_cols)}; "
            f"found {', '.join(map(str, table.columns))}"
        )
    for col in ("votes", "right_vote"):
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise ValueError(f"{csv}: column {col!r} must be numeric, found values like {table[col].iloc[0]!r}")
    table["is_imagenet"] = _as_bool(table["is_imagenet"], "is_imagenet", csv)
    table["right_vote"] = table["right_vote"].astype(float)

    base = "test" if split.startswith("test") else split
    rows = table if split == "all" else table[table["split"].astype(str).str.strip() == base]
    if split == "test_imagenet":
        rows = rows[rows["is_imagenet"]]
    elif split == "test_no_imagenet":
        rows = rows[~rows["is_imagenet"]]
    n_split = len(rows)
    rows = rows[rows["votes"] >= min_votes].reset_index(drop=True)
    if rows.empty:
        raise ValueError(
            f"{csv}: split {split!r} has no rows with votes >= {min_votes} "
            f"({n_split} rows before the vote filter; splits present: "
            f"{', '.join(sorted(table['split'].astype(str).unique()))})"
        )
    for column in ("right_vote", "left_vote"):  # right_vote is the label
        if column not in rows.columns:
            continue
        votes = pd.to_numeric(rows[column], errors="coerce")
        bad = rows[(votes < 0) | (votes > 1) | votes.isna()]
        if not bad.empty:
            ids = [f"id={i} ({v!r})" for i, v in zip(bad["id"], bad[column])]
            raise ValueError(f"{csv}: {column!r} must be a share of people in [0, 1]; bad rows: {name_some(ids)}")
        rows[column] = votes

    missing = [
        f"{rel} (id={row_id}, {col})"
        for col in IMAGE_COLUMNS
        for row_id, rel in zip(rows["id"], rows[col])
        if not (root / str(rel)).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"NIGHTS split {split!r} under {root}: {len(missing)} referenced image file(s) missing: "
            + name_some(missing)
        )
    return rows


def check_images_readable(root: str | os.PathLike, table: pd.DataFrame, workers: int = 16) -> None:
    """Raise ``ValueError`` naming every image of ``table`` that PIL cannot identify (first few + count)."""
    root = Path(root).expanduser()
    check_images([root / str(rel) for col in IMAGE_COLUMNS for rel in table[col]], "NIGHTS", workers)


class NightsTriplets(Dataset):
    """One NIGHTS split as a map-style dataset.

    Item: ``{"ref", "left", "right"}``: ``transform(PIL RGB image)`` (for the standard
    transform, float tensors ``(3, H, W)``); ``"p"``: float, share of people who judged the
    right image closer (``right_vote``); ``"id"``: the row's ``id``.

    Args:
        root: folder holding ``data.csv``.
        split: one of ``train``, ``val``, ``test``, ``test_imagenet``, ``test_no_imagenet``, ``all``.
        transform: applied to each of the three images.
        min_votes: keep rows with at least this many votes.
        verify_images: read every image header now, so a bad file stops set-up, not a training.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Image.Image], Any],
        min_votes: int = 6,
        verify_images: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.table = load_nights_table(self.root, split, min_votes=min_votes)
        if verify_images:
            check_images_readable(self.root, self.table)
        # Plain lists: cheap to pickle into workers and to index, unlike DataFrame rows.
        self._ref = [str(self.root / str(p)) for p in self.table["ref_path"]]
        self._left = [str(self.root / str(p)) for p in self.table["left_path"]]
        self._right = [str(self.root / str(p)) for p in self.table["right_path"]]
        self._p = self.table["right_vote"].astype(float).tolist()
        self._id = self.table["id"].tolist()

    def __len__(self) -> int:
        return len(self._p)

    def _load(self, path: str):
        try:
            with Image.open(path) as im:
                image = to_rgb(im)
        except Exception as err:
            raise OSError(f"cannot decode NIGHTS image {path}: {err}") from err
        return self.transform(image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "ref": self._load(self._ref[index]),
            "left": self._load(self._left[index]),
            "right": self._load(self._right[index]),
            "p": self._p[index],
            "id": self._id[index],
        }


class NightsDataModule(BackboneDataModule):
    """NIGHTS train/val/test loaders of 2AFC triplets (see the module docstring for the format).

    Args:
        root: NIGHTS folder (``data.csv``, ``ref/``, ``distort/``).
        loader: batch sizes (triplets per batch and per device), loader processes (they do all
            image decoding) and pinning (:class:`perceptlab.datamodules.loader.Loader`).
        min_votes: keep triplets with at least this many votes (DreamSim: 6).
        val_split: split used for validation.
        test_splits: splits of ``trainer.test``, one dataloader each, in this order.
        model_name: open_clip architecture for the transform when no model is attached (an
            attached backbone of another architecture is an error, not silently preferred).
        pretrained: open_clip tag whose mean/std apply when no model is attached.
        image_size: input size when no model is attached (default: the architecture's).
        train_augment: use open_clip's training transform (random resized crop) for ``train``.
        verify_images: read every image header at set-up (a bad file stops set-up, named).
        uint8_images: workers stop at ``uint8`` image tensors and the model's backbone converts
            and normalises them on its device (``CLIPBackbone.prepare_images``): the same numbers,
            a quarter of the bytes between processes and to the GPU, less work per worker.
            ``False``: normalised float tensors, for consumers other than a perceptlab backbone.
    """

    def __init__(
        self,
        root: str,
        loader: Loader = Loader(batch_size=32, num_workers=4),
        min_votes: int = 6,
        val_split: str = "val",
        test_splits: list[str] | None = None,
        model_name: str | None = None,
        pretrained: str | None = None,
        image_size: int | None = None,
        train_augment: bool = False,
        verify_images: bool = True,
        uint8_images: bool = True,
    ) -> None:
        super().__init__(model_name, pretrained, image_size)
        self.save_loader_hyperparameters(loader)
        self.root = Path(root).expanduser()
        self.test_splits = list(test_splits) if test_splits is not None else ["test_imagenet", "test_no_imagenet"]
        for name in [val_split, *self.test_splits]:
            if name not in SPLITS:
                raise ValueError(f"unknown NIGHTS split {name!r}; expected one of {', '.join(SPLITS)}")
        self.val_split = val_split
        self.datasets: dict[str, NightsTriplets] = {}

    @property
    def test_set_names(self) -> list[str]:
        """Names of the test dataloaders, in order: the ``test_splits``."""
        return list(self.test_splits)

    def transforms(self) -> tuple[Callable, Callable]:
        """(train transform, eval transform), from the attached backbone or open_clip's config."""
        pp = self.preprocessing(train_augment=self.hparams.train_augment, uint8=self.hparams.uint8_images)
        return pp.train, pp.eval

    # -------------------------------------------------------------------------------- set-up
    def setup(self, stage: str | None = None) -> None:
        train_tf, eval_tf = self.transforms()
        wanted: dict[str, Callable] = {}
        if stage in (None, "fit"):
            wanted["train"] = train_tf
        if stage in (None, "fit", "validate"):
            wanted[self.val_split] = eval_tf
        if stage in (None, "test"):
            wanted.update({name: eval_tf for name in self.test_splits})
        for name, tf in wanted.items():
            if name not in self.datasets:
                self.datasets[name] = NightsTriplets(
                    self.root, name, tf, min_votes=self.hparams.min_votes, verify_images=self.hparams.verify_images
                )
            else:
                self.datasets[name].transform = tf

    # ----------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> StatefulDataLoader:
        # Stateful: Lightning stores the sampler position in the checkpoint, so a resumed run
        # continues mid-epoch instead of replaying it.
        return self.train_loader(self.datasets["train"])

    def _eval_loader(self, split: str) -> DataLoader:
        return self.eval_loader(self.datasets[split])

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(name) for name in self.test_splits]
