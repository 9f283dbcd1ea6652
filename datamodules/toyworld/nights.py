"""NIGHTS-style triplets (DreamSim's layout: data.csv, ref/, distort/)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    _canonical,
    _fmt,
    _Progress,
    _rng,
    _save_img,
    _seed,
    _write_csv,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import ObjectSpec, Scene, render
from perceptlab.datamodules.toyworld.rules import _a, perceived_distance, share_right
from perceptlab.datamodules.toyworld.world import (
    _CLASS,
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    NIGHTS_CUES,
    NIGHTS_IMAGENET,
    NIGHTS_MAX_NOISE,
    NIGHTS_MAX_SHIFT,
)

# --- NIGHTS --------------------------------------------------------------------------------


def _nights_amounts(rng: np.random.Generator, single: bool, cue: str | None) -> dict[str, float]:
    if single:
        return {k: (float(rng.uniform(0.35, 1.0)) if k == cue else 0.0) for k in NIGHTS_CUES}
    active = rng.random(len(NIGHTS_CUES)) < 0.5
    if not active.any():
        active[int(rng.integers(len(NIGHTS_CUES)))] = True
    return {k: (float(rng.uniform(0.1, 1.0)) if a else 0.0) for k, a in zip(NIGHTS_CUES, active)}


def _nights_distort(ref: Scene, cls: str, amounts: dict[str, float], rng: np.random.Generator) -> Scene:
    row = _CLASS[cls]
    obj = ref.objects[0]
    others = [c for c in CLASSES if c != cls]
    shape_to = _CLASS[others[int(rng.integers(15))]]["shape"]
    texture_to = _CLASS[others[int(rng.integers(15))]]["texture"]
    colour_to = COLOURS[[c for c in list(COLOURS) if c != row["colour"]][int(rng.integers(15))]]
    ang = float(rng.uniform(0, 2 * math.pi))
    noise_seed = _seed(rng)
    a = amounts
    col = tuple(float(c0 + a["colour"] * (c1 - c0)) for c0, c1 in zip(obj.colour, colour_to))
    shift = a["position"] * NIGHTS_MAX_SHIFT
    lim = (obj.radius * 0.6, 1 - obj.radius * 0.6)
    cx = float(np.clip(obj.cx + shift * math.cos(ang), *lim))
    cy = float(np.clip(obj.cy + shift * math.sin(ang), *lim))
    new = ObjectSpec(shape=obj.shape, texture=obj.texture, colour=col, cx=cx, cy=cy, radius=obj.radius,
                     angle=obj.angle, shape_to=shape_to, shape_mix=a["shape"], texture_to=texture_to,
                     texture_mix=a["texture"], phase=obj.phase)
    return Scene(background=ref.background, objects=[new], seed=ref.seed,
                 noise=a["noise"] * NIGHTS_MAX_NOISE, noise_seed=noise_seed)


def _write_nights(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "nights")
    out = root / "nights"
    n = cfg["train"] + cfg["val"] + cfg["test"]
    splits = np.array(["train"] * cfg["train"] + ["val"] * cfg["val"] + ["test"] * cfg["test"])
    splits = splits[rng.permutation(n)]
    advance = progress.task("nights", n)
    rows, ann = [], []
    for i in range(n):
        cls = CLASSES[int(rng.integers(16))]
        radius = float(rng.uniform(0.24, 0.34))
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        ref = Scene(background=bg, objects=[_canonical(cls, rng, radius)], seed=_seed(rng))
        single = bool(rng.random() < 0.5)
        cues = rng.choice(len(NIGHTS_CUES), size=2, replace=False)
        am = [_nights_amounts(rng, single, NIGHTS_CUES[int(c)]) for c in cues]
        scenes = [_nights_distort(ref, cls, a, rng) for a in am]
        d_l, d_r = perceived_distance(am[0]), perceived_distance(am[1])
        p = share_right(d_l, d_r)
        votes = int(rng.integers(3, 6)) if rng.random() < 0.06 else int(rng.integers(6, 11))
        k = int(rng.binomial(votes, p))
        g, j = f"{i // 100:03d}", f"{i % 100:03d}"
        ref_path, l_path, r_path = f"ref/{g}/{j}.png", f"distort/{g}/{j}_0.png", f"distort/{g}/{j}_1.png"
        _save_img(out / ref_path, render(ref, size))
        _save_img(out / l_path, render(scenes[0], size))
        _save_img(out / r_path, render(scenes[1], size))
        rows.append([i, _fmt((votes - k) / votes), _fmt(k / votes), votes, ref_path, l_path, r_path,
                     str(splits[i]), str(cls in NIGHTS_IMAGENET), f"a photo of {_a(cls)}"])
        ann.append([i, cls, "single" if single else "mixed"]
                   + [_fmt(am[0][c], 4) for c in NIGHTS_CUES] + [_fmt(am[1][c], 4) for c in NIGHTS_CUES]
                   + [_fmt(d_l, 4), _fmt(d_r, 4), _fmt(p, 6)])
        advance()
    _write_csv(out / "data.csv", ["id", "left_vote", "right_vote", "votes", "ref_path", "left_path",
                                  "right_path", "split", "is_imagenet", "prompt"], rows)
    _write_csv(out / "toy_annotations.csv",
               ["id", "class", "mode"] + [f"left_{c}" for c in NIGHTS_CUES] + [f"right_{c}" for c in NIGHTS_CUES]
               + ["d_left", "d_right", "p_right"], ann)
    test = [r for r in rows if r[7] == "test"]
    return {
        "train": cfg["train"], "val": cfg["val"], "test": cfg["test"],
        "test_imagenet": sum(r[8] == "True" for r in test),
        "test_no_imagenet": sum(r[8] == "False" for r in test),
        "votes_below_6": sum(r[3] < 6 for r in rows), "images": 3 * n,
    }


TOY_SET = ToySet("nights", _write_nights, scales={"tiny": {"train": 120, "val": 40, "test": 40},
                                                 "small": {"train": 1500, "val": 300, "test": 300}},
                 paths={"nights": "nights"})
