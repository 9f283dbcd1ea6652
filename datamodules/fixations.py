"""Human fixation sets in their published layouts, read into one table: image, fixation density
map, fixation points (pixel column ``x`` and row ``y`` in the image's own frame, 0-based).

* ``mit1003`` (Judd et al. 2009): ``ALLSTIMULI/<name>.jpeg``; ``ALLFIXATIONMAPS/<name>_fixMap.jpg``
  (the blurred density) and ``<name>_fixPts.jpg`` (the fixated pixels, white on black; a JPEG, so
  a pixel counts as fixated above half intensity).
* ``cat2000`` (Borji & Itti 2015): ``trainSet/Stimuli/<Category>/<name>.jpg``,
  ``trainSet/FIXATIONMAPS/<Category>/<name>.jpg`` and ``trainSet/FIXATIONLOCS/<Category>/<name>.mat``
  (a binary matrix ``fixLocs``).
* ``salicon`` (Jiang et al. 2015, its 2015 JSON release): ``images/<split>/<file_name>``,
  ``maps/<split>/<stem>.png`` and ``fixations/fixations_<split>2014.json`` (COCO-style: ``images``
  with ``id``/``file_name``, ``annotations`` with ``image_id`` and ``fixations`` as 1-based
  ``[row, column]`` pairs, one annotation per observer).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceptlab.core.images import IMAGE_SUFFIXES

LAYOUTS = ("mit1003", "cat2000", "salicon")


@dataclass
class FixationImage:
    """One image of a fixation set: its file, its density map's file, its fixated pixels."""

    image: Path
    density: Path
    xs: np.ndarray  # int64 columns
    ys: np.ndarray  # int64 rows


def read_fixation_set(root: str | os.PathLike, layout: str = "mit1003", split: str = "val") -> list[FixationImage]:
    """Every image of the set at ``root`` with fixations, in file-name order. ``split``: SALICON's
    (``train``/``val``), CAT2000's folder (``trainSet``); MIT1003 has one set. Errors name the
    missing folder or file."""
    root = Path(root).expanduser()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown fixation layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"fixation set {root}: no such folder")
    rows = {"mit1003": _mit1003, "cat2000": _cat2000, "salicon": _salicon}[layout](root, split)
    rows = [r for r in rows if len(r.xs)]
    if not rows:
        raise ValueError(f"fixation set {root} ({layout}): no image with fixations")
    return rows


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"fixation set: {path} is missing")
    return path


def _points_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    return xs.astype(np.int64), ys.astype(np.int64)


def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _mit1003(root: Path, split: str) -> list[FixationImage]:
    stimuli, maps = _need(root / "ALLSTIMULI"), _need(root / "ALLFIXATIONMAPS")
    rows = []
    for image in sorted(p for p in stimuli.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        points = _need(maps / f"{image.stem}_fixPts.jpg")
        xs, ys = _points_from_mask(_gray(points) > 127)
        rows.append(FixationImage(image, _need(maps / f"{image.stem}_fixMap.jpg"), xs, ys))
    return rows


def _cat2000(root: Path, split: str) -> list[FixationImage]:
    from scipy.io import loadmat

    base = _need(root / (split if split.endswith("Set") else "trainSet"))
    rows = []
    for image in sorted(p for p in (_need(base / "Stimuli")).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = image.relative_to(base / "Stimuli")
        locs = loadmat(_need(base / "FIXATIONLOCS" / rel.with_suffix(".mat")))["fixLocs"]
        xs, ys = _points_from_mask(np.asarray(locs) > 0)
        rows.append(FixationImage(image, _need(base / "FIXATIONMAPS" / rel), xs, ys))
    return rows


def _salicon(root: Path, split: str) -> list[FixationImage]:
    table = json.loads(_need(root / "fixations" / f"fixations_{split}2014.json").read_text())
    points: dict[int, list] = {}
    for ann in table.get("annotations", []):
        points.setdefault(int(ann["image_id"]), []).extend(ann.get("fixations") or [])
    rows = []
    for info in sorted(table.get("images", []), key=lambda i: i["file_name"]):
        fix = np.asarray(points.get(int(info["id"]), []), dtype=np.int64).reshape(-1, 2) - 1  # 1-based [row, col]
        fix = np.unique(fix, axis=0)  # a pixel fixated by several observers is one fixated pixel
        image = _need(root / "images" / split / info["file_name"])
        rows.append(FixationImage(image, _need(root / "maps" / split / f"{Path(info['file_name']).stem}.png"),
                                  fix[:, 1].copy(), fix[:, 0].copy()))
    return rows
