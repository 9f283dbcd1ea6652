"""IQA data sets as pyiqa describes them: meta-info CSVs, presets, MOS directions.

The one owner of IQA tables: what the IQA probes (:mod:`perceptlab.callbacks.probes.iqa_fr`,
``iqa_nr``) and the perceptual-task data (:class:`IQASet`, :func:`read_iqa_set`) both need to know
about a data set, and the one split rule (:func:`split_labels`):

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
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from perceptlab.datamodules.base import name_some

log = logging.getLogger(__name__)

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
    the project, used by the task data (:func:`read_iqa_set`) and the IQA probes.

    ``split_file`` (a pyiqa split pickle ``{index: {"train": [rows], ...}}``) wins; else
    ``split_column``: ``auto`` takes the preset's split column, else ``official_split`` or ``split``
    when present; a name takes that column; ``None`` (or ``auto`` without such a column) a seeded
    ratio split (``split_ratio``, ``split_seed``). Raises ``ValueError`` naming the CSV.
    """
    from perceptlab.core.safe_load import load_plain_pickle

    c = {"split_file": split_file, "split_index": split_index, "split_column": split_column,
         "preset_split": preset_split, "split_ratio": split_ratio, "split_seed": split_seed}
    n = len(table)
    if c["split_file"]:
        split_path = Path(c["split_file"]).expanduser()
        content = load_plain_pickle(split_path)
        if not isinstance(content, dict) or c["split_index"] not in content:
            have = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
            raise ValueError(f"{split_path}: no split {c['split_index']!r} (split_index); it holds {have}")
        splits = content[c["split_index"]]
        if not isinstance(splits, dict):
            raise ValueError(f"{split_path}: split {c['split_index']!r} is not a {{phase: [rows]}} mapping")
        for phase, rows in splits.items():
            bad = [r for r in rows if not isinstance(r, (int, np.integer)) or not -n <= int(r) < n]
            if bad:
                raise ValueError(f"{split_path}: split {c['split_index']!r} {phase} has {len(bad)} row(s) that are not "
                                 f"rows of {csv} ({n} rows), e.g. {bad[0]!r}")
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


