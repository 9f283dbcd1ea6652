"""What the writers share: seeded generators, deterministic image and CSV files, progress."""
from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from perceptlab.datamodules.toyworld.render import ObjectSpec
from perceptlab.datamodules.toyworld.world import (
    _CLASS,
    CLASSES,
    COLOURS,
    JPEG_QUALITY,
    SIZES,
)

# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpg_bytes(img: np.ndarray, quality_: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality_)
    return buf.getvalue()


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _save_img(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        path.write_bytes(_jpg_bytes(img))
    elif suffix == ".png":
        path.write_bytes(_png_bytes(img))
    elif suffix == ".bmp":
        Image.fromarray(img).save(path, format="BMP")
    else:
        raise ValueError(f"unsupported image type {path}")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)


def _fmt(x: float, nd: int = 6) -> str:
    return f"{float(x):.{nd}f}"


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _pos(rng: np.random.Generator, radius: float, jitter: float | None = None) -> tuple[float, float]:
    if jitter is None:
        lo, hi = radius + 0.02, 1 - radius - 0.02
        if lo >= hi:
            return 0.5, 0.5
        return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    return float(0.5 + rng.uniform(-jitter, jitter)), float(0.5 + rng.uniform(-jitter, jitter))


def _size(rng: np.random.Generator, name: str | None = None) -> tuple[str, float]:
    name = name or str(rng.choice(list(SIZES)))
    lo, hi = SIZES[name]
    return name, float(rng.uniform(lo, hi))


def _canonical(cls: str, rng: np.random.Generator, radius: float, colour: str | None = None,
               centre: tuple[float, float] | None = None) -> ObjectSpec:
    row = _CLASS[cls]
    cx, cy = centre if centre is not None else _pos(rng, radius)
    return ObjectSpec(shape=row["shape"], texture=row["texture"], colour=COLOURS[colour or row["colour"]],
                      cx=cx, cy=cy, radius=radius, angle=float(rng.uniform(-15, 15)),
                      phase=(float(rng.uniform(0, 16)), float(rng.uniform(0, 16))))


def _clutter(rng: np.random.Generator, n: int) -> list[ObjectSpec]:
    out = []
    for _ in range(n):
        cls = CLASSES[int(rng.integers(16))]
        r = float(rng.uniform(0.06, 0.1))
        out.append(_canonical(cls, rng, r, colour=list(COLOURS)[int(rng.integers(16))]))
    return out


class _Progress:
    """Thin wrapper over ``rich.progress`` (one task per dataset) or a no-op."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._p = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn())

    def __enter__(self):
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def task(self, name: str, total: int) -> Callable[[int], None]:
        if self._p is None:
            return lambda n=1: None
        tid = self._p.add_task(name, total=total)
        return lambda n=1: self._p.advance(tid, n)


def _lum(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float32) / 255) @ np.array([0.299, 0.587, 0.114], np.float32)


def _colourfulness(img: np.ndarray) -> float:
    f = img.astype(np.float32)
    rg = f[..., 0] - f[..., 1]
    yb = 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


@dataclass(frozen=True)
class ToySet:
    """One data set of the toy world, declared beside its writer (``TOY_SET`` of each writer module)
    and registered once, in ``synthesize.TOY_SETS``.

    ``write(root, seed, counts, image_size, progress)`` writes it under ``root`` and returns what it
    wrote (``world.json``'s ``counts``); ``scales`` holds its ``counts`` at each scale (``tiny``,
    ``small``); ``paths`` names the folders and files it writes (``world.json``'s ``paths``).
    """

    name: str
    write: Callable[[Path, int, dict, int, "_Progress"], dict]
    scales: dict[str, dict] = field(default_factory=lambda: {"tiny": {}, "small": {}})
    paths: dict[str, str] = field(default_factory=dict)
