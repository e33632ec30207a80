"""Parameter ranges of the splits and the scene sampler.

Ranges are in resolution- and length-free units so that every resolution and frame count gets the same
motion relative to the frame: lengths in units of L = min(H, W) px, times in units of D = T - 1 frames.
So gravity g * D^2 / L, height / L, speed * D / L, size / L; angles in degrees, friction unitless.
Gravity ranges differ per primitive: each primitive is framed (px per metre, like a camera zoom) so that its
motion spans a good part of the frame (e.g. a slow friction slide needs a larger g in px/frame^2 than a drop).

- train / test: the same physics ranges (:data:`TRAIN_RANGES`); disjoint assets (:mod:`envs.newton.assets`):
  train = TRAIN_SHAPES/COLORS/BACKGROUNDS, test = TEST_*.
- ood-height / ood-speed / ood-friction: one range replaced per primitive by one outside the train range
  (:data:`OOD_RANGES`), everything else as train, with TRAIN assets (only the physics is shifted).
  A primitive without that parameter (free fall has no speed, throws no friction) is not in the split.

Sampling draws all parameters uniformly from their ranges, rejects scenes that leave the frame, go below the
floor / off the ramp, move less than MIN_TRAVEL * L or (ramp_up) stop late, and then places the start x
uniformly where the whole path stays inside the frame (:func:`acceptance_rate` measures the rejection).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from envs.newton.assets import (
    TEST_BACKGROUNDS,
    TEST_COLORS,
    TEST_SHAPES,
    TRAIN_BACKGROUNDS,
    TRAIN_COLORS,
    TRAIN_SHAPES,
    contact_offset,
)
from envs.newton.physics import slide_phases, slope_axes, trajectory
from envs.newton.spec import PRIMITIVES, RAMP_PRIMITIVES, SPLITS, SceneSpec, floor_y
from pipeline.errors import ConfigError

Range = tuple[float, float]
MARGIN_PX = 1.0
MIN_TRAVEL = 0.2
#: ramp_up must stop (and reverse or stay) within this fraction of the clip
MAX_STOP_FRACTION = 0.85
MAX_TRIES = 2000


@dataclass(frozen=True)
class Ranges:
    """Uniform sampling ranges (normalised units, see the module doc) of one primitive."""

    gravity: Range
    height: Range
    speed: Range = (0.0, 0.0)
    angle_deg: Range = (0.0, 0.0)
    ramp_angle_deg: Range = (0.0, 0.0)
    friction: Range = (0.0, 0.0)
    size: Range = (0.12, 0.18)


TRAIN_RANGES = {
    "free_fall": Ranges(gravity=(0.6, 0.9), height=(0.55, 0.70)),
    "horizontal_throw": Ranges(gravity=(0.5, 0.8), height=(0.55, 0.70), speed=(0.35, 0.55)),
    "parabolic_throw": Ranges(gravity=(1.2, 1.8), height=(0.25, 0.50), speed=(0.7, 1.0), angle_deg=(40.0, 65.0)),
    "ramp_down": Ranges(gravity=(1.8, 2.6), height=(0.45, 0.70), speed=(0.0, 0.1), ramp_angle_deg=(25.0, 40.0),
                        friction=(0.05, 0.3)),
    "ramp_up": Ranges(gravity=(2.4, 3.2), height=(0.10, 0.30), speed=(0.9, 1.2), ramp_angle_deg=(25.0, 40.0),
                      friction=(0.05, 0.3)),
}
#: split -> primitive -> the replaced field and its range
OOD_RANGES: dict[str, dict[str, tuple[str, Range]]] = {
    "ood-height": {
        "free_fall": ("height", (0.74, 0.84)),
        "horizontal_throw": ("height", (0.74, 0.84)),
        "parabolic_throw": ("height", (0.55, 0.65)),
        "ramp_down": ("height", (0.74, 0.84)),
        "ramp_up": ("height", (0.33, 0.45)),
    },
    "ood-speed": {
        "horizontal_throw": ("speed", (0.6, 0.75)),
        "parabolic_throw": ("speed", (1.1, 1.3)),
        "ramp_down": ("speed", (0.2, 0.35)),
        "ramp_up": ("speed", (1.3, 1.5)),
    },
    "ood-friction": {
        "ramp_down": ("friction", (0.4, 0.55)),
        "ramp_up": ("friction", (0.4, 0.6)),
    },
}
ASSETS = {
    "train": (TRAIN_SHAPES, TRAIN_COLORS, TRAIN_BACKGROUNDS),
    "test": (TEST_SHAPES, TEST_COLORS, TEST_BACKGROUNDS),
}


def split_primitives(split: str) -> tuple[str, ...]:
    """Primitives that a split contains."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {SPLITS}")
    return tuple(OOD_RANGES[split]) if split in OOD_RANGES else PRIMITIVES


