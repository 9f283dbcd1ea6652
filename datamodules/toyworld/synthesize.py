"""Writing the toy world: every format, in one call (the world's rules: ``toyworld/__init__``)."""
from __future__ import annotations

import json
from pathlib import Path

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
    SCALES,
    SIZES,
)
from perceptlab.datamodules.toyworld.benchmark import _write_benchmark
from perceptlab.datamodules.toyworld.classification import _write_classification
from perceptlab.datamodules.toyworld.common import _Progress
from perceptlab.datamodules.toyworld.cue_conflict import _write_cue_conflict
from perceptlab.datamodules.toyworld.emoset import _write_emoset
from perceptlab.datamodules.toyworld.image_text import _write_image_text
from perceptlab.datamodules.toyworld.iqa import _write_iqa
from perceptlab.datamodules.toyworld.lamem import _write_lamem
from perceptlab.datamodules.toyworld.nights import _write_nights


PATHS = {
    "nights": "nights",
    "image_text_shards": "image_text/shards",
    "image_text_csv": "image_text/pairs.csv",
    "image_text_hf": "image_text/hf/train.parquet",
    "image_text_val_shards": "image_text/val_shards/00000.tar",
    "image_text_val_csv": "image_text/val_pairs.csv",
    "image_text_litdata": "image_text/litdata/train",
    "image_text_val_litdata": "image_text/litdata/val",
    "koniq": "iqa/koniq", "livec": "iqa/livec", "spaq": "iqa/spaq",
    "tid2013": "iqa/tid2013", "kadid10k": "iqa/kadid10k",
    "cue_conflict": "cue_conflict", "classification": "classification",
    "lamem": "lamem", "emoset": "emoset", "benchmark": "benchmark",
}


def synthesize(out: str | Path, seed: int = 0, scale: str = "tiny", image_size: int = 64,
               progress: bool = True) -> dict:
    """Write the toy world under ``out`` and return its manifest (also written to ``out/world.json``).

    ``scale`` is ``"tiny"`` (seconds) or ``"small"`` (about 10-20x larger); see :data:`SCALES`.
    The same ``(seed, scale, image_size)`` always gives byte-identical files.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    if image_size < 16:
        raise ValueError("image_size must be at least 16")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = SCALES[scale]
    counts: dict[str, dict] = {}
    with _Progress(progress) as prog:
        counts["nights"] = _write_nights(root, seed, cfg["nights"], image_size, prog)
        counts["image_text"] = _write_image_text(root, seed, cfg["image_text"], image_size, prog)
        counts["iqa"] = _write_iqa(root, seed, cfg["iqa"], image_size, prog)
        counts["cue_conflict"] = _write_cue_conflict(root, seed, cfg["cue_conflict"], image_size, prog)
        counts["classification"] = _write_classification(root, seed, cfg["classification"], image_size, prog)
        counts["lamem"] = _write_lamem(root, seed, cfg["lamem"], image_size, prog)
        counts["emoset"] = _write_emoset(root, seed, cfg["emoset"], image_size, prog)
        counts["benchmark"] = _write_benchmark(root, prog)  # from the classification and held-out caption sets
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
        "paths": PATHS,
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
