"""Object shapes, colours and procedural background textures; train and test use disjoint sets.

- shapes: train circle / square / hexagon, test triangle / pentagon / star. Every shape is centrally
  symmetric in mass (regular polygon or 5-point star of uniform density), so its centre of mass is its centre.
  ``size`` is the circumscribed diameter (px). Polygons rest on a side: flat on the floor, flat on a ramp.
- colours (RGB): train red / blue / green, test orange / purple / black.
- backgrounds: train flat / gradient / wood, test noise / checker / marble. Textures are static, light and of
  small amplitude (a few grey levels) so that optical flow has texture to lock onto; their random details
  come from the render seed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.errors import ConfigError

TRAIN_SHAPES = ("circle", "square", "hexagon")
TEST_SHAPES = ("triangle", "pentagon", "star")
TRAIN_COLORS = {"red": (215, 40, 40), "blue": (40, 80, 215), "green": (35, 160, 60)}
TEST_COLORS = {"orange": (240, 130, 20), "purple": (130, 50, 170), "black": (25, 25, 25)}
TRAIN_BACKGROUNDS = ("flat", "gradient", "wood")
TEST_BACKGROUNDS = ("noise", "checker", "marble")

_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "star": 5}
SHAPE_NOUNS = {
    "circle": "ball",
    "square": "box",
    "hexagon": "hexagonal block",
    "triangle": "triangular block",
    "pentagon": "pentagonal block",
    "star": "star-shaped block",
}
BACKGROUND_WORDS = {
    "flat": "plain grey",
    "gradient": "sky-blue gradient",
    "wood": "wooden",
    "noise": "speckled stone",
    "checker": "tiled",
    "marble": "marble",
}
#: pentagram inner/outer vertex radius ratio
_STAR_INNER = math.sin(math.radians(18)) / math.sin(math.radians(126))


def color_name(rgb: tuple[int, int, int]) -> str:
    """Name of a palette colour, or 'coloured' for a colour outside the palettes."""
    for name, value in {**TRAIN_COLORS, **TEST_COLORS}.items():
        if tuple(rgb) == value:
            return name
    return "coloured"


def _check_shape(shape: str) -> None:
    if shape != "circle" and shape not in _SIDES:
        raise ConfigError(f"shape={shape!r}: expected one of {TRAIN_SHAPES + TEST_SHAPES}")


def contact_offset(shape: str, size: float) -> float:
    """Distance (px) from the centre to the side the object rests on (the radius for a circle)."""
    _check_shape(shape)
    radius = size / 2.0
    return radius if shape == "circle" else radius * math.cos(math.pi / _SIDES[shape])


def outline(shape: str, center: np.ndarray, size: float, down: np.ndarray) -> np.ndarray | None:
    """(N, 2) polygon vertices (x, y) px of a shape resting on its side facing the unit vector ``down``.

    Returns None for a circle (drawn as a circle).
    """
    _check_shape(shape)
    if shape == "circle":
        return None
    n = _SIDES[shape]
    base = math.atan2(down[1], down[0])  # direction of the resting side's midpoint from the centre
    angles = base + math.pi / n + 2 * math.pi * np.arange(n) / n
    radii = np.full(n, size / 2.0)
    if shape == "star":
        angles = np.stack([angles, angles + math.pi / n], axis=1).ravel()
        radii = np.stack([radii, radii * _STAR_INNER], axis=1).ravel()
    return np.asarray(center) + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W) smooth value noise in about [-1, 1] with ``cells`` random values across the shorter side."""
    h, w = shape
    grid = rng.uniform(-1, 1, size=(max(2, round(cells * h / min(h, w))), max(2, round(cells * w / min(h, w)))))
    return cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _grain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return cv2.GaussianBlur(rng.normal(0, 1, size=shape).astype(np.float32), (0, 0), 0.7)


def background(name: str, resolution: tuple[int, int], seed: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB static texture ``name``; details (tint, phase, noise) depend on ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = resolution
    scale = float(min(h, w))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / scale
    tint = rng.uniform(-8, 8, size=3)
    if name == "flat":
        base, shade = np.array([200.0, 200.0, 196.0]), np.zeros((h, w), np.float32)
    elif name == "gradient":
        base, shade = np.array([175.0, 205.0, 235.0]), 25.0 * (y * scale / h) + 2.0 * _grain(rng, (h, w))
    elif name == "wood":
        warp = 0.08 * _smooth_noise(rng, (h, w), 3)
        base = np.array([190.0, 150.0, 105.0])
        shade = 10.0 * np.sin(2 * math.pi * (y + warp) * 9.0 + rng.uniform(0, 2 * math.pi)) + 3.0 * _grain(rng, (h, w))
    elif name == "noise":
        base = np.array([175.0, 172.0, 165.0])
        shade = 12.0 * _smooth_noise(rng, (h, w), 8) + 5.0 * _grain(rng, (h, w))
    elif name == "checker":
        cells = np.floor(x * 8 + rng.uniform(0, 1)) + np.floor(y * 8 + rng.uniform(0, 1))
        base, shade = np.array([200.0, 190.0, 175.0]), 10.0 * (2 * (cells % 2) - 1) + 2.0 * _grain(rng, (h, w))
    elif name == "marble":
        turbulence = 1.5 * _smooth_noise(rng, (h, w), 4)
        base = np.array([220.0, 218.0, 212.0])
        shade = 12.0 * np.sin(2 * math.pi * (x + y) * 3.0 + turbulence) + 2.0 * _grain(rng, (h, w))
    else:
        raise ConfigError(f"background={name!r}: expected one of {TRAIN_BACKGROUNDS + TEST_BACKGROUNDS}")
    image = base + tint + shade[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