def split_ranges(split: str, primitive: str) -> Ranges:
    """Physics ranges of ``primitive`` in ``split`` (normalised units)."""
    if primitive not in split_primitives(split):
        raise ConfigError(f"primitive={primitive!r} is not in split {split!r}; it has {split_primitives(split)}")
    ranges = TRAIN_RANGES[primitive]
    if split in OOD_RANGES:
        name, value = OOD_RANGES[split][primitive]
        ranges = replace(ranges, **{name: value})
    return ranges


def _draw_spec(split: str, primitive: str, rng: np.random.Generator, resolution: tuple[int, int],
               num_frames: int) -> SceneSpec:
    ranges = split_ranges(split, primitive)
    shapes, colors, backgrounds = ASSETS["test" if split == "test" else "train"]
    length, duration = float(min(resolution)), float(num_frames - 1)

    def draw(r: Range) -> float:
        return float(rng.uniform(*r))

    return SceneSpec(
        primitive=primitive, gravity=draw(ranges.gravity) * length / duration**2, height=draw(ranges.height) * length,
        speed=draw(ranges.speed) * length / duration, angle_deg=draw(ranges.angle_deg),
        ramp_angle_deg=draw(ranges.ramp_angle_deg), friction=draw(ranges.friction),
        shape=str(rng.choice(shapes)), size=draw(ranges.size) * length,
        color=list(colors.values())[int(rng.integers(len(colors)))], background=str(rng.choice(backgrounds)),
        resolution=tuple(resolution), num_frames=num_frames, start_x=0.0, direction=int(rng.choice([-1, 1])),
    )


def _lowest_point(spec: SceneSpec, positions: np.ndarray) -> np.ndarray:
    """(T,) y of the point that must stay above the floor: the contact point on a ramp, the bottom otherwise."""
    if spec.primitive in RAMP_PRIMITIVES:
        return positions[:, 1] - contact_offset(spec.shape, spec.size) * slope_axes(spec)[1][1]
    return positions[:, 1] + spec.size / 2


def x_range(spec: SceneSpec) -> tuple[float, float] | None:
    """Feasible start-x interval (px) that keeps the whole path in frame (with ``start_x=0`` in ``spec``), or None."""
    positions, _, _ = trajectory(replace(spec, start_x=0.0))
    radius = spec.size / 2
    low = radius + MARGIN_PX - positions[:, 0].min()
    high = spec.resolution[1] - 1 - radius - MARGIN_PX - positions[:, 0].max()
    return (low, high) if low <= high else None


def _stops_in_time(spec: SceneSpec) -> bool:
    if spec.primitive != "ramp_up":
        return True
    stop = slide_phases(-spec.speed, spec.gravity, spec.ramp_angle_deg, spec.friction)[1][0]
    return stop <= MAX_STOP_FRACTION * (spec.num_frames - 1)


def is_valid(spec: SceneSpec) -> bool:
    """True if the object stays in frame, above the floor, moves at least MIN_TRAVEL * min(H, W) and
    (ramp_up) stops within MAX_STOP_FRACTION of the clip."""
    positions, _, _ = trajectory(spec)
    radius = spec.size / 2
    travel = np.linalg.norm(positions - positions[0], axis=1).max()
    inside_x = positions[:, 0].min() - radius >= MARGIN_PX - 1e-9 and (
        positions[:, 0].max() + radius <= spec.resolution[1] - 1 - MARGIN_PX + 1e-9
    )
    return bool(
        inside_x
        and positions[:, 1].min() - radius >= MARGIN_PX
        and _lowest_point(spec, positions).max() <= floor_y(spec.resolution) - MARGIN_PX
        and travel >= MIN_TRAVEL * min(spec.resolution)
        and _stops_in_time(spec)
    )


def sample_spec(split: str, rng: np.random.Generator, *, primitive: str | None = None,
                resolution: tuple[int, int] = (64, 64), num_frames: int = 16) -> SceneSpec:
    """Draw a valid scene of ``split`` (a random primitive of the split when ``primitive`` is None)."""
    choices = split_primitives(split)
    primitive = str(rng.choice(choices)) if primitive is None else primitive
    for _ in range(MAX_TRIES):
        spec = _draw_spec(split, primitive, rng, resolution, num_frames)
        bounds = x_range(spec)
        if bounds is None:
            continue
        spec = replace(spec, start_x=float(rng.uniform(*bounds)))
        if is_valid(spec):
            return spec
    raise ConfigError(
        f"no valid {primitive} scene for split {split!r} at resolution={resolution}, num_frames={num_frames} "
        f"after {MAX_TRIES} draws; use a less elongated resolution"
    )


def acceptance_rate(split: str, primitive: str, rng: np.random.Generator, *, draws: int = 200,
                    resolution: tuple[int, int] = (64, 64), num_frames: int = 16) -> float:
    """Fraction of raw draws that are valid (a diagnostic of how much rejection reshapes the ranges)."""
    ok = 0
    for _ in range(draws):
        spec = _draw_spec(split, primitive, rng, resolution, num_frames)
        bounds = x_range(spec)
        ok += bounds is not None and is_valid(replace(spec, start_x=0.5 * (bounds[0] + bounds[1])))
    return ok / draws

