"""Kinematic residual (closed forms on synthetic flow fields, rendered physics vs perturbed twins), mass and
combined rewards, the torch forms, and the reward role's handling of bad samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, InputError
from rewards.flow import make_flow
from rewards.newton import (
    KinematicConfig,
    MaskConfig,
    NewtonRewardConfig,
    NewtonRewardRole,
    combined_reward,
    combined_reward_torch,
    kinematic_residual,
    kinematic_residual_torch,
    kinematic_reward,
    mass_reward,
    residual_from_flow,
    trajectory_residual,
    trajectory_residual_torch,
)
from rewards.video_io import to_unit

torch.set_num_threads(1)


def block_flow(velocities: np.ndarray, size: int = 24) -> torch.Tensor:
    """(1, N, 2, H, W) flow: a 6x6 block moving with velocities[t] (N, 2) px/frame, zero elsewhere."""
    flow = torch.zeros(1, len(velocities), 2, size, size, dtype=torch.float64)
    flow[0, :, :, 9:15, 9:15] = torch.as_tensor(velocities, dtype=torch.float64)[:, :, None, None]
    return flow


def independent_spread(v: np.ndarray, reduction: str) -> float:
    """S of velocities (N, 2) computed another way: polyfit residual, accelerations' variance, np.diff(n=2)."""
    if reduction == "projection":
        t = np.arange(len(v))
        lines = np.stack([np.polyval(np.polyfit(t, v[:, k], 1), t) for k in range(2)], axis=1)
        return float(((v - lines) ** 2).sum(1).mean())
    a = np.diff(v, axis=0)
    lagged = a - a.mean(0) if reduction == "variance" else np.diff(v, n=2, axis=0)
    return float((lagged**2).sum(1).mean())


@pytest.mark.parametrize("reduction", ["projection", "variance", "second_difference"])
def test_residual_matches_the_closed_form_on_a_block_flow(reduction: str) -> None:
    rng = np.random.default_rng(0)
    v = np.array([1.0, 2.0]) + np.arange(7)[:, None] * np.array([0.3, -0.2]) + rng.normal(0, 0.1, (7, 2))
    cfg = KinematicConfig(reduction=reduction)
    spread = independent_spread(v, reduction)
    energy = (v**2).sum(1).mean()
    expected = (spread + cfg.cap * cfg.min_speed**2) / (energy + cfg.min_speed**2)
    np.testing.assert_allclose(float(residual_from_flow(block_flow(v), cfg)[0]), expected, rtol=1e-9)


@pytest.mark.parametrize("reduction", ["projection", "variance", "second_difference"])
def test_constant_acceleration_is_near_zero_scale_free_and_motionless_is_the_cap(reduction: str) -> None:
    v = np.array([0.5, 0.0]) + np.arange(7)[:, None] * np.array([0.0, 0.4])
    cfg = KinematicConfig(reduction=reduction)
    r1, r2 = (float(residual_from_flow(block_flow(k * v), cfg)[0]) for k in (1, 2))
    assert r1 < 2e-3 and abs(r1 - r2) < 2e-3  # only the min_speed term remains, and it shrinks with speed
    assert float(residual_from_flow(block_flow(np.zeros((7, 2))), cfg)[0]) == pytest.approx(cfg.cap)
    assert kinematic_reward(cfg.cap, cfg) == 0.0 and kinematic_reward(0.0, cfg) == pytest.approx(4.0)


@pytest.fixture(scope="module")
def scene():
    from envs.newton import render_clip, render_trajectory, sample_spec

    spec = sample_spec("train", np.random.default_rng(7), primitive="horizontal_throw", resolution=(64, 64))
    clip = render_clip(spec, seed=3)
    t = np.arange(spec.num_frames)
    upward = 0.5 * 3 * spec.gravity * np.array([0.0, -1.0])  # from frame 8 on, acceleration g upwards (change 3 g)
    twins = {
        "accel": clip.centroids + upward * np.clip(t - 8, 0, None)[:, None] ** 2,
        "teleport": clip.centroids + np.array([0.0, 6.0]) * (t >= 8)[:, None],
        "jitter": clip.centroids + np.random.default_rng(1).normal(0, 1.3, clip.centroids.shape),
        "frozen": np.repeat(clip.centroids[:1], spec.num_frames, axis=0),
    }
    videos = {k: render_trajectory(spec, p, seed=3).video for k, p in twins.items()}
    return clip, videos, render_clip(spec, seed=4).video


