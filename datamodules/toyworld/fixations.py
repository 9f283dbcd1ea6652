"""A human-fixation set in MIT1003's layout (``ALLSTIMULI/``, ``ALLFIXATIONMAPS/<name>_fixMap.jpg``
and ``<name>_fixPts.jpg``) whose fixations fall on the rendered object.

Each stimulus is a landscape image (4:3, as most of MIT1003) of one object away from the centre
(0.12-0.22 of the width from it, in a random direction) on a background, with small clutter.
``observers`` simulated observers fixate ``fixations`` times each: a fixation is drawn around the
object's centre (normal, a standard deviation of half its radius), then rounded to a pixel; the
fixation points image marks each fixated pixel white. The density map is the fixation points
blurred with a Gaussian of 4 % of the image width, scaled to 255, as MIT1003's maps are made.
The known answer: a saliency map on the object beats the centre-bias map; a map that ignores the
image does not.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    ToySet,
    _canonical,
    _clutter,
    _Progress,
    _rng,
    _save_img,
    _seed,
)
from perceptlab.datamodules.toyworld.render import Scene, render
from perceptlab.datamodules.toyworld.world import BACKGROUNDS, CLASSES


def _stimulus(seed: int, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image ``(H, W, 3)``, fixation points ``(n, 2)`` as (x, y) pixels) of stimulus ``i``."""
    rng = _rng(seed, f"fixations/{i}")
    width, height = size * 4 // 3, size
    radius = float(rng.uniform(0.09, 0.13))  # of the width
    angle, dist = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.12, 0.22))
    cx, cy = 0.5 + dist * math.cos(angle), 0.5 + dist * math.sin(angle) * (height / width)
    cls = CLASSES[int(rng.integers(len(CLASSES)))]
    objects = [*_clutter(rng, 2), _canonical(cls, rng, radius, centre=(cx, cy))]
    scene = Scene(background=str(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]), objects=objects, seed=_seed(rng))
    square = render(scene, width)  # the square of side `width`; its middle band is the landscape image
    top = (width - height) // 2
    image = square[top:top + height]
    points = rng.normal([cx * width, cy * width - top], 0.5 * radius * width, size=(_OBSERVERS * _FIXATIONS, 2))
    points = np.clip(np.floor(points), 0, [width - 1, height - 1]).astype(np.int64)
    return image, points


_OBSERVERS, _FIXATIONS = 5, 3


def _maps(points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    fixated = np.zeros((height, width), np.float64)
    fixated[points[:, 1], points[:, 0]] = 1.0
    density = gaussian_filter(fixated, 0.04 * width)
    density = (255 * density / density.max() + 0.5).astype(np.uint8)
    return density, (fixated * 255).astype(np.uint8)


def _write_fixations(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    out = root / "fixations" / "mit1003"
    advance = progress.task("fixations", cfg["images"])
    fixations = 0
    for i in range(cfg["images"]):
        image, points = _stimulus(seed, i, size)
        density, fixated = _maps(points, image.shape[1], image.shape[0])
        name = f"toy{i:04d}"
        _save_img(out / "ALLSTIMULI" / f"{name}.jpeg", image)
        grey = lambda a: np.repeat(a[..., None], 3, axis=2)  # noqa: E731 - JPEG maps are saved as RGB
        _save_img(out / "ALLFIXATIONMAPS" / f"{name}_fixMap.jpg", grey(density))
        _save_img(out / "ALLFIXATIONMAPS" / f"{name}_fixPts.jpg", grey(fixated))
        fixations += int((fixated > 0).sum())
        advance()
    return {"images": cfg["images"], "fixated_pixels": fixations}


TOY_SET = ToySet("fixations", _write_fixations, scales={"tiny": {"images": 24}, "small": {"images": 120}},
                 paths={"fixations": "fixations/mit1003"})
