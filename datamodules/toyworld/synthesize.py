"""Writing the toy world: every format, in one call (the world's rules: ``toyworld/__init__``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from perceptlab.datamodules.toyworld.world import (
    _DIST_PARAMS,
    BACKGROUNDS,
    CLASS_TABLE,
    COLOURS,
    DISTORTIONS,
    EMOTION_CUE_PROB,
    EMOTION_RULES,
    EMOTIONS,
    IQA_RANGES,
    MEMORABILITY,
    N_RATERS,
    NIGHTS_IMAGENET,
    NIGHTS_MAX_NOISE,
    NIGHTS_MAX_SHIFT,
    NIGHTS_TEMPERATURE,
    NIGHTS_WEIGHTS,
    RATER_STD,
    SIZES,
)
from perceptlab.datamodules.toyworld import (
    benchmark,
    classification,
    cue_conflict,
    emoset,
    fixations,
    image_text,
    iqa,
    lamem,
    nights,
)
from perceptlab.datamodules.toyworld.common import ToySet, _Progress

#: The toy world's data sets, in writing order (the benchmark reads the classification and caption
#: sets written before it). A new toy data set is its writer module, which declares its ``TOY_SET``
#: (writer, counts per scale, paths), and one line here.
TOY_SETS: tuple[ToySet, ...] = (
    nights.TOY_SET,
    image_text.TOY_SET,
    iqa.TOY_SET,
    cue_conflict.TOY_SET,
    classification.TOY_SET,
    lamem.TOY_SET,
    emoset.TOY_SET,
    benchmark.TOY_SET,
    fixations.TOY_SET,
)
#: Counts per scale, per data set (from each set's declaration).
SCALES: dict[str, dict] = {scale: {s.name: s.scales.get(scale, {}) for s in TOY_SETS} for scale in ("tiny", "small")}
#: What each data set writes, by name (``world.json``'s ``paths``).
PATHS: dict[str, str] = {key: path for s in TOY_SETS for key, path in s.paths.items()}


def synthesize(out: str | Path, seed: int = 0, scale: str = "tiny", image_size: int = 64,
               progress: bool = True, sets: Sequence[ToySet] = TOY_SETS) -> dict:
    """Write the toy world under ``out`` and return its manifest (also written to ``out/world.json``).

    ``scale`` is ``"tiny"`` (seconds) or ``"small"`` (about 10-20x larger); see :data:`SCALES`.
    The same ``(seed, scale, image_size)`` always gives byte-identical files. ``sets``: the data sets
    to write, in order (default :data:`TOY_SETS`; a new one can be tried before it is registered).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    if image_size < 16:
        raise ValueError("image_size must be at least 16")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict] = {}
    with _Progress(progress) as prog:
        for toy_set in sets:
            counts[toy_set.name] = toy_set.write(root, seed, toy_set.scales.get(scale, {}), image_size, prog)
    manifest = {
        "seed": int(seed),
        "scale": scale,
        "image_size": int(image_size),
        "classes": CLASS_TABLE,
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "backgrounds": BACKGROUNDS,
        "sizes": {k: list(v) for k, v in SIZES.items()},
        "emotions": EMOTIONS,
        "counts": counts,
        "paths": {key: path for s in sets for key, path in s.paths.items()},
        "rules": {
            "nights": {"weights": NIGHTS_WEIGHTS, "temperature": NIGHTS_TEMPERATURE,
                       "max_shift": NIGHTS_MAX_SHIFT, "max_noise": NIGHTS_MAX_NOISE,
                       "is_imagenet_classes": NIGHTS_IMAGENET,
                       "distance": "D = sum_k w_k a_k", "p_right": "sigmoid((D_left - D_right) / T)"},
            "iqa": {"distortions": [{"id": i + 1, "name": n_, "slope": s, "mid": m, "params": _DIST_PARAMS[n_]}
                                    for i, (n_, s, m) in enumerate(DISTORTIONS)],
                    "quality": "1 + 4 * (1 - sigmoid(slope * (level - mid)))",
                    "raters": N_RATERS, "rater_std": RATER_STD,
                    "mos_range": {k: list(v) for k, v in IQA_RANGES.items()},
                    "higher_is_better": True},
            "memorability": dict(MEMORABILITY, formula="sigmoid(bias + size*s + contrast*C + saturation*S"
                                                       " + clutter*n + noise*sigma) + N(0, score_noise)"),
            "emotion": {"cue_prob": EMOTION_CUE_PROB, "moods": EMOTION_RULES},
        },
    }
    (root / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
