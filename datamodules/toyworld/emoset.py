"""An EmoSet-style emotion set ({train,val,test}.json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from perceptlab.datamodules.toyworld.common import (
    _canonical,
    _clutter,
    _colourfulness,
    _lum,
    _Progress,
    _rng,
    _save,
    _save_img,
    _seed,
    _size,
    ToySet,
)
from perceptlab.datamodules.toyworld.render import Scene, render
from perceptlab.datamodules.toyworld.world import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    EMOTION_CUE_PROB,
    EMOTION_RULES,
    EMOTIONS,
)

# --- EmoSet ----------------------------------------------------------------------------------


def _write_emoset(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "emoset")
    out = root / "emoset"
    per = cfg["per_emotion"]
    advance = progress.task("emoset", per * len(EMOTIONS))
    lists: dict[str, list] = {"train": [], "val": [], "test": []}
    n_train, n_val = round(0.7 * per), round(0.1 * per)
    for emo in EMOTIONS:
        rule = EMOTION_RULES[emo]
        split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (per - n_train - n_val))
        split = split[rng.permutation(per)]
        for i in range(per):
            cls = CLASSES[int(rng.integers(16))]
            if rng.random() < EMOTION_CUE_PROB:
                bg, colour = rule["background"], rule["colours"][int(rng.integers(len(rule["colours"])))]
                size_name, bright, sat = rule["size"], rule["brightness"], rule["saturation"]
            else:
                bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
                colour = list(COLOURS)[int(rng.integers(16))]
                size_name, bright, sat = None, 1.0, 1.0
            _, radius = _size(rng, size_name)
            clutter = _clutter(rng, int(rng.integers(0, 3)))
            objs = clutter + [_canonical(cls, rng, radius, colour=colour)]
            img = render(Scene(background=bg, objects=objs, seed=_seed(rng), brightness=bright, saturation=sat), size)
            stem = f"{emo}_{i + 1:05d}"
            img_rel, ann_rel = f"image/{emo}/{stem}.jpg", f"annotation/{emo}/{stem}.json"
            _save_img(out / img_rel, img)
            ann = {"emotion": emo, "brightness": round(float(_lum(img).mean()), 4),
                   "colorfulness": round(min(1.0, _colourfulness(img) / 100), 4), "scene": bg,
                   "object": [cls], "facial_expression": None, "human_action": None}
            _save(out / ann_rel, (json.dumps(ann, sort_keys=True) + "\n").encode())
            lists[str(split[i])].append([emo, img_rel, ann_rel])
            advance()
    for s, items in lists.items():
        (out / f"{s}.json").write_text(json.dumps(items) + "\n")
    return {"per_emotion": per, **{s: len(v) for s, v in lists.items()}}


TOY_SET = ToySet("emoset", _write_emoset, scales={"tiny": {"per_emotion": 20},
                                                 "small": {"per_emotion": 250}},
                 paths={"emoset": "emoset"})
