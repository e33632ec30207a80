"""NewtonBench-style scenes: closed-form physics, rendering accuracy, determinism and split design."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from envs.newton import PRIMITIVES, SPLITS, SceneSpec, render_clip, render_trajectory, sample_spec, trajectory
from envs.newton.assets import (
    TEST_BACKGROUNDS,
    TEST_COLORS,
    TEST_SHAPES,
    TRAIN_BACKGROUNDS,
    TRAIN_COLORS,
    TRAIN_SHAPES,
    contact_offset,
    outline,
)
from envs.newton.physics import slope_axes
from envs.newton.render import _ramp_polygon, coverage, object_coverage
from envs.newton.spec import floor_y
from envs.newton.splits import OOD_RANGES, TRAIN_RANGES, split_primitives, split_ranges
from pipeline.errors import ConfigError, InputError

SIZES = [((64, 64), 16), ((128, 128), 32)]


def _specs(split: str, primitive: str, n: int, seed: int = 0, resolution=(64, 64), frames=16) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(split, rng, primitive=primitive, resolution=resolution, num_frames=frames) for _ in range(n)]


@pytest.mark.parametrize("primitive", ["free_fall", "horizontal_throw", "parabolic_throw"])
def test_free_flight_matches_closed_form(primitive):
    for spec in _specs("train", primitive, 5):
        pos, vel, acc = trajectory(spec)
        t = np.arange(spec.num_frames)[:, None]
        alpha = math.radians(spec.angle_deg)
        v0 = {"free_fall": (0.0, 0.0), "horizontal_throw": (spec.direction * spec.speed, 0.0),
              "parabolic_throw": (spec.direction * spec.speed * math.cos(alpha), -spec.speed * math.sin(alpha))}
        expected = np.array(spec.start) + np.array(v0[primitive]) * t + 0.5 * np.array([0.0, spec.gravity]) * t**2
        np.testing.assert_allclose(pos, expected, atol=1e-9)
        np.testing.assert_allclose(pos[2:] - 2 * pos[1:-1] + pos[:-2], np.tile([0.0, spec.gravity], (len(t) - 2, 1)),
                                   atol=1e-9)
        np.testing.assert_allclose(vel, np.gradient(pos, axis=0, edge_order=2), atol=1e-9)
        np.testing.assert_allclose(acc, np.tile([0.0, spec.gravity], (len(t), 1)))


def test_ramp_down_constant_acceleration_along_the_slope():
    for spec in _specs("train", "ramp_down", 5) + _specs("ood-friction", "ramp_down", 5):
        pos, _, acc = trajectory(spec)
        th = math.radians(spec.ramp_angle_deg)
        a = spec.gravity * (math.sin(th) - spec.friction * math.cos(th))
        assert a > 0
        downhill = np.array([spec.direction * math.cos(th), math.sin(th)])
        np.testing.assert_allclose(pos[2:] - 2 * pos[1:-1] + pos[:-2], np.tile(a * downhill, (spec.num_frames - 2, 1)),
                                   atol=1e-9)
        np.testing.assert_allclose(acc, np.tile(a * downhill, (spec.num_frames, 1)), atol=1e-12)
        step = np.diff(pos, axis=0)  # moves downhill, in the spec's direction, along a line of slope tan(th)
        assert np.all(np.sign(step[:, 0]) == spec.direction) and np.all(step[:, 1] > 0)
        np.testing.assert_allclose(step[:, 1] / np.abs(step[:, 0]), math.tan(th), rtol=1e-9)


def _ramp_up_numeric(spec: SceneSpec) -> np.ndarray:
    """Uphill distance at the frames by ODE integration with an event at the stop (independent of physics.py)."""
    g, th, mu = spec.gravity, math.radians(spec.ramp_angle_deg), spec.friction
    times = np.arange(spec.num_frames, dtype=float)

    def stopped(t, y):
        return y[1]

    stopped.terminal = True
    up = solve_ivp(lambda t, y: [y[1], -g * (math.sin(th) + mu * math.cos(th))], (0, times[-1]), [0.0, spec.speed],
                   events=stopped, dense_output=True, rtol=1e-12, atol=1e-12)
    t_stop = up.t_events[0][0]
    s_stop = up.sol(t_stop)[0]
    a_back = g * (math.sin(th) - mu * math.cos(th)) if math.tan(th) > mu else 0.0
    back = s_stop - 0.5 * a_back * np.clip(times - t_stop, 0, None) ** 2
    return np.where(times < t_stop, up.sol(np.minimum(times, t_stop))[0], back)


@pytest.mark.parametrize("split", ["train", "ood-friction", "ood-speed"])
def test_ramp_up_stops_and_reverses_exactly(split):
    specs = _specs(split, "ramp_up", 6, seed=3)
    for spec in specs:
        pos, vel, _ = trajectory(spec)
        downhill, _ = slope_axes(spec)
        uphill_distance = -(pos - pos[0]) @ downhill
        np.testing.assert_allclose(uphill_distance, _ramp_up_numeric(spec), atol=1e-7)
        th = math.radians(spec.ramp_angle_deg)
        t_stop = spec.speed / (spec.gravity * (math.sin(th) + spec.friction * math.cos(th)))
        peak = int(np.argmax(uphill_distance))
        assert abs(peak - t_stop) <= 1.0 and t_stop < spec.num_frames - 1
        before, after = np.diff(uphill_distance[: int(t_stop) + 1]), np.diff(uphill_distance[int(t_stop) + 1:])
        assert np.all(before > 0)
        if math.tan(th) > spec.friction:
            assert np.all(after < 0)  # slides back
        else:
            np.testing.assert_allclose(after, 0.0, atol=1e-12)  # friction holds it
            np.testing.assert_allclose(vel[int(t_stop) + 1:], 0.0, atol=1e-12)
    assert any(math.tan(math.radians(s.ramp_angle_deg)) <= s.friction for s in _specs("ood-friction", "ramp_up", 40)), \
        "ood-friction should contain ramp_up scenes where friction holds the object"


@pytest.mark.parametrize(("resolution", "frames"), SIZES + [((48, 80), 24)])
def test_scenes_stay_in_frame_and_move_visibly(resolution, frames):
    for split in SPLITS:
        for primitive in split_primitives(split):
            for spec in _specs(split, primitive, 3, seed=1, resolution=resolution, frames=frames):
                pos, _, _ = trajectory(spec)
                r = spec.size / 2
                assert pos[:, 0].min() - r >= 0 and pos[:, 0].max() + r <= resolution[1] - 1
                assert pos[:, 1].min() - r >= 0
                if primitive not in ("ramp_down", "ramp_up"):
                    assert pos[:, 1].max() + r <= floor_y(resolution)
                speed = np.linalg.norm(np.diff(pos, axis=0), axis=1).mean()
                unit = (min(resolution) / (frames - 1)) / (64 / 15)  # 1 at 64 px and 16 frames
                assert speed >= 0.6 * unit, (split, primitive, speed)  # mean speed, px/frame


def test_rendered_mask_centroid_matches_truth():
    errors = []
    for k, split in enumerate(("train", "test") * 4):
        for primitive in PRIMITIVES:
            clip = render_clip(_specs(split, primitive, 1, seed=k)[0], seed=k)
            for mask, truth in zip(clip.masks, clip.centroids, strict=True):
                ys, xs = np.nonzero(mask)
                errors.append(math.hypot(xs.mean() - truth[0], ys.mean() - truth[1]))
            border = clip.masks[:, [0, -1], :].any() or clip.masks[:, :, [0, -1]].any()
            assert not border and clip.masks.any(axis=(1, 2)).all()  # the whole object is always in frame
    errors = np.array(errors)
    assert errors.mean() < 0.2 and errors.max() < 0.6, (errors.mean(), errors.max())


@pytest.mark.parametrize("shape", TRAIN_SHAPES + TEST_SHAPES)
def test_rendered_area_and_centre_match_the_shape(shape):
    spec = replace(_specs("train", "ramp_down", 1)[0], shape=shape, size=10.0)
    vertices = outline(shape, np.zeros(2), spec.size, np.array([0.0, 1.0]))
    x, y = (vertices[:, 0], vertices[:, 1]) if vertices is not None else (None, None)
    area = math.pi * 25.0 if vertices is None else 0.5 * abs(x @ np.roll(y, 1) - y @ np.roll(x, 1))  # shoelace
    rows, cols = np.mgrid[: spec.resolution[0], : spec.resolution[1]]
    for dx, dy in [(0.0, 0.0), (0.25, 0.6), (0.5, 0.5), (0.83, 0.12)]:
        center = np.array([30.0 + dx, 27.0 + dy])
        alpha = object_coverage(spec, center)
        tolerance = 0.08 if shape == "star" else 0.02  # the star's thin tips fill a little more
        assert abs(alpha.sum() / area - 1) < tolerance, (shape, alpha.sum(), area)
        centre = np.array([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum()
        np.testing.assert_allclose(centre, center, atol=0.08)


def test_render_trajectory_handles_paths_leaving_the_frame():
    spec = _specs("train", "horizontal_throw", 1)[0]
    path = trajectory(spec)[0].copy()
    path[-4:] = [[-50.0, 10.0], [spec.resolution[1] + 40.0, 10.0], [1.0, 1.0], [-2.0, 30.0]]
    clip = render_trajectory(spec, path)
    assert not clip.masks[-4].any() and not clip.masks[-3].any() and clip.masks[-2].any()


def test_object_rests_on_the_drawn_ramp():
    for primitive in ("ramp_down", "ramp_up"):
        for spec in _specs("test", primitive, 4, seed=5):
            ramp = coverage(spec.resolution, polygon=_ramp_polygon(spec))
            pos, _, _ = trajectory(spec)
            _, normal = slope_axes(spec)
            offset = contact_offset(spec.shape, spec.size)
            for p in pos:
                below = np.rint(p - (offset + 1.5) * normal).astype(int)
                above = np.rint(p - (offset - 1.5) * normal).astype(int)
                assert ramp[below[1], below[0]] > 0.99 and ramp[above[1], above[0]] < 0.01


@pytest.mark.parametrize(("resolution", "frames"), SIZES)
def test_clip_shapes_and_determinism(resolution, frames):
    spec_a = _specs("train", "parabolic_throw", 1, seed=7, resolution=resolution, frames=frames)[0]
    spec_b = _specs("train", "parabolic_throw", 1, seed=7, resolution=resolution, frames=frames)[0]
    assert spec_a == spec_b
    a, b, c = render_clip(spec_a, seed=1), render_clip(spec_b, seed=1), render_clip(spec_a, seed=2)
    h, w = resolution
    assert a.video.shape == (frames, h, w, 3) and a.video.dtype == np.uint8
    assert a.masks.shape == (frames, h, w) and a.masks.dtype == bool
    assert a.centroids.shape == a.velocities.shape == a.accelerations.shape == (frames, 2)
    np.testing.assert_array_equal(a.context, a.video[: spec_a.context_frames])
    np.testing.assert_array_equal(a.video, b.video)
    assert not np.array_equal(a.video[0], c.video[0])  # the seed changes the background details
    np.testing.assert_array_equal(a.masks, c.masks)  # ... not the object
    assert "thrown upward" in a.prompt and a.prompt == b.prompt


def test_render_trajectory_reproduces_render_clip_and_differentiates_the_path():
    spec = _specs("train", "free_fall", 1, seed=2)[0]
    clip = render_clip(spec, seed=4)
    twin = render_trajectory(spec, clip.centroids, seed=4)
    np.testing.assert_array_equal(twin.video, clip.video)
    np.testing.assert_allclose(twin.velocities, clip.velocities, atol=1e-9)  # exact on a quadratic path
    np.testing.assert_allclose(twin.accelerations, clip.accelerations, atol=1e-9)
    wobble = clip.centroids + np.stack([np.sin(np.arange(spec.num_frames)), np.zeros(spec.num_frames)], axis=1)
    moved = render_trajectory(spec, wobble, seed=4)
    np.testing.assert_allclose(moved.velocities, np.gradient(wobble, axis=0, edge_order=2))
    with pytest.raises(InputError, match="positions"):
        render_trajectory(spec, wobble[:-1])


def test_train_and_test_assets_are_disjoint():
    assert not set(TRAIN_SHAPES) & set(TEST_SHAPES)
    assert not set(TRAIN_COLORS.values()) & set(TEST_COLORS.values())
    assert not set(TRAIN_BACKGROUNDS) & set(TEST_BACKGROUNDS)
    rng = np.random.default_rng(0)
    seen = {split: [sample_spec(split, rng) for _ in range(60)] for split in ("train", "test", "ood-speed")}
    for attr in ("shape", "color", "background"):
        train = {getattr(s, attr) for s in seen["train"]}
        assert not train & {getattr(s, attr) for s in seen["test"]}
        assert {getattr(s, attr) for s in seen["ood-speed"]} <= train  # OOD splits reuse train assets
        assert len(train) == 3


def _normalised(spec: SceneSpec, field: str) -> float:
    length, duration = min(spec.resolution), spec.num_frames - 1
    scale = {"height": 1 / length, "speed": duration / length}.get(field, 1.0)
    return getattr(spec, field) * scale


@pytest.mark.parametrize("split", ["ood-height", "ood-speed", "ood-friction"])
def test_ood_ranges_lie_outside_train_ranges(split):
    for primitive, (field, (low, high)) in OOD_RANGES[split].items():
        train_low, train_high = getattr(TRAIN_RANGES[primitive], field)
        assert high < train_low or low > train_high, (split, primitive)
        for resolution, frames in SIZES:
            for spec in _specs(split, primitive, 5, seed=9, resolution=resolution, frames=frames):
                value = _normalised(spec, field)
                assert low - 1e-9 <= value <= high + 1e-9 and not train_low <= value <= train_high


def test_split_errors():
    with pytest.raises(ConfigError, match="split"):
        sample_spec("valid", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="free_fall"):
        split_ranges("ood-friction", "free_fall")
    spec = _specs("train", "free_fall", 1)[0]
    with pytest.raises(ConfigError, match="primitive"):
        replace(spec, primitive="bounce")
    assert SceneSpec.from_dict(spec.to_dict()) == spec
