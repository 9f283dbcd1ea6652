"""A LaMem-style memorability set (images/, splits/{train,val,test}_<k>.txt)."""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    _canonical,
    _clutter,
    _Progress,
    _rng,
    _save_img,
    _seed,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import Scene, render, render_background
from perceptlab.datamodules.toyworld.rules import memorability
from perceptlab.datamodules.toyworld.world import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    MEMORABILITY,
)

# --- LaMem -----------------------------------------------------------------------------------


def _bg_mean_lum(name: str, size: int) -> float:
    img = render_background(name, size, np.random.default_rng(0))
    return float((img @ np.array([0.299, 0.587, 0.114], np.float32)).mean())


def _write_lamem(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "lamem")
    out = root / "lamem"
    n = cfg["images"]
    advance = progress.task("lamem", n)
    bg_lum = {b: _bg_mean_lum(b, size) for b in BACKGROUNDS}
    names, scores = [], []
    for i in range(n):
        cls = CLASSES[int(rng.integers(16))]
        colour = list(COLOURS)[int(rng.integers(16))]
        radius = float(rng.uniform(0.12, 0.38))
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        n_clutter = int(rng.integers(0, 5))
        sigma = float(rng.uniform(0, 0.08)) if rng.random() < 0.5 else 0.0
        objs = _clutter(rng, n_clutter) + [_canonical(cls, rng, radius, colour=colour)]
        img = render(Scene(background=bg, objects=objs, seed=_seed(rng), noise=sigma), size)
        rgb = np.array(COLOURS[colour], np.float64) / 255
        contrast = abs(float(rgb @ np.array([0.299, 0.587, 0.114])) - bg_lum[bg])
        sat = colorsys.rgb_to_hsv(*rgb)[1]
        m = memorability(radius, contrast, sat, n_clutter, sigma)
        score = float(np.clip(m + rng.normal(0, MEMORABILITY["score_noise"]), 0, 1))
        name = f"{i + 1:08d}.jpg"
        _save_img(out / "images" / name, img)
        names.append(name)
        scores.append(score)
        advance()
    n_train, n_val = round(0.7 * n), round(0.1 * n)
    for k in range(1, 6):
        perm = rng.permutation(n)
        parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
        for split, idx in parts.items():
            p = out / "splits" / f"{split}_{k}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(f"{names[j]} {scores[j]:.4f}\n" for j in sorted(idx)))
    return {"images": n, "splits": 5, "train": n_train, "val": n_val, "test": n - n_train - n_val}


TOY_SET = ToySet("lamem", _write_lamem, scales={"tiny": {"images": 200},
                                                 "small": {"images": 2000}},
                 paths={"lamem": "lamem"})
