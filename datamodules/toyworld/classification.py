"""A classification folder (ROOT/<class>/*.png) for the noise-robustness probe."""
from __future__ import annotations

from pathlib import Path

from perceptlab.datamodules.toyworld.common import (
    _canonical,
    _Progress,
    _rng,
    _save_img,
    _seed,
    _size,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import Scene, render
from perceptlab.datamodules.toyworld.world import BACKGROUNDS, CLASSES


def _write_classification(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "classification")
    out = root / "classification"
    per = cfg["per_class"]
    advance = progress.task("classification", per * 16)
    for cls in CLASSES:
        for i in range(per):
            _, radius = _size(rng)
            scene = Scene(background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
                          objects=[_canonical(cls, rng, radius)], seed=_seed(rng))
            _save_img(out / cls / f"{cls}_{i:04d}.png", render(scene, size))
            advance()
    return {"per_class": per, "images": per * 16}


TOY_SET = ToySet("classification", _write_classification, scales={"tiny": {"per_class": 8},
                                                 "small": {"per_class": 50}},
                 paths={"classification": "classification"})
