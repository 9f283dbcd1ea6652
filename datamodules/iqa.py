"""IQA data sets as pyiqa describes them: meta-info CSVs, presets, MOS directions.

One place for what the IQA probes (:mod:`perceptlab.callbacks.probes.iqa_fr`, ``iqa_nr``) and the
perceptual-task data module (:class:`perceptlab.datamodules.perceptual_tasks.IQASet`) both need to
know about a data set:

* **presets** come from pyiqa's own registry (``pyiqa/default_dataset_configs.yml``, read without
  importing pyiqa, which costs seconds): meta-info file name, MOS direction (``lower_better``),
  MOS range, official split column, and whether the set is full-reference;
* **column positions**: pyiqa reads its general IQA sets by position, not by header
  (no-reference: image 0, score 1; full-reference: reference 0, distorted 1, score 2), because the
  headers differ between releases of its meta-info files (SPAQ: ``img_name,mos,...`` or
  ``Image name,MOS,...``); with a preset, so do we;
* **LIVE-C**: pyiqa's ``LIVEChallengeDataset`` leaves out the CSV's first 7 rows (the original
  data set's training images);
* **names**: ``koniq`` (the alignment suite's metric name) is pyiqa's ``koniq10k``.

Image folders are not in pyiqa's CSVs; the defaults here are the layout the toy world writes
(``images/``; TID2013's ``reference_images/`` and ``distorted_images/``) and are configuration
in every probe and data set.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

#: Our names for pyiqa's registry keys.
ALIASES = {"koniq": "koniq10k"}
#: Rows pyiqa drops from the top of a data set's CSV, by its dataset class.
DROP_FIRST_BY_TYPE = {"LIVEChallengeDataset": 7}
#: Folders (relative to the data set's root) where the toy world and perceptlab's defaults keep images.
FOLDERS = {
    "tid2013": {"ref_dir": "reference_images", "dist_dir": "distorted_images"},
    "kadid10k": {"ref_dir": "images", "dist_dir": "images"},
}


@dataclass(frozen=True)
class IQAPreset:
    """What pyiqa's registry says about one IQA data set (see the module docstring)."""

    name: str  # pyiqa's registry key
    full_reference: bool
    meta_info_file: str  # file name only
    lower_better: bool | None
    mos_range: tuple[float, float] | None
    split_column: str | None  # pyiqa's named split column (KonIQ-10k: official_split)
    drop_first: int
    image_dir: str = "images"  # no-reference sets
    ref_dir: str = "images"  # full-reference sets
    dist_dir: str = "images"

    @property
    def higher_better(self) -> bool | None:
        return None if self.lower_better is None else not self.lower_better

    @property
    def name_position(self) -> int:
        """Column of the (distorted) image name, as pyiqa reads it."""
        return 1 if self.full_reference else 0

    @property
    def score_position(self) -> int:
        """Column of the human score, as pyiqa reads it."""
        return 2 if self.full_reference else 1


@lru_cache(maxsize=1)
def pyiqa_registry() -> dict[str, dict]:
    """pyiqa's dataset registry (``default_dataset_configs.yml``), read without importing pyiqa."""
    import yaml

    spec = importlib.util.find_spec("pyiqa")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pyiqa is not installed; it is needed for IQA presets")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_dataset_configs.yml"
    return yaml.safe_load(path.read_text())


def is_preset(name: str | None) -> bool:
    return bool(name) and ALIASES.get(name, name) in pyiqa_registry()


def iqa_preset(name: str) -> IQAPreset:
    """The preset of ``name`` (a pyiqa registry key, or an alias such as ``koniq``).

    Raises ``ValueError`` naming the known presets.
    """
    key = ALIASES.get(name, name)
    registry = pyiqa_registry()
    if key not in registry:
        raise ValueError(f"unknown pyiqa preset {name!r}; known: {', '.join([*ALIASES, *registry])}")
    entry = registry[key]
    kind = str(entry.get("type", ""))
    split = entry.get("split_index")
    return IQAPreset(
        name=key,
        full_reference=kind.endswith("FRDataset"),
        meta_info_file=Path(entry["meta_info_file"]).name if entry.get("meta_info_file") else "",
        lower_better=bool(entry["lower_better"]) if "lower_better" in entry else None,
        mos_range=tuple(float(v) for v in entry["mos_range"]) if "mos_range" in entry else None,
        split_column=split if isinstance(split, str) else None,
        drop_first=DROP_FIRST_BY_TYPE.get(kind, 0),
        **FOLDERS.get(key, {}),
    )


def pyiqa_column(table, position: int, source: str | os.PathLike) -> str:
    """Name of column ``position`` of a pyiqa meta-info CSV (``table``: a DataFrame), read from
    ``source`` (named in the error when the CSV has too few columns)."""
    if table.shape[1] <= position:
        raise KeyError(f"{source}: a pyiqa meta-info CSV needs at least {position + 1} columns; has "
                       f"{', '.join(map(str, table.columns))}")
    return table.columns[position]


PHASES = ("train", "val", "test")
_SHOWN = 5


def split_labels(table, csv: str | os.PathLike, split_column: str | None = "auto", preset_split: str | None = None,
                 split_file: str | None = None, split_index: Any = None,
                 split_ratio: Sequence[float] = (0.7, 0.1, 0.2), split_seed: int = 0):
    """The phase (``train``/``val``/``test``) of every row of an IQA table: the one split rule of
    the project, used by the task data (``perceptual_tasks.read_iqa_set``) and the IQA probes.

    ``split_file`` (a pyiqa split pickle ``{index: {"train": [rows], ...}}``) wins; else
    ``split_column``: ``auto`` takes the preset's split column, else ``official_split`` or ``split``
    when present; a name takes that column; ``None`` (or ``auto`` without such a column) a seeded
    ratio split (``split_ratio``, ``split_seed``). Raises ``ValueError`` naming the CSV.
    """
    import pickle

    import numpy as np

    c = {"split_file": split_file, "split_index": split_index, "split_column": split_column,
         "preset_split": preset_split, "split_ratio": split_ratio, "split_seed": split_seed}
    n = len(table)
    if c["split_file"]:
        with open(Path(c["split_file"]).expanduser(), "rb") as f:
            splits = pickle.load(f)[c["split_index"]]
        labels = np.full(n, "", dtype=object)
        for phase in PHASES:
            labels[list(splits.get(phase, []))] = phase
        return labels
    column = c["split_column"]
    if column == "auto":
        candidates = [c["preset_split"], "official_split", "split"]
        column = next((col for col in candidates if col and col in table.columns), None)
    if column is not None:
        if column not in table.columns:
            raise ValueError(f"{csv}: no split column {column!r}; columns: {', '.join(map(str, table.columns))}")
        labels = table[column].astype(str).str.strip().to_numpy()
        bad = sorted(set(labels) - set(PHASES))
        if bad:
            raise ValueError(f"{csv}: split column {column!r} holds {bad[:_SHOWN]}, expected train/val/test")
        return labels
    ratio = np.asarray(c["split_ratio"], float)
    if ratio.shape != (3,) or (ratio < 0).any() or ratio.sum() <= 0:
        raise ValueError(f"split_ratio must be three non-negative fractions, got {c['split_ratio']}")
    ratio = ratio / ratio.sum()
    n_train, n_val = int(round(ratio[0] * n)), int(round(ratio[1] * n))
    perm = np.random.default_rng(c["split_seed"]).permutation(n)
    labels = np.full(n, "test", dtype=object)
    labels[perm[:n_train]] = "train"
    labels[perm[n_train:n_train + n_val]] = "val"
    return labels