def test_rendered_physics_beats_its_perturbed_twins(scene) -> None:
    clip, twins, _ = scene
    physical = kinematic_residual(clip.video)
    assert physical < 0.02
    for name in ("accel", "teleport", "jitter"):
        assert kinematic_residual(twins[name]) > 3 * physical, name
    assert kinematic_residual(twins["frozen"]) == pytest.approx(KinematicConfig().cap)


def test_mass_and_combined_rewards_punish_the_frozen_clip(scene) -> None:
    clip, twins, reference = scene
    assert mass_reward(clip.video, clip.video) == pytest.approx(0.0, abs=1e-6)
    assert mass_reward(twins["frozen"], reference) < mass_reward(clip.video, reference) - 0.2
    physical = combined_reward(clip.video, reference)
    assert physical > 2.0 and combined_reward(twins["frozen"], reference) < physical - 2.0
    with pytest.raises(InputError, match="needs a reference"):
        combined_reward(clip.video)
    assert combined_reward(clip.video, config=NewtonRewardConfig(mass_weight=0.0)) > 2.0


def test_torch_forms_are_differentiable_through_lk(scene) -> None:
    clip, twins, reference = scene
    lk = make_flow("lk")
    x = torch.cat([to_unit(clip.video), to_unit(twins["teleport"])]).requires_grad_(True)
    residual = kinematic_residual_torch(x, flow=lk)
    assert residual[0] < residual[1]
    np.testing.assert_allclose(float(residual[0].detach()), kinematic_residual(clip.video, flow=lk), rtol=1e-4)
    from rewards.features import make_features

    ref = torch.cat([to_unit(reference)] * 2)
    reward = combined_reward_torch(x, ref, config=NewtonRewardConfig(), flow=lk, features=make_features())
    reward.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_role_flags_bad_samples_and_scores_the_rest(scene, caplog) -> None:
    clip, twins, reference = scene
    role = NewtonRewardRole()
    nan_clip = clip.video.astype(np.float32)
    nan_clip[0, 0, 0, 0] = np.nan
    videos = [clip.video, np.zeros((0, 64, 64, 3), np.uint8), clip.video[:3], nan_clip, clip.video[..., :2],
              clip.video, twins["frozen"], clip.video]
    refs = [reference, reference, reference, reference, reference, reference[:10], reference, None]
    out = role.score(videos, refs)
    assert out.valid.tolist() == [True, False, False, False, False, False, True, False]
    for i, word in [(1, "at least 4 frames"), (2, "at least 4 frames"), (3, "uint8"), (4, "shape"), (5, "frames"),
                    (7, "missing")]:
        assert word in out.reasons[i], (i, out.reasons[i])
    assert "sample 3 flagged invalid" in caplog.text
    assert out.rewards[0] == pytest.approx(combined_reward(clip.video, reference), rel=1e-5)
    assert out.rewards[6] < out.rewards[0] - 2 and np.isnan(out.residual[1]) and out.rewards[1] == 0.0
    with pytest.raises(InputError, match="references"):
        role.score(videos, refs[:2])


@pytest.mark.parametrize("bad", [np.zeros((3, 32, 32, 3), np.uint8), np.zeros((6, 32, 32), np.uint8),
                                 np.zeros((6, 32, 32, 3), np.int64), [[0]]])
def test_single_clip_functions_raise_input_error(bad: object) -> None:
    with pytest.raises(InputError):
        kinematic_residual(bad)


def test_config_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match="reward.reduction"):
        KinematicConfig(reduction="median")
    with pytest.raises(ConfigError, match="kinematic_weight/mass_weight"):
        NewtonRewardConfig(kinematic_weight=0.0, mass_weight=0.0)
    with pytest.raises(ConfigError, match="floor"):
        KinematicConfig(floor=2.0)