# --------------------------------------------------------------- reading a set for task training
@dataclass
class IQASet:
    """One IQA data set given by a pyiqa meta-info CSV.

    Args:
        name: the set's name in logs (``test/<name>/srcc``).
        root: folder that relative ``meta_info_file``, ``image_dir`` and ``ref_dir`` are resolved against.
        meta_info_file: the CSV (default: the preset's file name, in ``root``).
        image_dir: folder of the images named in ``name_column`` (relative to ``root``; default:
            the preset's folder, else ``images``); the distorted images of a full-reference set.
        full_reference: the set pairs each image with a reference (default: the preset's kind, else no).
        ref_column: reference image column of a full-reference set, by name (default: with a preset,
            pyiqa's position -- the first column; else ``ref_name``).
        ref_dir: folder of the reference images (default: the preset's, else ``image_dir``).
        preset: a pyiqa dataset name (``koniq10k``, ``livec``, ``spaq``, ``kadid10k``,
            ``tid2013``, ...) whose registry entry supplies ``mos_range``, ``lower_better``, the
            meta-info file name, the split column and LIVE-C's ``drop_first=7``; explicit
            fields win.
        name_column: image file column, by name (default: with a preset, pyiqa's position -- the
            first column, the second (distorted image) for full-reference sets; else ``img_name``,
            ``dist_name`` for full-reference sets).
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
    image_dir: str | None = None
    preset: str | None = None
    full_reference: bool | None = None
    ref_column: str | None = None
    ref_dir: str | None = None
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
    if out["full_reference"] is None:
        out["full_reference"] = bool(preset is not None and preset.full_reference)
    elif preset is not None and out["full_reference"] != preset.full_reference:
        kind = "full-reference" if preset.full_reference else "no-reference"
        raise ValueError(f"IQA set {cfg.name!r}: {preset.name} is a {kind} set")
    fr = out["full_reference"]
    out["ref_position"] = 0 if fr and preset is not None and out["ref_column"] is None else None
    out["name_column"] = out["name_column"] or ("dist_name" if fr else "img_name")
    out["mos_column"] = out["mos_column"] or "mos"
    out["ref_column"] = out["ref_column"] or ("ref_name" if fr else None)
    if out["image_dir"] is None:
        out["image_dir"] = (preset.dist_dir if fr else preset.image_dir) if preset is not None else "images"
    if out["ref_dir"] is None:
        out["ref_dir"] = preset.ref_dir if preset is not None and fr else out["image_dir"]
    return out


def check_iqa_set(cfg: IQASet) -> None:
    """Raise ``ValueError`` naming what ``cfg`` lacks (the MOS direction, the CSV) before any file is read."""
    _resolved(cfg)


def read_iqa_set(cfg: IQASet, phase: str) -> pd.DataFrame:
    """Rows of one phase (``train``/``val``/``test``) of an IQA set: ``file, path, mos, score``,
    and for a full-reference set ``ref_file, ref_path``.

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
    for key in ("name", "mos", "ref"):
        if c[f"{key}_position"] is not None:
            c[f"{key}_column"] = pyiqa_column(table, c[f"{key}_position"], csv)
    roles = (("image name", "name"), ("MOS", "mos")) + ((("reference", "ref"),) if c["full_reference"] else ())
    for role, key in roles:
        col = c[f"{key}_column"]
        if col not in table.columns:
            raise ValueError(
                f"{csv}: no {role} column {col!r} (set {key}_column of IQA set {cfg.name!r}); "
                f"columns: {', '.join(map(str, table.columns))}"
            )
    first = int(c["drop_first"])  # CSV line of row i: i + 2 + first (the header is line 1)
    table = table.iloc[first:].reset_index(drop=True)
    if not pd.api.types.is_numeric_dtype(table[c["mos_column"]]):
        text = table[pd.to_numeric(table[c["mos_column"]], errors="coerce").isna()][c["mos_column"]]
        raise ValueError(f"{csv}: MOS column {c['mos_column']!r} is not numeric: "
                         f"{name_some(f'line {i + 2 + first}: {v!r}' for i, v in text.items())}")
    empty = table[c["mos_column"]].isna()
    if empty.any():
        raise ValueError(f"{csv}: {int(empty.sum())} row(s) without a MOS ({c['mos_column']!r} empty or NaN): "
                         f"{name_some(f'line {i + 2 + first}' for i in table.index[empty])}")

    split = split_labels(table, csv, c["split_column"], c["preset_split"], c["split_file"], c["split_index"],
                         c["split_ratio"], c["split_seed"])
    mos = table[c["mos_column"]].astype(float).to_numpy()
    fit_rows = split == "train" if (split == "train").any() else np.ones(len(table), bool)
    score = _normalize(mos, c, fit_rows)
    keep = np.ones(len(table), bool) if c["subset"] == "all" else split == phase
    duplicated = table.duplicated().to_numpy()  # after the split: a split file's row numbers stay valid
    if duplicated.any():
        log.warning("%s: %d duplicate rows left out (each image and score is counted once)", csv, int(duplicated.sum()))
        keep &= ~duplicated
    if not keep.any():
        raise ValueError(f"IQA set {cfg.name!r}: no rows for phase {phase!r} in {csv}")
    image_dir = Path(c["image_dir"]).expanduser()
    image_dir = image_dir if image_dir.is_absolute() else root / image_dir
    files = table[c["name_column"]].astype(str).to_numpy()[keep]
    rows = pd.DataFrame({
        "file": files,
        "path": [str(image_dir / f) for f in files],
        "mos": mos[keep],
        "score": score[keep],
    })
    if c["full_reference"]:
        ref_dir = Path(c["ref_dir"]).expanduser()
        ref_dir = ref_dir if ref_dir.is_absolute() else root / ref_dir
        rows["ref_file"] = table[c["ref_column"]].astype(str).to_numpy()[keep]
        rows["ref_path"] = [str(ref_dir / f) for f in rows["ref_file"]]
    return rows


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
