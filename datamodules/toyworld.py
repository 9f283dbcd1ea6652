"""The toy world: a procedural, deterministic world that writes every on-disk format perceptlab reads.

``synthesize(out, seed, scale)`` writes small datasets (NIGHTS triplets, captioned image-text
shards/CSV/parquet, pyiqa-style IQA sets, cue-conflict images, a classification folder, LaMem-
and EmoSet-style sets) under ``out`` so the whole pipeline runs offline on a CPU. Every number
below is a constant of this module; ``world.json`` repeats them for each generated world.

Determinism
-----------
Everything is drawn from ``numpy.random.default_rng``. Dataset ``name`` uses the generator
``default_rng([seed, zlib.crc32(name)])`` (sub-seeded per dataset, so one dataset does not depend
on the others or on their order); every image is rendered from a :class:`Scene` that carries its
own integer ``seed`` for per-pixel randomness (grass, speckle, pixel noise). PNG and JPEG
(quality 95 for photos, fixed qualities for the JPEG distortion), tar members (mtime 0, uid/gid
0), CSVs (explicit number formatting) and parquet files are written deterministically, so the
same ``(seed, scale, image_size)`` gives byte-identical files.

Objects
-------
There are 16 object classes, the cue-conflict class names (:data:`CLASSES`). Each class has a
canonical SHAPE, TEXTURE and COLOUR (:data:`CLASS_TABLE`):

=========  ===========  =============  ========
class      shape        texture        colour
=========  ===========  =============  ========
airplane   plus         stripes_h      red
bear       disc         noise_blobs    brown
bicycle    ring         spokes         cyan
bird       triangle     stripes_d45    yellow
boat       bowl         waves          blue
bottle     bar          stripes_v      green
car        wide_rect    checker        orange
cat        star5        stripes_d135   gray
chair      l_shape      grid           purple
clock      gear         rings          pink
dog        ellipse      dots           olive
elephant   heart        speckle        teal
keyboard   diamond      crosshatch     navy
knife      crescent     plain          lime
oven       square       zigzag         maroon
truck      arrow        spiral         magenta
=========  ===========  =============  ========

A shape is an implicit field ``f(u, v)`` in object coordinates (units of the object radius,
positive inside, about a signed distance); the silhouette is ``f > 0``, anti-aliased over one
pixel. A texture is a pattern ``t(x, y)`` in [0, 1] over object-centred, object-rotated pixel
coordinates with a fixed period in pixels (scaled by ``image_size / 64``), so textures keep their
frequency whatever the object size. An object of colour ``c`` (RGB in [0, 1]) is painted as
``dark + (light - dark) * t`` with ``dark = 0.45 c`` and ``light = c + 0.5 (1 - c)``.

Objects vary in position, rotation (uniform in [-15, 15] degrees) and size. Sizes are named in
captions: ``small`` (radius 0.14-0.19 of the image side), ``medium`` (0.22-0.27), ``large``
(0.30-0.36). Backgrounds (:data:`BACKGROUNDS`) are ``light`` (plain light grey), ``dark`` (plain
near-black), ``sky`` (blue-to-white vertical gradient), ``grass`` (noisy green), ``sand`` (noisy
beige) and ``sunset`` (orange-to-purple gradient).

Datasets and their rules
------------------------
``nights/`` -- NIGHTS (DreamSim) triplets. ``data.csv`` header
``id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,prompt``.
Paths are relative to ``nights/``: triplet ``id`` lives at ``ref/{id // 100:03d}/{id % 100:03d}.png``
and ``distort/{id // 100:03d}/{id % 100:03d}_{0|1}.png`` (``_0`` is left, ``_1`` right). Splits
``train``/``val``/``test`` are assigned by a random permutation of ids; ``is_imagenet`` is True
when the reference class is one of the first eight classes (airplane ... cat), so both
``test_imagenet`` and ``test_no_imagenet`` are non-empty. ``prompt`` is ``"a photo of a <class>"``
(``an`` before a vowel). The reference is a canonical object (class shape, texture and colour) of
radius 0.24-0.34 on a random background. Each distortion keeps the background and perturbs five
cues by amounts ``a_k`` in [0, 1]: ``shape`` (the shape field is blended toward a random other
class's shape, ``f = (1 - a) f_ref + a f_other``), ``colour`` (RGB blended toward a random other
palette colour), ``texture`` (pattern blended toward a random other class's texture),
``position`` (shift by ``a * 0.18`` of the image side in a random direction, clipped to keep the
object in frame) and ``noise`` (Gaussian pixel noise of std ``a * 0.12``). Half of the triplets
are *single-cue*: each side changes exactly one cue (two different cues) by ``U(0.35, 1)``; the
others are *mixed*: each cue is active with probability 0.5 (at least one) with amount
``U(0.1, 1)``.

HUMAN RULE: the perceived distance of a distortion to the reference is
``D = 4.0 a_shape + 3.0 a_colour + 0.5 a_texture + 0.5 a_position + 0.5 a_noise``
(people weigh shape and colour far above texture, position and noise). The share of people who
find the RIGHT image closer is ``p = sigmoid((D_left - D_right) / 0.5)``. Each row has ``votes``
people (uniform 6-10; with probability 0.06 uniform 3-5, rows a loader drops), the number
choosing right is ``Binomial(votes, p)``, ``right_vote`` is that count over ``votes`` and
``left_vote = 1 - right_vote``. A model whose distances follow shape and colour reaches a high
2AFC; a texture- or pixel-driven model does not. ``nights/toy_annotations.csv`` (ignored by the
loaders) records the cue amounts, ``D_left``, ``D_right`` and ``p`` for each id.

``image_text/`` -- captioned images of canonical objects (shape and texture of the class; the
colour is the class colour with probability 0.7, else a random palette colour, and the caption
names the colour actually drawn), random size and background. Captions name class, colour, size
and background through a few templates (e.g. ``"a large red airplane on grass"``). The same
training set is written three ways: (a) webdataset shards ``shards/{00000..N}.tar`` as img2dataset
writes them (``KEY.jpg``, ``KEY.txt``, ``KEY.json`` with a 9-digit ``KEY = shard * 10000 + i``,
plus ``NNNNN_stats.json`` and ``NNNNN.parquet`` beside each tar); (b) ``pairs.csv``,
tab-separated, columns ``filepath`` and ``title`` (open_clip defaults), ``filepath`` relative to
the CSV's own folder (``image_text/``), images at ``images/train/KEY.jpg``; (c) ``hf/train.parquet``
(columns ``image`` -- a ``datasets.Image`` feature -- and ``caption``). A held-out validation set
is ``val_shards/00000.tar`` and ``val_pairs.csv`` (images at ``images/val/KEY.jpg``), for retrieval.

``iqa/`` -- pyiqa meta-info CSVs (name column first, score second, as pyiqa reads them):
``koniq/meta_info_KonIQ10kDataset.csv`` (``img_name,mos,std,split``, split in train/val/test,
70/10/20, images in ``koniq/images/``), ``livec/meta_info_LIVEChallengeDataset.csv``
(``img_name,mos,std``, ``livec/images/``), ``spaq/meta_info_SPAQDataset.csv``
(``img_name,mos,brightness,colorfulness,contrast,noisiness,sharpness``, ``spaq/images/``),
``tid2013/meta_info_TID2013Dataset.csv`` (``ref_name,dist_name,mos,std``,
``tid2013/reference_images/I01.bmp``, ``tid2013/distorted_images/i01_TT_L.bmp``) and
``kadid10k/meta_info_KADID10kDataset.csv`` (``ref_name,dist_name,dmos,std``, references and
distorted images together in ``kadid10k/images/``, ``I01.png`` / ``I01_TT_LL.png``).
Distortion types ``TT`` (:data:`DISTORTIONS`, 1-based): gaussian_noise, gaussian_blur, jpeg,
contrast_change, saturation_shift, pixelate, each at levels 1-5.

MOS RULE: a distortion of type ``t`` at level ``L`` (0 = pristine) has true quality
``q = 1 + 4 (1 - sigmoid(slope_t (L - mid_t)))`` on a 1-5 scale (slope/mid per type in
:data:`DISTORTIONS`: people are most sensitive to noise and pixelation, least to saturation). Each
image is rated by 20 raters, ``rating = clip(q + N(0, 0.5), 1, 5)``; ``mos`` is the mean rating,
``std`` the raters' standard deviation, both mapped linearly to the dataset's native range (pyiqa's
``mos_range``): KonIQ, LIVE-C and SPAQ 1-100, TID2013 0-9, KADID-10k 1-5 (``dmos`` is the 1-5 value).
ALL toy scores are HIGHER-IS-BETTER (as in the real KADID ``dmos`` and TID2013 ``mos``). FR sets
apply every type and level to each reference; NR sets show a random object scene with one random
distortion at a random level (pristine with probability 1/6). SPAQ's attribute columns (0-100,
higher is better) are: brightness = mean luminance, colorfulness = Hasler-Suesstrunk
colourfulness, contrast = luminance std, noisiness and sharpness = the quality term of the noise
(resp. blur/pixelate/jpeg) distortion, 100 when absent.

``cue_conflict/<shape_class>/<shape><i>-<texture><j>.png`` -- the shape of one class filled with
the texture AND colour of another, large and centred on the ``light`` background; ``i`` is the
shape instance (pose) index and ``j`` the texture instance (texture phase) index, both from 1.
A few items have shape class == texture class (scoring drops them).

``classification/<class>/<class>_NNNN.png`` -- canonical objects of all 16 classes with random
position, rotation, size and background.

``lamem/images/NNNNNNNN.jpg``, ``lamem/splits/{train,val,test}_{1..5}.txt`` (lines
``filename score``; five random 70/10/20 splits). A scene has one main object (random class and
palette colour, radius 0.12-0.38), 0-4 small clutter objects and pixel noise of std 0-0.08 (half
of the images have none). MEMORABILITY RULE: ``score = clip(sigmoid(-1.2 + 2.0 s + 2.5 C + 1.0 S
- 0.5 n - 12 sigma) + N(0, 0.03), 0, 1)`` with ``s`` = (radius - 0.12) / 0.26, ``C`` = |luminance
of the object colour - mean luminance of the background| (in [0, 1]), ``S`` = HSV saturation of the
object colour, ``n`` = number of clutter objects and ``sigma`` = noise std: big, contrasting,
saturated, uncluttered, clean objects are memorable.

``emoset/{train,val,test}.json`` -- lists of ``[emotion, image_path, annotation_path]`` with
paths relative to ``emoset/`` (``image/<emotion>/<emotion>_NNNNN.jpg`` and
``annotation/<emotion>/<emotion>_NNNNN.json``; numbering per emotion from 1, splits 70/10/20
per emotion). Annotations hold ``emotion``, ``brightness``, ``colorfulness`` (image statistics
in [0, 1]), ``scene`` (the background name), ``object`` (class names), ``facial_expression``
and ``human_action`` (null). EMOTION RULE: each emotion has a mood -- a background, an object
palette and a global tone (brightness gain, saturation factor), see :data:`EMOTION_RULES`:
amusement = light background, yellow/orange/pink; awe = sky, blue/cyan/teal, large objects;
contentment = grass, green/lime/olive; excitement = sunset, red/magenta/orange, saturation 1.3;
anger = dark, red/maroon; disgust = sand, olive/brown, saturation 0.6; fear = dark,
navy/purple, brightness 0.6, small objects; sadness = light, blue/gray, brightness 0.8 and
saturation 0.3. With probability 0.85 an image follows its emotion's mood; otherwise background,
palette colour and size are random and the tone neutral, so a small model beats chance (1/8)
clearly but not perfectly.

``world.json`` -- seed, scale, image_size, the class table, backgrounds, counts per dataset,
relative paths and all rule parameters.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "CLASS_TABLE",
    "COLOURS",
    "DISTORTIONS",
    "EMOTIONS",
    "EMOTION_RULES",
    "IQA_RANGES",
    "MEMORABILITY",
    "NIGHTS_CUES",
    "NIGHTS_TEMPERATURE",
    "NIGHTS_WEIGHTS",
    "PATHS",
    "SCALES",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "TEXTURE_WORDS",
    "ObjectSpec",
    "Scene",
    "caption",
    "distort",
    "memorability",
    "parse_cue_conflict_name",
    "perceived_distance",
    "quality",
    "render",
    "render_background",
    "shape_field",
    "share_right",
    "synthesize",
    "texture_field",
]

# ---------------------------------------------------------------------------------------------
# The class table
# ---------------------------------------------------------------------------------------------

CLASSES: list[str] = [
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
]

EMOTIONS: list[str] = [
    "amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness",
]

#: Named colours (RGB 0-255); the first 16 are the class colours, in class order.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "brown": (130, 80, 40),
    "cyan": (40, 200, 220),
    "yellow": (240, 210, 40),
    "blue": (40, 80, 220),
    "green": (40, 160, 60),
    "orange": (245, 140, 30),
    "gray": (140, 140, 140),
    "purple": (130, 50, 170),
    "pink": (245, 140, 190),
    "olive": (128, 128, 30),
    "teal": (20, 128, 128),
    "navy": (20, 30, 110),
    "lime": (160, 230, 40),
    "maroon": (120, 20, 40),
    "magenta": (220, 40, 200),
}

SHAPES: list[str] = [
    "plus", "disc", "ring", "triangle", "bowl", "bar", "wide_rect", "star5",
    "l_shape", "gear", "ellipse", "heart", "diamond", "crescent", "square", "arrow",
]

TEXTURES: list[str] = [
    "stripes_h", "noise_blobs", "spokes", "stripes_d45", "waves", "stripes_v", "checker",
    "stripes_d135", "grid", "rings", "dots", "speckle", "crosshatch", "plain", "zigzag", "spiral",
]

#: Adjectives used in captions for each texture.
TEXTURE_WORDS: dict[str, str] = {
    "stripes_h": "striped", "noise_blobs": "blotchy", "spokes": "rayed", "stripes_d45": "slanted",
    "waves": "wavy", "stripes_v": "pinstriped", "checker": "checkered", "stripes_d135": "hatched",
    "grid": "gridded", "rings": "ringed", "dots": "dotted", "speckle": "speckled",
    "crosshatch": "crosshatched", "plain": "plain", "zigzag": "zigzag", "spiral": "swirly",
}

CLASS_TABLE: list[dict[str, str]] = [
    {"name": c, "shape": s, "texture": t, "colour": col}
    for c, s, t, col in zip(CLASSES, SHAPES, TEXTURES, list(COLOURS)[:16])
]
_CLASS = {row["name"]: row for row in CLASS_TABLE}

BACKGROUNDS: list[str] = ["light", "dark", "sky", "grass", "sand", "sunset"]
_BG_PHRASE = {
    "light": "on a light background", "dark": "on a dark background", "sky": "against the sky",
    "grass": "on grass", "sand": "on sand", "sunset": "at sunset",
}

#: Object radius (fraction of the image side) per named size.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.14, 0.19), "medium": (0.22, 0.27), "large": (0.30, 0.36),
}

#: Distortion types: (name, slope, mid) of the psychometric MOS rule; 1-based index = type id.
DISTORTIONS: list[tuple[str, float, float]] = [
    ("gaussian_noise", 1.6, 2.5),
    ("gaussian_blur", 1.3, 3.0),
    ("jpeg", 1.2, 3.5),
    ("contrast_change", 1.0, 3.0),
    ("saturation_shift", 0.8, 4.0),
    ("pixelate", 1.5, 2.8),
]
_DIST_PARAMS = {
    "gaussian_noise": [0.02, 0.05, 0.09, 0.14, 0.20],  # std on [0, 1]
    "gaussian_blur": [0.5, 1.0, 1.5, 2.2, 3.0],  # PIL radius at 64 px
    "jpeg": [70, 40, 20, 10, 5],  # quality
    "contrast_change": [0.8, 0.6, 0.45, 0.3, 0.2],  # contrast factor
    "saturation_shift": [0.75, 0.5, 0.3, 0.15, 0.0],  # saturation factor
    "pixelate": [1.5, 2.0, 3.0, 4.0, 6.0],  # block size at 64 px
}
N_RATERS = 20
RATER_STD = 0.5
#: native MOS range per IQA set, as pyiqa's presets give them (the 1-5 quality maps linearly onto it).
IQA_RANGES: dict[str, tuple[float, float]] = {
    "koniq": (1.0, 100.0), "livec": (1.0, 100.0), "spaq": (1.0, 100.0),
    "tid2013": (0.0, 9.0), "kadid10k": (1.0, 5.0),
}

NIGHTS_CUES = ["shape", "colour", "texture", "position", "noise"]
NIGHTS_WEIGHTS: dict[str, float] = {
    "shape": 4.0, "colour": 3.0, "texture": 0.5, "position": 0.5, "noise": 0.5,
}
NIGHTS_TEMPERATURE = 0.5
NIGHTS_MAX_SHIFT = 0.18
NIGHTS_MAX_NOISE = 0.12
NIGHTS_IMAGENET = CLASSES[:8]

MEMORABILITY = {
    "bias": -1.2, "size": 2.0, "contrast": 2.5, "saturation": 1.0, "clutter": -0.5,
    "noise": -12.0, "score_noise": 0.03,
}

EMOTION_RULES: dict[str, dict] = {
    "amusement": {"background": "light", "colours": ["yellow", "orange", "pink"],
                  "brightness": 1.0, "saturation": 1.0, "size": None},
    "awe": {"background": "sky", "colours": ["blue", "cyan", "teal"],
            "brightness": 1.0, "saturation": 1.0, "size": "large"},
    "contentment": {"background": "grass", "colours": ["green", "lime", "olive"],
                    "brightness": 1.0, "saturation": 1.0, "size": None},
    "excitement": {"background": "sunset", "colours": ["red", "magenta", "orange"],
                   "brightness": 1.0, "saturation": 1.3, "size": None},
    "anger": {"background": "dark", "colours": ["red", "maroon"],
              "brightness": 1.0, "saturation": 1.0, "size": None},
    "disgust": {"background": "sand", "colours": ["olive", "brown"],
                "brightness": 1.0, "saturation": 0.6, "size": None},
    "fear": {"background": "dark", "colours": ["navy", "purple"],
             "brightness": 0.6, "saturation": 1.0, "size": "small"},
    "sadness": {"background": "light", "colours": ["blue", "gray"],
                "brightness": 0.8, "saturation": 0.3, "size": None},
}
EMOTION_CUE_PROB = 0.85

#: Counts per scale.
SCALES: dict[str, dict] = {
    "tiny": {
        "nights": {"train": 120, "val": 40, "test": 40},
        "image_text": {"train": 256, "shards": 2, "val": 64},
        "iqa": {"koniq": 64, "livec": 64, "spaq": 64, "tid2013_refs": 8, "kadid10k_refs": 8},
        "cue_conflict": {"per_class": 6, "same_every": 4, "instances": None},
        "classification": {"per_class": 8},
        "lamem": {"images": 200},
        "emoset": {"per_emotion": 20},
    },
    "small": {
        "nights": {"train": 1500, "val": 300, "test": 300},
        "image_text": {"train": 8000, "shards": 8, "val": 512},
        "iqa": {"koniq": 1000, "livec": 500, "spaq": 500, "tid2013_refs": 25, "kadid10k_refs": 40},
        "cue_conflict": {"per_class": None, "same_every": None, "instances": 3},
        "classification": {"per_class": 50},
        "lamem": {"images": 2000},
        "emoset": {"per_emotion": 250},
    },
}

JPEG_QUALITY = 95

# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class ObjectSpec:
    """One object. Positions and radius are fractions of the image side; colour is RGB 0-255.

    ``shape_to``/``shape_mix`` blend the shape field toward another shape, ``texture_to``/
    ``texture_mix`` blend the texture pattern toward another texture (both 0 = canonical).
    ``phase`` shifts the texture pattern (pixels, at 64 px) and seeds random textures.
    """

    shape: str
    texture: str
    colour: tuple[float, float, float]
    cx: float = 0.5
    cy: float = 0.5
    radius: float = 0.3
    angle: float = 0.0
    shape_to: str | None = None
    shape_mix: float = 0.0
    texture_to: str | None = None
    texture_mix: float = 0.0
    phase: tuple[float, float] = (0.0, 0.0)


@dataclass
class Scene:
    """A background, objects painted in order, then a global tone and pixel noise.

    ``seed`` drives all per-pixel randomness of the background and random textures; the pixel
    noise (std ``noise`` on [0, 1]) uses ``noise_seed`` (default: ``seed``). ``brightness``
    multiplies the image, ``saturation`` scales the distance of each pixel to its grey value.
    """

    background: str
    objects: list[ObjectSpec] = field(default_factory=list)
    seed: int = 0
    noise: float = 0.0
    noise_seed: int | None = None
    brightness: float = 1.0
    saturation: float = 1.0


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRIDS:
        ax = np.arange(size, dtype=np.float32) + 0.5
        _GRIDS[size] = (ax[None, :].repeat(size, 0), ax[:, None].repeat(size, 1))
    return _GRIDS[size]


def _smooth_noise(rng: np.random.Generator, size: int, period: float, n: int = 4) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a sum of ``n`` random plane waves."""
    xx, yy = _grid(size)
    out = np.zeros((size, size), np.float32)
    for _ in range(n):
        ang = rng.uniform(0, math.pi)
        per = period * rng.uniform(0.7, 1.3)
        ph = rng.uniform(0, 2 * math.pi)
        out += np.cos((xx * math.cos(ang) + yy * math.sin(ang)) * (2 * math.pi / per) + ph)
    return out / math.sqrt(n / 2)


