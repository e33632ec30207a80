"""Scene description and rendered clip types of the NewtonBench-style scenes.

Units and conventions (used by every module of :mod:`envs.newton`):

- Lengths in pixels (px), time in frames; frame ``k`` is at time ``t = k`` (so velocities are px/frame and
  accelerations px/frame^2). ``fps`` only matters when a clip is written to a video file.
- Image coordinates: ``x`` to the right, ``y`` DOWN; pixel (row i, column j) has its centre at (x=j, y=i)
  (OpenCV's convention). Gravity is a positive number that accelerates objects towards +y.
- A horizontal floor line at ``y = floor_y(resolution)``; ``height`` is the height of the object's centre above it.
- Colours are RGB tuples of 0..255 ints (the renderer converts nothing: the video is RGB).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from pipeline.errors import ConfigError

PRIMITIVES = ("free_fall", "horizontal_throw", "parabolic_throw", "ramp_down", "ramp_up")
SPLITS = ("train", "test", "ood-height", "ood-speed", "ood-friction")
RAMP_PRIMITIVES = ("ramp_down", "ramp_up")

#: The floor line sits this fraction of the frame height above the bottom edge.
FLOOR_FRACTION = 0.08


def floor_y(resolution: tuple[int, int]) -> float:
    """y coordinate (px) of the floor line for a (H, W) frame."""
    return float(resolution[0]) * (1.0 - FLOOR_FRACTION)


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines a clip (physics + appearance); rendering noise comes from a separate seed.

    Fields (px and frames, image y axis down):
        primitive: one of :data:`PRIMITIVES`.
        gravity: g > 0, px/frame^2 along +y.
        height: initial height of the object's centre above the floor line, px.
        speed: initial speed, px/frame (0 for free fall; along the slope for ramps: down for ramp_down,
            up for ramp_up).
        angle_deg: throw angle above the horizontal, degrees (parabolic_throw; 0 for the others).
        ramp_angle_deg: slope of the ramp, degrees (ramp primitives; 0 for the others).
        friction: kinetic friction coefficient mu_k between object and ramp (ramp primitives; 0 otherwise).
        shape: object shape name (see :mod:`envs.newton.assets`).
        size: circumscribed diameter of the object, px.
        color: object colour, RGB 0..255.
        background: procedural background texture name (see :mod:`envs.newton.assets`).
        resolution: (H, W) of the frames, px.
        num_frames: T, number of frames.
        fps: frame rate of written video files (frames per second).
        context_frames: number of first frames that condition generation.
        start_x: initial x of the object's centre, px (None: the frame's horizontal centre).
        direction: +1 if the initial/downhill motion goes to the right (+x), -1 to the left.
    """

    primitive: str
    gravity: float
    height: float
    speed: float
    angle_deg: float
    ramp_angle_deg: float
    friction: float
    shape: str
    size: float
    color: tuple[int, int, int]
    background: str
    resolution: tuple[int, int]
    num_frames: int = 16
    fps: float = 8.0
    context_frames: int = 4
    start_x: float | None = None
    direction: int = 1

    def __post_init__(self) -> None:
        if self.primitive not in PRIMITIVES:
            raise ConfigError(f"primitive={self.primitive!r}: expected one of {PRIMITIVES}")
        if self.direction not in (1, -1):
            raise ConfigError(f"direction={self.direction!r}: expected +1 or -1")
        if self.num_frames < 3 or not 0 <= self.context_frames <= self.num_frames:
            raise ConfigError(
                f"num_frames={self.num_frames}, context_frames={self.context_frames}: "
                "expected num_frames >= 3 and 0 <= context_frames <= num_frames"
            )
        if len(self.resolution) != 2 or min(self.resolution) < 8:
            raise ConfigError(f"resolution={self.resolution!r}: expected (H, W) with H, W >= 8")
        if self.gravity <= 0 or self.size <= 0:
            raise ConfigError(f"gravity={self.gravity}, size={self.size}: both must be > 0")

    @property
    def start(self) -> tuple[float, float]:
        """Initial centre (x, y) of the object, px."""
        x = self.resolution[1] / 2.0 if self.start_x is None else self.start_x
        return float(x), floor_y(self.resolution) - self.height

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists); inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        """Build a spec from :meth:`to_dict` output; unknown or missing keys raise ConfigError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"scene spec: unknown keys {unknown}; expected a subset of {sorted(names)}")
        try:
            kwargs = dict(data)
            kwargs["color"] = tuple(int(c) for c in data["color"])
            kwargs["resolution"] = tuple(int(r) for r in data["resolution"])
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"scene spec {data!r}: {exc}") from exc


@dataclass
class Clip:
    """A rendered scene. T frames of H x W pixels.

    Attributes:
        video: (T, H, W, 3) uint8 RGB.
        masks: (T, H, W) bool object masks (anti-aliased coverage >= 1/2).
        centroids: (T, 2) float (x, y) px, true centre of mass of the object.
        velocities: (T, 2) px/frame. From :func:`render_clip`: the analytic derivative at the frame times; from
            :func:`render_trajectory`: second-order finite differences of the given path (``np.gradient``).
        accelerations: (T, 2) px/frame^2, analytic (right-continuous at ramp_up's stop) or finite differences
            as for ``velocities``.
        prompt: text description of the scene.
        context: (context_frames, H, W, 3) uint8, the first frames of ``video``.
        spec: the scene spec.
    """

    video: np.ndarray
    masks: np.ndarray
    centroids: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray
    prompt: str
    context: np.ndarray
    spec: SceneSpec
