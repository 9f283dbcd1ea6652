"""The rules that stand in for people: perceived distance, quality, memorability; captions."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from perceptlab.datamodules.toyworld.world import (
    _BG_PHRASE,
    _CLASS,
    _DIST_PARAMS,
    DISTORTIONS,
    MEMORABILITY,
    NIGHTS_CUES,
    NIGHTS_TEMPERATURE,
    NIGHTS_WEIGHTS,
    TEXTURE_WORDS,
)

# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def quality(kind: str, level: float) -> float:
    """MOS rule: true quality (1-5, higher is better) of distortion ``kind`` at ``level`` (0-5)."""
    for name, slope, mid in DISTORTIONS:
        if name == kind:
            return float(1 + 4 * (1 - _sigmoid(slope * (level - mid))))
    raise ValueError(f"unknown distortion {kind!r}")


def perceived_distance(amounts: dict[str, float]) -> float:
    """HUMAN RULE: ``D = sum_k NIGHTS_WEIGHTS[k] * amounts[k]`` over the five cues."""
    return float(sum(NIGHTS_WEIGHTS[k] * float(amounts.get(k, 0.0)) for k in NIGHTS_CUES))


def share_right(d_left: float, d_right: float) -> float:
    """HUMAN RULE: share of people who find the right image closer to the reference."""
    return float(_sigmoid((d_left - d_right) / NIGHTS_TEMPERATURE))


def memorability(size: float, contrast: float, saturation: float, clutter: int, noise: float) -> float:
    """MEMORABILITY RULE, noiseless part (see module docstring); ``size`` is the radius fraction."""
    m = MEMORABILITY
    s = (size - 0.12) / 0.26
    logit = (m["bias"] + m["size"] * s + m["contrast"] * contrast + m["saturation"] * saturation
             + m["clutter"] * clutter + m["noise"] * noise)
    return float(_sigmoid(logit))


def distort(img: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """Apply distortion ``kind`` at ``level`` (1-5; 0 = none) to a uint8 RGB image."""
    if level == 0:
        return img.copy()
    p = _DIST_PARAMS[kind][level - 1]
    size = img.shape[0]
    k = size / 64.0
    if kind == "gaussian_noise":
        out = img.astype(np.float32) / 255 + rng.standard_normal(img.shape).astype(np.float32) * p
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if kind == "gaussian_blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(p * k)))
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(p))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if kind == "contrast_change":
        f = img.astype(np.float32)
        out = f.mean() + (f - f.mean()) * p
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if kind == "saturation_shift":
        f = img.astype(np.float32)
        grey = f @ np.array([0.299, 0.587, 0.114], np.float32)
        out = grey[..., None] + (f - grey[..., None]) * p
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if kind == "pixelate":
        small = max(1, round(size / (p * k)))
        im = Image.fromarray(img).resize((small, small), Image.BOX)
        return np.asarray(im.resize((size, size), Image.NEAREST))
    raise ValueError(f"unknown distortion {kind!r}")


_TEMPLATES = [
    "{a_size} {size} {colour} {cls} {bg}",
    "a photo of {a_size} {size} {colour} {cls} {bg}",
    "{a_texture} {texture} {colour} {cls}, {size}, {bg}",
    "{bg_cap}, {a_size} {size} {cls} in {colour}",
    "there is {a_colour} {colour} {cls} {bg}; it is {size}",
]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _a(word: str) -> str:
    """``word`` with its indefinite article."""
    return f"{_article(word)} {word}"


def caption(cls: str, colour: str, size: str, background: str, template: int = 0,
            texture: str | None = None) -> str:
    """Caption of an image-text sample (templates in ``_TEMPLATES``)."""
    bg = _BG_PHRASE[background]
    tex = TEXTURE_WORDS[texture or _CLASS[cls]["texture"]]
    return _TEMPLATES[template].format(size=size, colour=colour, cls=cls, bg=bg,
                                       bg_cap=bg[0].upper() + bg[1:], texture=tex,
                                       a_size=_article(size), a_colour=_article(colour),
                                       a_texture=_article(tex))