def render_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background ``name`` as a float32 (size, size, 3) array in [0, 1]."""
    k = size / 64.0
    yy = _grid(size)[1][..., None] / size
    if name == "light":
        base = np.array([225, 225, 220], np.float32) / 255 + rng.uniform(-0.03, 0.03)
        return np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if name == "dark":
        base = np.array([30, 30, 36], np.float32) / 255 + rng.uniform(-0.02, 0.02)
        return np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if name in ("sky", "sunset"):
        top, bottom = ((np.array([70, 130, 220]), np.array([205, 228, 250])) if name == "sky"
                       else (np.array([250, 150, 60]), np.array([110, 50, 130])))
        top = top.astype(np.float32) / 255
        bottom = bottom.astype(np.float32) / 255
        return (top + (bottom - top) * yy).astype(np.float32)
    if name in ("grass", "sand"):
        base = (np.array([60, 140, 50]) if name == "grass" else np.array([215, 195, 145]))
        base = base.astype(np.float32) / 255
        amp = 0.12 if name == "grass" else 0.06
        field_ = _smooth_noise(rng, size, 16 * k) * 0.5 + rng.standard_normal((size, size)) * 0.5
        return np.clip(base + amp * field_[..., None].astype(np.float32), 0, 1)
    raise ValueError(f"unknown background {name!r}")


def _box(u, v, hw, hh, cx=0.0, cy=0.0):
    return np.minimum(hw - np.abs(u - cx), hh - np.abs(v - cy))


def _disc(u, v, r, cx=0.0, cy=0.0):
    return r - np.hypot(u - cx, v - cy)


def _convex(u, v, n, apothem, rot, cx=0.0, cy=0.0):
    out = None
    for i in range(n):
        a = rot + 2 * math.pi * i / n
        d = apothem - ((u - cx) * math.cos(a) + (v - cy) * math.sin(a))
        out = d if out is None else np.minimum(out, d)
    return out


def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def shape_field(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Implicit field of ``shape`` at object coordinates (u right, v down; units of radius).

    Positive inside, roughly a signed distance; the shape fits in the unit disc.
    """
    if shape == "plus":
        return np.maximum(_box(u, v, 1.0, 0.22), _box(u, v, 0.22, 0.85))
    if shape == "disc":
        return _disc(u, v, 0.85)
    if shape == "ring":
        return 0.22 - np.abs(np.hypot(u, v) - 0.68)
    if shape == "triangle":  # pointing up, circumradius 1
        return _convex(u, v, 3, 0.5, math.pi / 2, 0.0, 0.15)
    if shape == "bowl":  # lower half of a disc
        return np.minimum(_disc(u, v, 1.0, 0.0, -0.35), v + 0.35)
    if shape == "bar":
        return _box(u, v, 0.3, 0.95)
    if shape == "wide_rect":
        return _box(u, v, 0.95, 0.45)
    if shape == "star5":
        rho, th = _polar(u, v)
        tri = np.abs(((th + math.pi / 2) * 5 / (2 * math.pi)) % 1.0 - 0.5) * 2  # 1 at tips
        return (0.42 + 0.55 * tri - rho) * 0.7
    if shape == "l_shape":
        return np.maximum(_box(u, v, 0.25, 0.9, -0.45, 0.0), _box(u, v, 0.7, 0.25, 0.0, 0.65))
    if shape == "gear":
        rho, th = _polar(u, v)
        teeth = np.clip(np.cos(8 * th) * 3, -1, 1)
        return 0.8 + 0.15 * teeth - rho
    if shape == "ellipse":
        return (1.0 - np.hypot(u / 1.0, v / 0.55)) * 0.55
    if shape == "heart":
        lobes = np.maximum(_disc(u, v, 0.5, -0.42, -0.3), _disc(u, v, 0.5, 0.42, -0.3))
        tip = _convex(u, v, 3, 0.5, -math.pi / 2, 0.0, -0.05)
        return np.maximum(lobes, np.minimum(tip, v + 0.3 + 0.0 * u))
    if shape == "diamond":
        return (1.0 - np.abs(u) - np.abs(v)) / math.sqrt(2)
    if shape == "crescent":
        return np.minimum(_disc(u, v, 0.9), -_disc(u, v, 0.7, 0.42, -0.12))
    if shape == "square":
        return _box(u, v, 0.72, 0.72)
    if shape == "arrow":
        shaft = _box(u, v, 0.5, 0.2, -0.4, 0.0)
        head = _convex(u, v, 3, 0.4, math.pi, 0.4, 0.0)
        return np.maximum(shaft, head)
    raise ValueError(f"unknown shape {shape!r}")


