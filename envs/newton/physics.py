"""Closed-form kinematics of the five Newtonian primitives (px and frames, image y axis down).

- free_fall: p(t) = p0 + 1/2 a t^2, a = (0, g), v0 = 0.
- horizontal_throw: v0 = (direction * speed, 0), a = (0, g).
- parabolic_throw: v0 = speed * (direction * cos(angle), -sin(angle)), a = (0, g).
- ramp_down / ramp_up: sliding along a straight ramp of slope th with kinetic friction mu (the object does not
  roll). With s the distance along the downhill unit vector, a moving object feels
  s'' = g (sin th - mu cos th) while it moves downhill and s'' = g (sin th + mu cos th) while it moves uphill;
  at rest it stays if tan th <= mu (static friction is taken equal to kinetic friction), else it slides down.
  ramp_up starts with speed uphill, stops at t_s = speed / (g (sin th + mu cos th)) and then slides back or stays.
  The motion is piecewise quadratic and evaluated exactly; the acceleration is right-continuous at a phase change.
"""

from __future__ import annotations

import math

import numpy as np

from envs.newton.spec import SceneSpec

#: one phase of 1-D motion: (start time, start position, start velocity, constant acceleration)
Phase = tuple[float, float, float, float]


def slope_axes(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (x, y) of a ramp scene: ``downhill`` along the surface and ``normal`` out of the ramp (upwards).

    ``spec.direction`` is the horizontal sense of the initial motion: downhill for ramp_down, uphill for ramp_up.
    """
    theta = math.radians(spec.ramp_angle_deg)
    sense = spec.direction if spec.primitive == "ramp_down" else -spec.direction
    downhill = np.array([sense * math.cos(theta), math.sin(theta)])
    normal = np.array([sense * math.sin(theta), -math.cos(theta)])
    return downhill, normal


def slide_phases(v0: float, g: float, theta_deg: float, mu: float) -> list[Phase]:
    """Phases of a block on a slope; ``v0`` > 0 moves downhill, < 0 uphill. Positions/velocities along downhill."""
    sin, cos = math.sin(math.radians(theta_deg)), math.cos(math.radians(theta_deg))
    a_down = g * (sin - mu * cos)  # while moving downhill
    a_up = g * (sin + mu * cos)  # while moving uphill (decelerates an uphill motion)
    if v0 > 0 and a_down >= 0:
        return [(0.0, 0.0, v0, a_down)]
    if v0 > 0:  # friction stops a downhill motion; tan th < mu so it then stays
        t_stop = v0 / -a_down
        return [(0.0, 0.0, v0, a_down), (t_stop, 0.5 * v0 * t_stop, 0.0, 0.0)]
    phases: list[Phase] = []
    t_rest, s_rest = 0.0, 0.0
    if v0 < 0:
        t_rest = -v0 / a_up
        s_rest = 0.5 * v0 * t_rest
        phases.append((0.0, 0.0, v0, a_up))
    phases.append((t_rest, s_rest, 0.0, a_down if a_down > 0 else 0.0))
    return phases


def evaluate_phases(phases: list[Phase], times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position, velocity and acceleration (each shaped like ``times``) of piecewise-constant-acceleration motion."""
    starts = np.array([p[0] for p in phases])
    index = np.searchsorted(starts, times, side="right") - 1
    t0, s0, v0, a = (np.array([p[k] for p in phases])[index] for k in range(4))
    dt = times - t0
    return s0 + v0 * dt + 0.5 * a * dt**2, v0 + a * dt, a


def _ballistic(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Initial velocity and constant acceleration (px/frame, px/frame^2) of the three free-flight primitives."""
    if spec.primitive == "free_fall":
        v0 = np.zeros(2)
    elif spec.primitive == "horizontal_throw":
        v0 = np.array([spec.direction * spec.speed, 0.0])
    else:
        alpha = math.radians(spec.angle_deg)
        v0 = spec.speed * np.array([spec.direction * math.cos(alpha), -math.sin(alpha)])
    return v0, np.array([0.0, spec.gravity])


def trajectory(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact centre-of-mass positions (px), velocities (px/frame), accelerations (px/frame^2), each (T, 2) (x, y).

    Evaluated at the frame times t = 0, 1, ..., T-1; the derivatives are analytic.
    """
    times = np.arange(spec.num_frames, dtype=np.float64)
    p0 = np.array(spec.start)
    if spec.primitive in ("ramp_down", "ramp_up"):
        downhill, _ = slope_axes(spec)
        v0 = spec.speed if spec.primitive == "ramp_down" else -spec.speed
        s, v, a = evaluate_phases(slide_phases(v0, spec.gravity, spec.ramp_angle_deg, spec.friction), times)
        return p0 + s[:, None] * downhill, v[:, None] * downhill, a[:, None] * downhill
    v0, acc = _ballistic(spec)
    t = times[:, None]
    return p0 + v0 * t + 0.5 * acc * t**2, v0 + acc * t, np.broadcast_to(acc, (spec.num_frames, 2)).copy()
