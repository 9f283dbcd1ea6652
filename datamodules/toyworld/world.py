"""The world's constants: classes, colours, backgrounds, distortions, rule parameters, scales."""
from __future__ import annotations

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


JPEG_QUALITY = 95