def texture_field(texture: str, x: np.ndarray, y: np.ndarray, scale: float = 1.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Texture ``texture`` in [0, 1] at object-centred pixel coordinates ``x``, ``y``.

    Periods are in pixels at 64 px, multiplied by ``scale`` (= image_size / 64). Random textures
    (``noise_blobs``, ``speckle``) draw from ``rng``.
    """
    tau = 2 * math.pi
    k = scale
    if texture == "stripes_h":
        return 0.5 + 0.5 * np.cos(tau * y / (6 * k))
    if texture == "stripes_v":
        return 0.5 + 0.5 * np.cos(tau * x / (5 * k))
    if texture == "stripes_d45":
        return 0.5 + 0.5 * np.cos(tau * (x + y) / (math.sqrt(2) * 7 * k))
    if texture == "stripes_d135":
        return 0.5 + 0.5 * np.cos(tau * (x - y) / (math.sqrt(2) * 9 * k))
    if texture == "checker":
        s = np.sin(tau * x / (10 * k)) * np.sin(tau * y / (10 * k))
        return np.clip(0.5 + 2.5 * s, 0, 1)
    if texture == "dots":
        d = np.cos(tau * x / (7 * k)) + np.cos(tau * y / (7 * k))
        return np.clip((d - 0.6) * 1.5, 0, 1)
    if texture == "grid":
        d = np.maximum(np.cos(tau * x / (8 * k)), np.cos(tau * y / (8 * k)))
        return np.clip((d - 0.7) * 4, 0, 1)
    if texture == "crosshatch":
        a = (x + y) / math.sqrt(2)
        b = (x - y) / math.sqrt(2)
        d = np.maximum(np.cos(tau * a / (6 * k)), np.cos(tau * b / (6 * k)))
        return np.clip((d - 0.6) * 3, 0, 1)
    if texture == "rings":
        return 0.5 + 0.5 * np.cos(tau * np.hypot(x, y) / (6 * k))
    if texture == "spokes":
        return 0.5 + 0.5 * np.cos(8 * np.arctan2(y, x))
    if texture == "waves":
        return 0.5 + 0.5 * np.cos(tau * (y + 2.5 * k * np.sin(tau * x / (14 * k))) / (8 * k))
    if texture == "zigzag":
        tri = np.abs((x / (8 * k)) % 1.0 - 0.5) * 2 - 0.5
        return 0.5 + 0.5 * np.cos(tau * (y + 5 * k * tri) / (7 * k))
    if texture == "spiral":
        return 0.5 + 0.5 * np.cos(3 * np.arctan2(y, x) + tau * np.hypot(x, y) / (8 * k))
    if texture == "plain":
        return np.full(np.shape(x), 0.55, np.float32)
    rng = rng if rng is not None else np.random.default_rng(0)
    if texture == "noise_blobs":
        n = np.zeros(np.shape(x), np.float32)
        for _ in range(4):
            ang = rng.uniform(0, math.pi)
            per = 13 * k * rng.uniform(0.8, 1.25)
            n += np.cos(tau * (x * math.cos(ang) + y * math.sin(ang)) / per + rng.uniform(0, tau))
        return 0.5 + 0.5 * np.tanh(1.5 * n / math.sqrt(2))
    if texture == "speckle":  # random 2x2-pixel cells, from an integer hash of the cell index
        cell = 2.0 * k
        ix = np.floor(np.asarray(x, np.float64) / cell).astype(np.int64)
        iy = np.floor(np.asarray(y, np.float64) / cell).astype(np.int64)
        h = (ix * 0x9E3779B1 + iy * 0x85EBCA77 + int(rng.integers(2**31))) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
        h ^= h >> 12
        return ((h >> 7) & 1).astype(np.float32) * 0.8 + 0.1
    raise ValueError(f"unknown texture {texture!r}")


def _paint_object(img: np.ndarray, obj: ObjectSpec, rng: np.random.Generator) -> None:
    size = img.shape[0]
    r_px = obj.radius * size
    # every shape (and blend of shapes) lies within 1.3 radii of the centre: paint that box only
    half = 1.3 * r_px + 2
    x0, x1 = max(0, math.floor(obj.cx * size - half)), min(size, math.ceil(obj.cx * size + half))
    y0, y1 = max(0, math.floor(obj.cy * size - half)), min(size, math.ceil(obj.cy * size + half))
    if x0 >= x1 or y0 >= y1:
        return
    xx, yy = (g[y0:y1, x0:x1] for g in _grid(size))
    img = img[y0:y1, x0:x1]
    c, s = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
    dx = xx - obj.cx * size
    dy = yy - obj.cy * size
    lx = dx * c + dy * s
    ly = -dx * s + dy * c
    u, v = lx / r_px, ly / r_px
    f = shape_field(obj.shape, u, v)
    if obj.shape_to is not None and obj.shape_mix > 0:
        f = (1 - obj.shape_mix) * f + obj.shape_mix * shape_field(obj.shape_to, u, v)
    alpha = np.clip(0.5 + f * r_px, 0.0, 1.0).astype(np.float32)
    k = size / 64.0
    px, py = lx + obj.phase[0] * k, ly + obj.phase[1] * k
    t = texture_field(obj.texture, px, py, k, rng)
    if obj.texture_to is not None and obj.texture_mix > 0:
        t = (1 - obj.texture_mix) * t + obj.texture_mix * texture_field(obj.texture_to, px, py, k, rng)
    col = np.asarray(obj.colour, np.float32) / 255.0
    dark = 0.45 * col
    light = col + 0.5 * (1 - col)
    paint = dark + (light - dark) * t[..., None].astype(np.float32)
    a = alpha[..., None]
    img *= 1 - a
    img += a * paint


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Render ``scene`` to a uint8 (size, size, 3) RGB array (a pure function of the scene)."""
    rng = np.random.default_rng(scene.seed)
    img = np.array(render_background(scene.background, size, rng), np.float32, copy=True)
    for obj in scene.objects:
        _paint_object(img, obj, rng)
    if scene.saturation != 1.0:
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = grey[..., None] + (img - grey[..., None]) * scene.saturation
    if scene.brightness != 1.0:
        img = img * scene.brightness
    if scene.noise > 0:
        nrng = np.random.default_rng(scene.seed if scene.noise_seed is None else scene.noise_seed)
        img = img + nrng.standard_normal(img.shape).astype(np.float32) * scene.noise
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


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


def parse_cue_conflict_name(filename: str) -> tuple[str, str]:
    """``airplane1-bicycle2.png`` -> ``("airplane", "bicycle")``."""
    m = re.fullmatch(r"([a-z]+)(\d+)-([a-z]+)(\d+)\.png", Path(filename).name)
    if not m:
        raise ValueError(f"not a cue-conflict file name: {filename!r}")
    return m.group(1), m.group(3)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpg_bytes(img: np.ndarray, quality_: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality_)
    return buf.getvalue()


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _save_img(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        path.write_bytes(_jpg_bytes(img))
    elif suffix == ".png":
        path.write_bytes(_png_bytes(img))
    elif suffix == ".bmp":
        Image.fromarray(img).save(path, format="BMP")
    else:
        raise ValueError(f"unsupported image type {path}")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)


def _fmt(x: float, nd: int = 6) -> str:
    return f"{float(x):.{nd}f}"


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _pos(rng: np.random.Generator, radius: float, jitter: float | None = None) -> tuple[float, float]:
    if jitter is None:
        lo, hi = radius + 0.02, 1 - radius - 0.02
        if lo >= hi:
            return 0.5, 0.5
        return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    return float(0.5 + rng.uniform(-jitter, jitter)), float(0.5 + rng.uniform(-jitter, jitter))


def _size(rng: np.random.Generator, name: str | None = None) -> tuple[str, float]:
    name = name or str(rng.choice(list(SIZES)))
    lo, hi = SIZES[name]
    return name, float(rng.uniform(lo, hi))


def _canonical(cls: str, rng: np.random.Generator, radius: float, colour: str | None = None,
               centre: tuple[float, float] | None = None) -> ObjectSpec:
    row = _CLASS[cls]
    cx, cy = centre if centre is not None else _pos(rng, radius)
    return ObjectSpec(shape=row["shape"], texture=row["texture"], colour=COLOURS[colour or row["colour"]],
                      cx=cx, cy=cy, radius=radius, angle=float(rng.uniform(-15, 15)),
                      phase=(float(rng.uniform(0, 16)), float(rng.uniform(0, 16))))


def _clutter(rng: np.random.Generator, n: int) -> list[ObjectSpec]:
    out = []
    for _ in range(n):
        cls = CLASSES[int(rng.integers(16))]
        r = float(rng.uniform(0.06, 0.1))
        out.append(_canonical(cls, rng, r, colour=list(COLOURS)[int(rng.integers(16))]))
    return out


class _Progress:
    """Thin wrapper over ``rich.progress`` (one task per dataset) or a no-op."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn())

    def __enter__(self):
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def task(self, name: str, total: int) -> Callable[[int], None]:
        if self._p is None:
            return lambda n=1: None
        tid = self._p.add_task(name, total=total)
        return lambda n=1: self._p.advance(tid, n)


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


# --- image-text ------------------------------------------------------------------------------


def _image_text_sample(rng: np.random.Generator, size: int) -> tuple[bytes, str, dict]:
    cls = CLASSES[int(rng.integers(16))]
    colour = _CLASS[cls]["colour"] if rng.random() < 0.7 else list(COLOURS)[int(rng.integers(16))]
    size_name, radius = _size(rng)
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    scene = Scene(background=bg, objects=[_canonical(cls, rng, radius, colour=colour)], seed=_seed(rng))
    text = caption(cls, colour, size_name, bg, template=int(rng.integers(len(_TEMPLATES))))
    meta = {"class": cls, "colour": colour, "size": size_name, "background": bg}
    return _jpg_bytes(render(scene, size)), text, meta


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _write_shard(tar_path: Path, shard: int, samples: list[tuple[bytes, str, dict]], size: int,
                 split: str) -> list[str]:
    import hashlib

    import pandas as pd

    tar_path.parent.mkdir(parents=True, exist_ok=True)
    keys, records = [], []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (jpg, text, meta) in enumerate(samples):
            key = f"{shard * 10000 + i:09d}"
            sha = hashlib.sha256(jpg).hexdigest()
            rec = {"url": f"toyworld://image_text/{split}/{key}.jpg", "caption": text, "key": key,
                   "status": "success", "error_message": None, "width": size, "height": size,
                   "original_width": size, "original_height": size, "exif": None, "sha256": sha}
            js = dict(rec, toyworld=meta)
            _tar_add(tar, f"{key}.jpg", jpg)
            _tar_add(tar, f"{key}.txt", text.encode("utf-8"))
            _tar_add(tar, f"{key}.json", json.dumps(js, sort_keys=True).encode("utf-8"))
            keys.append(key)
            records.append(rec)
    stem = tar_path.with_suffix("")
    stats = {"count": len(samples), "successes": len(samples), "failed_to_download": 0,
             "failed_to_resize": 0, "duration": 0.0, "bytes_downloaded": 0, "start_time": 0.0,
             "end_time": 0.0, "status_dict": {"success": len(samples)}}
    Path(f"{stem}_stats.json").write_text(json.dumps(stats, indent=4, sort_keys=True) + "\n")
    pd.DataFrame.from_records(records).to_parquet(f"{stem}.parquet", index=False)
    return keys


def _write_image_text(root: Path, seed: int, cfg: dict, size: int, progress: _Progress) -> dict:
    rng = _rng(seed, "image_text")
    out = root / "image_text"
    n_train, n_shards, n_val = cfg["train"], cfg["shards"], cfg["val"]
    advance = progress.task("image_text", n_train + n_val)
    train = []
    for _ in range(n_train):
        train.append(_image_text_sample(rng, size))
        advance()
    val = []
    for _ in range(n_val):
        val.append(_image_text_sample(rng, size))
        advance()
    per = math.ceil(n_train / n_shards)
    pairs, hf_images, hf_captions = [], [], []
    for s in range(n_shards):
        chunk = train[s * per:(s + 1) * per]
        keys = _write_shard(out / "shards" / f"{s:05d}.tar", s, chunk, size, "train")
        for key, (jpg, text, _) in zip(keys, chunk):
            rel = f"images/train/{key}.jpg"
            _save(out / rel, jpg)
            pairs.append([rel, text])
            hf_images.append({"bytes": jpg, "path": f"{key}.jpg"})
            hf_captions.append(text)
    _write_csv(out / "pairs.csv", ["filepath", "title"], pairs, delimiter="\t")
    val_keys = _write_shard(out / "val_shards" / "00000.tar", 0, val, size, "val")
    vpairs = []
    for key, (jpg, text, _) in zip(val_keys, val):
        rel = f"images/val/{key}.jpg"
        _save(out / rel, jpg)
        vpairs.append([rel, text])
    _write_csv(out / "val_pairs.csv", ["filepath", "title"], vpairs, delimiter="\t")
    _write_hf_parquet(out / "hf" / "train.parquet", hf_images, hf_captions)
    return {"train": n_train, "val": n_val, "shards": n_shards, "per_shard": per}


def _write_hf_parquet(path: Path, images: list[dict], captions: list[str]) -> None:
    from datasets import Dataset
    from datasets import Image as HFImage
    from datasets.utils import logging as hf_logging

    path.parent.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        ds = Dataset.from_dict({"image": images, "caption": captions}).cast_column("image", HFImage())
        ds.to_parquet(str(path))
    finally:
        if bars:
            hf_logging.enable_progress_bar()


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


def _lum(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float32) / 255) @ np.array([0.299, 0.587, 0.114], np.float32)


def _colourfulness(img: np.ndarray) -> float:
    f = img.astype(np.float32)
    rg = f[..., 0] - f[..., 1]
    yb = 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


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
    return {"images": len(names), "same_class": sum(parse_cue_conflict_name(n)[0] == parse_cue_conflict_name(n)[1]
                                                     for _, n in names)}


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


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

PATHS = {
    "nights": "nights",
    "image_text_shards": "image_text/shards",
    "image_text_csv": "image_text/pairs.csv",
    "image_text_hf": "image_text/hf/train.parquet",
    "image_text_val_shards": "image_text/val_shards/00000.tar",
    "image_text_val_csv": "image_text/val_pairs.csv",
    "koniq": "iqa/koniq", "livec": "iqa/livec", "spaq": "iqa/spaq",
    "tid2013": "iqa/tid2013", "kadid10k": "iqa/kadid10k",
    "cue_conflict": "cue_conflict", "classification": "classification",
    "lamem": "lamem", "emoset": "emoset",
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
