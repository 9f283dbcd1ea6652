"""Cue-conflict images (model-vs-human layout: ROOT/<shape class>/<shape><i>-<texture><j>.png)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    _pos,
    _Progress,
    _rng,
    _save_img,
    _seed,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import ObjectSpec, Scene, render
from perceptlab.core.scores import cue_conflict_labels
from perceptlab.datamodules.toyworld.world import _CLASS, CLASSES, COLOURS

# --- cue conflict / classification -----------------------------------------------------------


def _cue_image(shape_cls: str, tex_cls: str, i: int, j: int, size: int, seed: int) -> np.ndarray:
    # instance i fixes the pose, instance j the texture phase: both derive from the world seed.
    prng = _rng(seed, f"cue_conflict/shape/{shape_cls}/{i}")
    trng = _rng(seed, f"cue_conflict/texture/{tex_cls}/{j}")
    radius = float(prng.uniform(0.33, 0.38))
    cx, cy = _pos(prng, radius, jitter=0.05)
    obj = ObjectSpec(shape=_CLASS[shape_cls]["shape"], texture=_CLASS[tex_cls]["texture"],
                     colour=COLOURS[_CLASS[tex_cls]["colour"]], cx=cx, cy=cy, radius=radius,
                     angle=float(prng.uniform(-15, 15)),
                     phase=(float(trng.uniform(0, 16)), float(trng.uniform(0, 16))))
    return render(Scene(background="light", objects=[obj], seed=_seed(trng)), size)


def _write_cue_conflict(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "cue_conflict")
    out = root / "cue_conflict"
    items: list[tuple[str, str, int, int]] = []
    if cfg.get("instances"):
        k = cfg["instances"]
        for s in CLASSES:
            for t in CLASSES:
                for inst in range(1, k + 1):
                    items.append((s, t, inst, int(rng.integers(1, k + 1))))
    else:
        for ci, s in enumerate(CLASSES):
            others = [c for c in CLASSES if c != s]
            order = rng.permutation(15)[: cfg["per_class"]]
            for n_, o in enumerate(order):
                items.append((s, others[int(o)], n_ + 1, int(rng.integers(1, 4))))
            if cfg.get("same_every") and ci % cfg["same_every"] == 0:
                items.append((s, s, cfg["per_class"] + 1, int(rng.integers(1, 4))))
    advance = progress.task("cue_conflict", len(items))
    names = set()
    for s, t, i, j in items:
        name = f"{s}{i}-{t}{j}.png"
        if (s, name) in names:  # identical (shape, texture, instances): keep one
            advance()
            continue
        names.add((s, name))
        _save_img(out / s / name, _cue_image(s, t, i, j, size, seed))
        advance()
    return {"images": len(names), "same_class": sum(cue_conflict_labels(n)[0] == cue_conflict_labels(n)[1]
                                                     for _, n in names)}


TOY_SET = ToySet("cue_conflict", _write_cue_conflict, scales={"tiny": {"per_class": 6, "same_every": 4, "instances": None},
                                                 "small": {"per_class": None, "same_every": None, "instances": 3}},
                 paths={"cue_conflict": "cue_conflict"})
