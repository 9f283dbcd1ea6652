"""The one rule for turning a decoded image into 8-bit RGB, whatever its mode.

PIL's ``convert("RGB")`` clips a 16- or 32-bit grey image (``I;16``, ``I``: scientific and
medical PNGs, some IQA sets' TIFFs) at 255 instead of scaling it, so such an image arrives almost
white: a silent wrong number. Here integer images are scaled to 8 bits by their bit depth first;
every other mode (grey ``L``, palette ``P``, ``CMYK``, ``RGBA``, ``LA``, ``YCbCr``) is PIL's own
conversion (a palette image with transparency goes through RGBA, as PIL asks).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

#: The file suffixes read as images where a folder is scanned: torchvision's ImageFolder list.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(IMG_EXTENSIONS)

#: Integer modes and the largest value their pixels can hold.
_DEEP = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB (decoding it fully: a truncated file fails here)."""
    if image.mode in _DEEP:
        values = np.asarray(image, dtype=np.float64)
        # a 32-bit "I" image holding 16-bit data (what PIL makes of most 16-bit PNGs) scales like
        # one; a genuinely wider one by its own maximum
        top = max(_DEEP[image.mode], float(values.max(initial=0)))
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")
