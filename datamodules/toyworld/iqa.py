"""IQA sets in pyiqa's layout: KonIQ-10k, LIVE-C, SPAQ (no-reference), TID2013, KADID-10k (full-reference)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    _canonical,
    _clutter,
    _colourfulness,
    _fmt,
    _lum,
    _Progress,
    _rng,
    _save_img,
    _seed,
    _size,
    _write_csv,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import Scene, render
from perceptlab.datamodules.toyworld.rules import distort, quality
from perceptlab.datamodules.toyworld.world import (
    BACKGROUNDS,
    CLASSES,
    DISTORTIONS,
    IQA_RANGES,
    N_RATERS,
    RATER_STD,
)

# --- IQA -------------------------------------------------------------------------------------


def _iqa_scene(rng: np.random.Generator) -> Scene:
    cls = CLASSES[int(rng.integers(16))]
    _, radius = _size(rng, str(rng.choice(["medium", "large"])))
    objs = [_canonical(cls, rng, radius)] + _clutter(rng, int(rng.integers(0, 3)))
    objs = objs[1:] + objs[:1]  # main object on top
    return Scene(background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], objects=objs, seed=_seed(rng))


def _ratings(rng: np.random.Generator, q: float, rng_range: tuple[float, float]) -> tuple[float, float]:
    r = np.clip(q + rng.normal(0, RATER_STD, N_RATERS), 1, 5)
    lo, hi = rng_range
    scale = (hi - lo) / 4.0
    return lo + (float(r.mean()) - 1) * scale, float(r.std(ddof=1)) * scale


def _write_iqa(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    out = root / "iqa"
    counts = {}
    kinds = [d[0] for d in DISTORTIONS]

    def nr_items(name: str, n: int, advance) -> tuple[list, np.random.Generator]:
        rng = _rng(seed, f"iqa/{name}")
        items = []
        for _ in range(n):
            img = render(_iqa_scene(rng), size)
            t = int(rng.integers(len(kinds)))
            level = 0 if rng.random() < 1 / 6 else int(rng.integers(1, 6))
            img = distort(img, kinds[t], level, rng)
            items.append((img, kinds[t], level, quality(kinds[t], level)))
            advance()
        return items, rng

    # KonIQ
    n = cfg["koniq"]
    adv = progress.task("iqa/koniq", n)
    items, rng = nr_items("koniq", n, adv)
    split = np.array(["train"] * round(0.7 * n) + ["val"] * round(0.1 * n))
    split = np.concatenate([split, np.array(["test"] * (n - len(split)))])[rng.permutation(n)]
    rows = []
    for i, (img, kind, level, q) in enumerate(items):
        name = f"{i + 1:08d}.jpg"
        _save_img(out / "koniq" / "images" / name, img)
        mos, std = _ratings(rng, q, IQA_RANGES["koniq"])
        rows.append([name, _fmt(mos, 4), _fmt(std, 4), str(split[i])])
    _write_csv(out / "koniq" / "meta_info_KonIQ10kDataset.csv", ["img_name", "mos", "std", "split"], rows)
    counts["koniq"] = n

    # LIVE Challenge
    n = cfg["livec"]
    adv = progress.task("iqa/livec", n)
    items, rng = nr_items("livec", n, adv)
    rows = []
    for i, (img, kind, level, q) in enumerate(items):
        name = f"{i + 1}.bmp"
        _save_img(out / "livec" / "images" / name, img)
        mos, std = _ratings(rng, q, IQA_RANGES["livec"])
        rows.append([name, _fmt(mos, 4), _fmt(std, 4)])
    _write_csv(out / "livec" / "meta_info_LIVEChallengeDataset.csv", ["img_name", "mos", "std"], rows)
    counts["livec"] = n

    # SPAQ
    n = cfg["spaq"]
    adv = progress.task("iqa/spaq", n)
    items, rng = nr_items("spaq", n, adv)
    rows = []
    for i, (img, kind, level, q) in enumerate(items):
        name = f"{i + 1:05d}.jpg"
        _save_img(out / "spaq" / "images" / name, img)
        mos, _ = _ratings(rng, q, IQA_RANGES["spaq"])
        lum = _lum(img)
        noisiness = (q - 1) * 25 if kind == "gaussian_noise" else 100.0
        sharpness = (q - 1) * 25 if kind in ("gaussian_blur", "pixelate", "jpeg") else 100.0
        rows.append([name, _fmt(mos, 2), _fmt(lum.mean() * 100, 2), _fmt(min(100.0, _colourfulness(img)), 2),
                     _fmt(min(100.0, lum.std() * 200), 2), _fmt(noisiness, 2), _fmt(sharpness, 2)])
    _write_csv(out / "spaq" / "meta_info_SPAQDataset.csv",
               ["img_name", "mos", "brightness", "colorfulness", "contrast", "noisiness", "sharpness"], rows)
    counts["spaq"] = n

    # TID2013 and KADID-10k (full reference)
    for name, refs_key in (("tid2013", "tid2013_refs"), ("kadid10k", "kadid10k_refs")):
        rng = _rng(seed, f"iqa/{name}")
        n_ref = cfg[refs_key]
        adv = progress.task(f"iqa/{name}", n_ref * (1 + len(kinds) * 5))
        rows = []
        for r in range(n_ref):
            ref = render(_iqa_scene(rng), size)
            if name == "tid2013":
                ref_name = f"I{r + 1:02d}.bmp"
                _save_img(out / name / "reference_images" / ref_name, ref)
            else:
                ref_name = f"I{r + 1:02d}.png"
                _save_img(out / name / "images" / ref_name, ref)
            adv()
            for t, kind in enumerate(kinds):
                for level in range(1, 6):
                    img = distort(ref, kind, level, rng)
                    mos, std = _ratings(rng, quality(kind, level), IQA_RANGES[name])
                    if name == "tid2013":
                        dist_name = f"i{r + 1:02d}_{t + 1:02d}_{level}.bmp"
                        _save_img(out / name / "distorted_images" / dist_name, img)
                    else:
                        dist_name = f"I{r + 1:02d}_{t + 1:02d}_{level:02d}.png"
                        _save_img(out / name / "images" / dist_name, img)
                    rows.append([ref_name, dist_name, _fmt(mos, 5), _fmt(std, 5)])
                    adv()
        score = "mos" if name == "tid2013" else "dmos"
        fname = "meta_info_TID2013Dataset.csv" if name == "tid2013" else "meta_info_KADID10kDataset.csv"
        _write_csv(out / name / fname, ["ref_name", "dist_name", score, "std"], rows)
        counts[name] = {"references": n_ref, "distorted": len(rows)}
    return counts


TOY_SET = ToySet("iqa", _write_iqa, scales={"tiny": {"koniq": 64, "livec": 64, "spaq": 64, "tid2013_refs": 8, "kadid10k_refs": 8},
                                                 "small": {"koniq": 1000, "livec": 500, "spaq": 500, "tid2013_refs": 25, "kadid10k_refs": 40}},
                 paths={"koniq": "iqa/koniq", "livec": "iqa/livec", "spaq": "iqa/spaq", "tid2013": "iqa/tid2013",
           "kadid10k": "iqa/kadid10k"})
