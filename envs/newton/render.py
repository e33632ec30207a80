"""OpenCV renderer: static textured scene (floor, ramp) plus one moving object, anti-aliased, sub-pixel exact.

Every shape is drawn with ``cv2.LINE_AA`` at 1/256 px precision (``shift=8``) on an 8x finer grid and box-averaged
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
SUPERSAMPLE = 8
_ONE = float(1 << SHIFT)
#: growth of OpenCV's anti-aliased fill, frame px (measured: 0.70 / 0.61 px on the fine grid)
_GROWTH_POLYGON, _GROWTH_CIRCLE = 0.70 / SUPERSAMPLE, 0.61 / SUPERSAMPLE
FLOOR_RGB = np.array([95.0, 80.0, 65.0])
RAMP_RGB = np.array([125.0, 110.0, 95.0])
_SCENE_ALPHA = 0.85


def _fixed(points: np.ndarray) -> np.ndarray:
    """(N, 2) float px on the fine grid -> int32 fixed-point coordinates for OpenCV drawing with ``shift=SHIFT``."""
    return np.rint(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def coverage(resolution: tuple[int, int], *, polygon: np.ndarray | None = None,
             circle: tuple[np.ndarray, float] | None = None, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(h, w) float32 area coverage in [0, 1] of a polygon (N, 2) px or a circle (centre (x, y) px, radius px).

    The (h, w) = ``resolution`` pixels cover frame pixels x0..x0+w-1, y0..y0+h-1 with ``origin = (x0, y0)``.
    """
    h, w = resolution

    def to_fine(points: np.ndarray) -> np.ndarray:  # frame px -> fine-grid px, both with pixel centres at integers
        return (np.asarray(points, dtype=np.float64) - origin + 0.5) * SUPERSAMPLE - 0.5

    canvas = np.zeros((h * SUPERSAMPLE, w * SUPERSAMPLE), np.uint8)
    if polygon is not None:
        cv2.fillPoly(canvas, [_fixed(to_fine(polygon))], 255, cv2.LINE_AA, SHIFT)
    else:
        center, radius = circle
        cx, cy = _fixed(to_fine(np.asarray(center)[None]))[0]
        cv2.circle(canvas, (int(cx), int(cy)), int(round(radius * SUPERSAMPLE * _ONE)), 255, -1, cv2.LINE_AA, SHIFT)
    return cv2.resize(canvas.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)


def object_patch(spec: SceneSpec, center: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Coverage (h, w) of the object centred at ``center`` (x, y) px on the frame region ``(rows, cols)``.

    The region is the object's bounding box (+2 px) clipped to the frame; it may be empty off-frame. OpenCV's
    anti-aliased fill grows shapes by ~0.7 (polygons) / 0.6 (circles) fine-grid px; the object is drawn
    smaller by that much so that the coverage area matches the true shape.
    """
    height, width = spec.resolution
    reach = spec.size / 2 + 2
    x0, y0 = max(0, int(np.floor(center[0] - reach))), max(0, int(np.floor(center[1] - reach)))
    x1, y1 = min(width, int(np.ceil(center[0] + reach)) + 1), min(height, int(np.ceil(center[1] + reach)) + 1)
    region = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    shape = (max(0, y1 - y0), max(0, x1 - x0))
    if 0 in shape:
        return np.zeros(shape, np.float32), region
    down = -slope_axes(spec)[1] if spec.primitive in RAMP_PRIMITIVES else np.array([0.0, 1.0])
    inset = contact_offset(spec.shape, spec.size) / (spec.size / 2)  # inradius / circumradius
    if spec.shape == "circle":
        return coverage(shape, circle=(center, spec.size / 2 - _GROWTH_CIRCLE), origin=(x0, y0)), region
    vertices = outline(spec.shape, center, spec.size - 2 * _GROWTH_POLYGON / inset, down)
    return coverage(shape, polygon=vertices, origin=(x0, y0)), region


def object_coverage(spec: SceneSpec, center: np.ndarray) -> np.ndarray:
    """(H, W) float32 anti-aliased coverage in [0, 1] of the object centred at ``center`` (x, y) px."""
    alpha = np.zeros(spec.resolution, np.float32)
    patch, region = object_patch(spec, np.asarray(center, dtype=np.float64))
    alpha[region] = patch
    return alpha


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


def _shaded_color(spec: SceneSpec, center: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
    """(h, w, 3) object colour on ``region`` with a highlight fixed to the object (bright upper left)."""
    radius = spec.size / 2
    spot = np.asarray(center) - 0.35 * radius
    ys, xs = np.ogrid[region[0], region[1]]
    factor = 1.15 - 0.3 * np.clip(np.hypot(xs - spot[0], ys - spot[1]) / radius, 0.0, 1.5)
    return np.asarray(spec.color, np.float32) * factor[..., None].astype(np.float32)


def _draw(spec: SceneSpec, positions: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Video (T, H, W, 3) uint8 and masks (T, H, W) bool of the object following ``positions`` (T, 2)."""
    scene = scene_background(spec, seed)
    video = np.repeat(np.clip(np.rint(scene), 0, 255).astype(np.uint8)[None], len(positions), axis=0)
    masks = np.zeros((len(positions), *spec.resolution), bool)
    for k, center in enumerate(positions):
        alpha, region = object_patch(spec, center)
        if alpha.size == 0:
            continue
        blend = scene[region] * (1 - alpha[..., None]) + _shaded_color(spec, center, region) * alpha[..., None]
        video[k][region] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        masks[k][region] = alpha >= 0.5
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