def square_clip(positions: np.ndarray, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4 white square with its top-left corner at integer ``positions`` (T, 2) (x, y) on a grey background:
    (clip (T, H, W, 3) uint8, background (H, W, 3) uint8)."""
    background = np.full((size, size, 3), 90, np.uint8)
    clip = np.repeat(background[None], len(positions), axis=0)
    for frame, (x, y) in zip(clip, positions.astype(int), strict=True):
        frame[y:y + 4, x:x + 4] = 250
    return clip, background


def soft_centroids(positions: np.ndarray, size: int) -> np.ndarray:
    """Centroids (T, 2) of square_clip's soft masks, from the two pixel weights: the square's and the background's."""
    mask = MaskConfig()
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    inside, outside = sigmoid(((250 - 90) / 127.5 - mask.threshold) / mask.softness), sigmoid(-mask.threshold /
                                                                                           mask.softness)
    grid_sum, n = size * (size - 1) / 2 * size, size * size  # sum of x (or y) over the frame, pixel count
    square_sum = 16 * (positions + 1.5)  # sum of x (or y) over the square's 16 pixels
    return (inside * square_sum + outside * (grid_sum - square_sum)) / (inside * 16 + outside * (n - 16))


def test_trajectory_residual_matches_the_closed_form_on_a_moving_square() -> None:
    cfg = KinematicConfig()
    t = np.arange(8)
    for positions, size in [(np.array([[2, 3], [4, 3], [7, 4], [9, 6], [12, 7], [14, 10], [15, 12], [18, 15]]), 32),
                            (np.stack([2 + 3 * t, 3 + t**2], axis=1), 64)]:  # an exact parabola on the pixel grid
        clip, background = square_clip(positions, size)
        c = soft_centroids(positions, size)
        fit = np.stack([np.polyval(np.polyfit(t, c[:, k], 2), t) for k in range(2)], axis=1)
        misfit, speed2 = ((c - fit) ** 2).sum(1).mean(), (np.diff(c, axis=0) ** 2).sum(1).mean()
        expected = (misfit + cfg.cap * cfg.min_speed**2) / (speed2 + cfg.min_speed**2)
        assert trajectory_residual(clip, background) == pytest.approx(expected, rel=1e-4)
    assert misfit < 1e-12  # the parabola: only the min_speed term is left
    still, _ = square_clip(np.repeat(positions[:1], 8, axis=0), 64)
    assert trajectory_residual(still, background) == pytest.approx(cfg.cap)


def test_trajectory_residual_ranks_rendered_physics_above_its_twins_and_is_differentiable(scene) -> None:
    clip, twins, _ = scene
    background = np.median(clip.video, axis=0).astype(np.uint8)  # the empty scene: the object never lingers
    physical = trajectory_residual(clip.video, background)
    assert physical < 0.02 and trajectory_residual(clip.video) == pytest.approx(physical)
    for name in ("accel", "teleport", "jitter"):
        assert trajectory_residual(twins[name], background) > 3 * physical, name
    assert trajectory_residual(twins["frozen"], background) == pytest.approx(KinematicConfig().cap)
    x = torch.cat([to_unit(clip.video), to_unit(twins["jitter"])]).requires_grad_(True)
    residual = trajectory_residual_torch(x, to_unit(background[None])[:, 0].expand(2, -1, -1, -1))
    assert residual[0] < residual[1]
    residual.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # as a weighted reward: the reference clip of the scene gives the background (here the clip itself)
    config = NewtonRewardConfig(mass_weight=0.0, trajectory_weight=1.0)
    both = combined_reward(clip.video, clip.video, config=config)
    alone = combined_reward(clip.video, config=NewtonRewardConfig(mass_weight=0.0))
    assert both == pytest.approx(alone + kinematic_reward(physical), rel=1e-5)
    scored = NewtonRewardRole(config).score([clip.video, twins["jitter"], clip.video],
                                            [clip.video, clip.video, clip.video[:, :32]])
    assert scored.valid.tolist() == [True, True, False] and "shape" in scored.reasons[2]
    assert scored.trajectory[0] == pytest.approx(physical) and scored.rewards[0] == pytest.approx(both, rel=1e-5)
    assert scored.rewards[1] < scored.rewards[0] and np.isnan(scored.trajectory[2])
