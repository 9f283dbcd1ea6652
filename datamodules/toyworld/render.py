"""Rendering: scenes of objects with a shape, texture and colour on a background."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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
