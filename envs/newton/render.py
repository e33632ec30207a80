"""OpenCV renderer: static textured scene (floor, ramp) plus one moving object, anti-aliased, sub-pixel exact.

Every shape is drawn with ``cv2.LINE_AA`` at 1/256 px precision (``shift=8``) on a 4x finer grid and box-averaged
(``cv2.INTER_AREA``) into a coverage map alpha in [0, 1];
the frame is ``background * (1 - alpha) + shaded object colour * alpha`` and the mask is ``alpha >= 0.5``, so
mask and pixels come from the same drawing. The object carries a soft highlight that moves rigidly with it
(texture for optical flow). The camera is static; the scene depends only on (spec, seed).
"""

from __future__ import annotations

import cv2
import numpy as np

from envs.newton.assets import background, contact_offset, outline
from envs.newton.physics import slope_axes, trajectory
from envs.newton.prompts import describe
from envs.newton.spec import RAMP_PRIMITIVES, Clip, SceneSpec, floor_y
from pipeline.errors import InputError

SHIFT = 8
#: coverage is drawn on a SUPERSAMPLE x finer grid and box-averaged: OpenCV's anti-aliased polygon fill
#: snaps horizontal edges to whole rows, which would bias vertical sub-pixel positions by up to ~0.4 px.
SUPERSAMPLE = 4
_ONE = float(1 << SHIFT)
FLOOR_RGB = np.array([95.0, 80.0, 65.0])
RAMP_RGB = np.array([125.0, 110.0, 95.0])
_SCENE_ALPHA = 0.85


def _fixed(points: np.ndarray) -> np.ndarray:
    """(N, 2) float px on the fine grid -> int32 fixed-point coordinates for OpenCV drawing with ``shift=SHIFT``."""
    return np.rint(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def _to_fine(points: np.ndarray) -> np.ndarray:
    """Frame px (pixel centres at integers) -> fine-grid px with the same convention."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * SUPERSAMPLE - 0.5


def coverage(resolution: tuple[int, int], *, polygon: np.ndarray | None = None,
             circle: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """(H, W) float32 area coverage in [0, 1] of a polygon (N, 2) px or a circle (centre (x, y) px, radius px)."""
    h, w = resolution
    canvas = np.zeros((h * SUPERSAMPLE, w * SUPERSAMPLE), np.uint8)
    if polygon is not None:
        cv2.fillPoly(canvas, [_fixed(_to_fine(polygon))], 255, cv2.LINE_AA, SHIFT)
    else:
        center, radius = circle
        cx, cy = _fixed(_to_fine(np.asarray(center)[None]))[0]
        cv2.circle(canvas, (int(cx), int(cy)), int(round(radius * SUPERSAMPLE * _ONE)), 255, -1, cv2.LINE_AA, SHIFT)
    fine = canvas.astype(np.float32) / 255.0
    return cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)


def object_coverage(spec: SceneSpec, center: np.ndarray) -> np.ndarray:
    """(H, W) float32 anti-aliased coverage in [0, 1] of the object centred at ``center`` (x, y) px."""
    down = -slope_axes(spec)[1] if spec.primitive in RAMP_PRIMITIVES else np.array([0.0, 1.0])
    vertices = outline(spec.shape, center, spec.size, down)
    if vertices is not None:
        return coverage(spec.resolution, polygon=vertices)
    return coverage(spec.resolution, circle=(center, spec.size / 2))


def _ramp_polygon(spec: SceneSpec) -> np.ndarray:
    """(3, 2) wedge under the ramp surface: floor contact, a point far uphill, the floor below that point."""
    downhill, normal = slope_axes(spec)
    surface = np.array(spec.start) - contact_offset(spec.shape, spec.size) * normal
    to_floor = (floor_y(spec.resolution) - surface[1]) / downhill[1]
    bottom = surface + to_floor * downhill
    top = bottom - 4.0 * sum(spec.resolution) * downhill
    return np.array([bottom, top, [top[0], bottom[1]]])


def scene_background(spec: SceneSpec, seed: int) -> np.ndarray:
    """(H, W, 3) float32 RGB static scene: texture, floor band and (ramp primitives) the ramp."""
    h, w = spec.resolution
    image = background(spec.background, spec.resolution, seed).astype(np.float32)
    y_floor = floor_y(spec.resolution)
    layers = [(np.array([[-2, y_floor], [w + 2, y_floor], [w + 2, h + 2], [-2, h + 2]]), FLOOR_RGB)]
    if spec.primitive in RAMP_PRIMITIVES:
        layers.append((_ramp_polygon(spec), RAMP_RGB))
    for polygon, rgb in layers:
        alpha = _SCENE_ALPHA * coverage(spec.resolution, polygon=polygon)[..., None]
        image = image * (1 - alpha) + rgb * alpha
    return image


def _shaded_color(spec: SceneSpec, center: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W, 3) object colour with a highlight fixed to the object (brighter upper-left, darker lower-right)."""
    radius = spec.size / 2
    spot = np.asarray(center) - 0.35 * radius
    dist = np.hypot(grid[0] - spot[0], grid[1] - spot[1]) / radius
    factor = 1.15 - 0.3 * np.clip(dist, 0.0, 1.5)
    return np.asarray(spec.color, np.float32) * factor[..., None]


def _draw(spec: SceneSpec, positions: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Video (T, H, W, 3) uint8 and masks (T, H, W) bool of the object following ``positions`` (T, 2)."""
    scene = scene_background(spec, seed)
    grid = np.meshgrid(np.arange(spec.resolution[1], dtype=np.float32), np.arange(spec.resolution[0], dtype=np.float32))
    video = np.empty((len(positions), *spec.resolution, 3), np.uint8)
    masks = np.empty((len(positions), *spec.resolution), bool)
    for k, center in enumerate(positions):
        alpha = object_coverage(spec, center)
        frame = scene * (1 - alpha[..., None]) + _shaded_color(spec, center, grid) * alpha[..., None]
        video[k] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        masks[k] = alpha >= 0.5
    return video, masks


def _clip(spec: SceneSpec, positions: np.ndarray, velocities: np.ndarray, accelerations: np.ndarray,
          seed: int) -> Clip:
    video, masks = _draw(spec, positions, seed)
    return Clip(video=video, masks=masks, centroids=positions, velocities=velocities, accelerations=accelerations,
                prompt=describe(spec), context=video[: spec.context_frames].copy(), spec=spec)


def render_clip(spec: SceneSpec, *, seed: int = 0) -> Clip:
    """Simulate (closed form, :func:`trajectory`) and render ``spec``; velocities/accelerations are analytic."""
    positions, velocities, accelerations = trajectory(spec)
    return _clip(spec, positions, velocities, accelerations, seed)


def render_trajectory(spec: SceneSpec, positions: np.ndarray, *, seed: int = 0) -> Clip:
    """Render an arbitrary centroid path (T, 2) px with the object, scene and seed of ``spec``.

    Velocities/accelerations are second-order finite differences of ``positions``
    (``np.gradient(..., edge_order=2)`` applied once / twice: exact for quadratic paths).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (spec.num_frames, 2) or not np.isfinite(positions).all():
        raise InputError(f"positions: expected finite (T={spec.num_frames}, 2) px, got shape {positions.shape}")
    velocities = np.gradient(positions, axis=0, edge_order=2)
    accelerations = np.gradient(velocities, axis=0, edge_order=2)
    return _clip(spec, positions.copy(), velocities, accelerations, seed)
