"""NewtonRewards: the kinematic (constant-acceleration) reward, the mass-conservation reward and their weighted
sum, for single clips (numpy, raising InputError), for torch batches (differentiable, for reward gradients) and
as a reward role that scores whole batches and flags bad samples instead of failing.

Kinematic residual (Proposition 1 of NewtonRewards: under time-invariant forces the second difference of the
flow, phi[t+1] - 2 phi[t] + phi[t-1], vanishes). What the paper leaves open is fixed here, after measurement
on rendered NewtonBench scenes (``newtonrl bench newton-truth``):

1. Object velocity. Per frame pair, v_t = sum_p w_t(p) phi_t(p) with weights w_t proportional to |phi_t(p)|^2
   (sum to 1), and the weighted mean squared speed e_t = sum_p w_t(p) |phi_t(p)|^2. The dense per-pixel field is
   dominated by flow noise and border effects when the object covers 1-2 % of the frame: the plain dense mean of
   |D2 phi|^2 / mean |phi|^2 gave 0.2-0.6 on physical 64 px clips (a per-pixel Lagrangian version, flow sampled
   along the flow, 0.05-0.4), against 0.001-0.01 for the weighted object velocity, with no better separation
   of perturbed twins. The static camera's background gets ~0 weight. Assumes one coherent motion (one object,
   static camera), as in NewtonBench.
2. Temporal statistic S of the velocities v_0..v_{N-1} (N = T-1). The second-difference operator D2
   (D2 v)_t = v_{t+1} - 2 v_t + v_{t-1} annihilates exactly the constant-acceleration sequences v_t = v0 + a t.
   ``projection`` (default): S = mean_t |(P v)_t|^2 with P the orthogonal projector onto the row space of D2,
   i.e. the least-squares residual of fitting v0 + a t to the velocities: everything D2 sees, without D2's
   amplification of high-frequency flow noise. ``variance``: S = mean_t |a_t - mean(a)|^2 of the accelerations
   a_t = v_{t+1} - v_t (= half the mean of |a_i - a_j|^2, the second differences summed over every lag).
   ``second_difference``: S = mean_t |(D2 v)_t|^2, the paper's literal lag-1 form. All three vanish iff the
   acceleration is constant. Measured at 64 px, 16 frames, DIS (newton-truth, 100-200 pairs per primitive): a
   change of the acceleration by g mid-clip is ranked below its physical twin in 0.62-0.88 / 0.82-0.995 /
   0.955-1.0 of the pairs (range over the five primitives) by second_difference / variance / projection: flow
   noise enters every lag-1 term, while the change shows in only two of them. Jitter and teleport twins and
   frozen clips are ranked correctly in >= 0.99 of the pairs by all three.
3. Normalisation: R = (S + cap * s0^2) / (E + s0^2) with E = mean_t e_t (px^2/frame^2) and s0 = ``min_speed``.
   For speeds well above s0 this is S / E: scale-free (the same motion at twice the resolution scores the same).
   A motionless clip (E, S -> 0) tends to R = ``cap``, the worst score, instead of a trivial 0.
4. Reward: r_kin = log10(cap / clip(R, floor, cap)) in [0, log10(cap / floor)]; higher = more Newtonian.

Trajectory residual: the same test on a second velocity proxy, the object's centre of mass. Soft object masks
m_t = sigmoid((max_rgb |x_t - background| - threshold) / softness) (background: the per-pixel temporal median
of a reference clip of the scene, or of the clip itself; see :func:`centroid_track`) give the centroid
c_t = sum_p m_t(p) p / sum_p m_t(p); under a constant force it moves as c0 + v0 t + a t^2 / 2. With S_c the mean
squared residual of the least-squares quadratic fitted to c_t (px^2) and v_t = c_{t+1} - c_t,
R_traj = (S_c + cap * s0^2) / (mean_t |v_t|^2 + s0^2), rewarded as r_traj = log10(cap / clip(R_traj, floor, cap)).
It is fitted to positions rather than velocities because differencing the centroid doubles the weight of its
frame-to-frame jitter. The flow residual sees the motion of textured pixels, this one the displacement of the
object's mass: a clip can lower one without the other (a flickering shape, a jittering centroid), and the
NewtonBench metrics are measured on the centroid track. Differentiable in the pixels, so a reward-gradient learner
can use it.

Mass-conservation reward: r_mass = -(1 - cos(f(generated), f(reference))) in [-2, 0], f a frozen feature
backend (:mod:`rewards.features`) and the reference a clip of the same scene.
Combined: w_kin r_kin + w_mass r_mass + w_traj r_traj.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, InputError
from rewards.features import FeatureBackend, make_features
from rewards.flow import DifferentiableFlow, FlowBackend, make_flow
from rewards.video_io import check_clip, check_video_batch, to_unit

logger = logging.getLogger(__name__)

#: the second difference of the flow needs three flow fields, hence four frames
MIN_FRAMES = 4
REDUCTIONS = ("projection", "variance", "second_difference")


#: named rewards of :class:`NewtonRewardConfig` / the reward roles
REWARD_NAMES = ("kinematic", "mass", "trajectory")


@dataclass(frozen=True)
class KinematicConfig:
    """Settings of the kinematic residual (see the module docstring).

    reduction: ``projection`` | ``variance`` | ``second_difference`` (temporal statistic S).
    min_speed: s0, px/frame; speeds well below it count as no motion.
    cap: residual of a motionless clip and the upper clip of R (unitless, ~ |acceleration change| / speed).
    floor: lower clip of R in the reward (sets the reward's maximum, log10(cap / floor)).
    """

    reduction: str = "projection"
    min_speed: float = 0.05
    cap: float = 1.0
    floor: float = 1e-4

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reward.reduction: expected one of {REDUCTIONS}, got {self.reduction!r}")
        if not (self.min_speed > 0 and 0 < self.floor < self.cap):
            raise ConfigError(f"reward.min_speed/floor/cap: need min_speed > 0 and 0 < floor < cap, got "
                              f"{self.min_speed}, {self.floor}, {self.cap}")


def object_motion(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed-squared-weighted velocity of the moving content.

    flow: (B, N, 2, H, W) px/frame. Returns v (B, N, 2) px/frame and e (B, N) px^2/frame^2 (weighted mean
    squared speed); an all-zero flow field gives v = 0, e = 0.
    """
    speed2 = (flow**2).sum(dim=2)  # (B, N, H, W)
    weights = speed2 / speed2.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    velocity = (flow * weights.unsqueeze(2)).sum(dim=(3, 4))
    energy = (weights * speed2).sum(dim=(2, 3))
    return velocity, energy


def residual_from_flow(flow: torch.Tensor, config: KinematicConfig = KinematicConfig()) -> torch.Tensor:
    """Kinematic residual R (B,) of flow fields (B, T-1, 2, H, W) px/frame, T >= 4; differentiable."""
    if flow.ndim != 5 or flow.shape[1] < MIN_FRAMES - 1 or flow.shape[2] != 2:
        raise InputError(f"flow: expected (B, T-1 >= {MIN_FRAMES - 1}, 2, H, W), got {tuple(flow.shape)}")
    return residual_from_velocity(*object_motion(flow), config)


def residual_from_velocity(velocity: torch.Tensor, energy: torch.Tensor,
                           config: KinematicConfig = KinematicConfig()) -> torch.Tensor:
    """R = (S(velocity) + cap s0^2) / (mean_t energy + s0^2), (B,): velocity (B, N, 2) px/frame, N >= 3, and
    energy (B, N) px^2/frame^2 (see the module docstring); differentiable."""
    s02 = config.min_speed**2
    return (_spread(velocity, config.reduction) + config.cap * s02) / (energy.mean(dim=1) + s02)


@dataclass(frozen=True)
class MaskConfig:
    """Soft object masks of the trajectory residual: ``threshold`` and ``softness`` of the sigmoid on the largest
    per-channel difference to the background, in units of the [-1, 1] pixel range (0.15 ~ 19 of 255 levels)."""

    threshold: float = 0.15
    softness: float = 0.03

    def __post_init__(self) -> None:
        if not (0 < self.threshold < 2 and self.softness > 0):
            raise ConfigError(f"MaskConfig threshold/softness: need 0 < threshold < 2 and softness > 0, got "
                              f"{self.threshold}, {self.softness}")


def centroid_track(x: torch.Tensor, background: torch.Tensor | None = None,
                   mask: MaskConfig = MaskConfig()) -> torch.Tensor:
    """Centroids (B, T, 2) px (x, y) of the soft object masks of a batch (B, T, 3, H, W) in [-1, 1].

    ``background`` (B, 3, H, W) in [-1, 1]: the empty scene; default the per-pixel temporal median of ``x``
    (no gradient flows through the background). Every pixel keeps a weight of at least sigmoid(-threshold /
    softness) (0.0067 by default), so the centroid of a faint object is pulled towards the frame centre: fading
    the object out makes its track jump instead of hiding its motion (measured over three training seeds: with
    the weights shifted to 0 on the background, reward-gradient training gained 1-7 points less on the five
    NewtonBench metrics and 2.5-4.7 points less on the kinematic residual).
    """
    if background is None:
        background = x.median(dim=1).values
    difference = (x - background.detach()[:, None]).abs().amax(dim=2)  # (B, T, H, W)
    weights = torch.sigmoid((difference - mask.threshold) / mask.softness)
    h, w = weights.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    area = weights.sum(dim=(2, 3)).clamp_min(1e-3)
    return torch.stack([(weights * xs).sum(dim=(2, 3)) / area, (weights * ys).sum(dim=(2, 3)) / area], dim=-1)


def trajectory_residual_torch(x: torch.Tensor, background: torch.Tensor | None = None, *,
                              config: KinematicConfig = KinematicConfig(),
                              mask: MaskConfig = MaskConfig()) -> torch.Tensor:
    """Trajectory residual R_traj (B,) of a batch (B, T, 3, H, W) in [-1, 1], T >= 4 (module docstring);
    ``background`` as in :func:`centroid_track`. Differentiable in ``x``."""
    check_video_batch(x, min_frames=MIN_FRAMES)
    track = centroid_track(x, background, mask)
    speed2 = (torch.diff(track, dim=1) ** 2).sum(-1).mean(-1)
    s02 = config.min_speed**2
    return (polynomial_misfit(track, degree=2) + config.cap * s02) / (speed2 + s02)


def trajectory_residual(video: np.ndarray, background: np.ndarray | None = None, *,
                        config: KinematicConfig = KinematicConfig(), mask: MaskConfig = MaskConfig()) -> float:
    """Trajectory residual of one clip (T, H, W, 3) uint8, T >= 4; ``background`` (H, W, 3) uint8, default the
    clip's per-pixel temporal median. Lower = more Newtonian; ``config.cap`` for a clip where nothing moves."""
    check_clip(video, min_frames=MIN_FRAMES)
    bg = None
    if background is not None:
        if background.shape != video.shape[1:]:
            raise InputError(f"background: expected shape {video.shape[1:]}, got {background.shape}")
        bg = to_unit(background[None])[:, 0]
    with torch.no_grad():
        return float(trajectory_residual_torch(to_unit(video), bg, config=config, mask=mask)[0])


def polynomial_misfit(values: torch.Tensor, degree: int) -> torch.Tensor:
    """Mean squared residual (B,) of the least-squares fit of a polynomial in t of ``degree`` to ``values``
    (B, N, 2), N > degree: how far the sequence is from one such polynomial."""
    n = values.shape[1]
    times = torch.arange(n, dtype=values.dtype)
    times = (times - times.mean()) / n
    basis = torch.stack([times**k for k in range(degree + 1)], dim=1)  # (N, degree + 1)
    residual = values - basis @ torch.linalg.pinv(basis) @ values
    return (residual**2).sum(-1).mean(-1)


def _spread(velocity: torch.Tensor, reduction: str) -> torch.Tensor:
    """Temporal statistic S (B,) px^2/frame^2 of velocities (B, N, 2), N >= 3 (see the module docstring)."""
    if reduction == "projection":
        return polynomial_misfit(velocity, degree=1)
    accel = velocity[:, 1:] - velocity[:, :-1]
    if reduction == "variance":
        return ((accel - accel.mean(dim=1, keepdim=True)) ** 2).sum(-1).mean(-1)
    return ((accel[:, 1:] - accel[:, :-1]) ** 2).sum(-1).mean(-1)


def kinematic_residual(video: np.ndarray, *, flow: FlowBackend | None = None,
                       config: KinematicConfig = KinematicConfig()) -> float:
    """Kinematic residual R of one clip (T, H, W, 3) uint8, T >= 4; lower = more Newtonian, 0 = constant
    acceleration, ``config.cap`` for a motionless clip. ``flow`` defaults to OpenCV DIS."""
    check_clip(video, min_frames=MIN_FRAMES)
    phi = (flow or make_flow("dis")).flow(video)
    with torch.no_grad():
        return float(residual_from_flow(torch.from_numpy(phi).permute(0, 3, 1, 2)[None], config)[0])


def kinematic_residual_torch(x: torch.Tensor, *, flow: DifferentiableFlow,
                             config: KinematicConfig = KinematicConfig()) -> torch.Tensor:
    """Kinematic residual (B,) of a video batch (B, T, 3, H, W) in [-1, 1], differentiable through ``flow``."""
    check_video_batch(x, min_frames=MIN_FRAMES)
    return residual_from_flow(flow.flow_torch(x), config)


def kinematic_reward(residual: torch.Tensor | float,
                     config: KinematicConfig = KinematicConfig()) -> torch.Tensor | float:
    """r_kin = log10(cap / clip(R, floor, cap)): 0 for a motionless clip, log10(cap / floor) at best."""
    if isinstance(residual, torch.Tensor):
        return torch.log10(config.cap / residual.clamp(config.floor, config.cap))
    return math.log10(config.cap / min(max(float(residual), config.floor), config.cap))


def mass_distance_torch(x: torch.Tensor, reference: torch.Tensor, *, features: FeatureBackend) -> torch.Tensor:
    """1 - cosine similarity (B,) of the features of two video batches (B, T, 3, H, W) in [-1, 1]."""
    return 1 - F.cosine_similarity(features.embed_torch(x), features.embed_torch(reference), dim=1, eps=1e-8)


def mass_reward(video: np.ndarray, reference: np.ndarray, *, features: FeatureBackend | None = None) -> float:
    """r_mass = -(1 - cos(f(video), f(reference))) in [-2, 0] for two clips (T, H, W, 3) uint8 of the same scene
    (the frame counts must match; sizes may differ). ``features`` defaults to the ``appearance`` backend."""
    check_clip(video, min_frames=2)
    check_clip(reference, name="reference", min_frames=2)
    if len(reference) != len(video):
        raise InputError(f"reference: has {len(reference)} frames, the video {len(video)}; they must match")
    with torch.no_grad():
        distance = mass_distance_torch(to_unit(video), to_unit(reference), features=features or make_features())
    return -float(distance[0])


@dataclass(frozen=True)
class NewtonRewardConfig:
    """Weights and backends of the combined reward
    r = kinematic_weight * r_kin + mass_weight * r_mass + trajectory_weight * r_traj.

    kinematic_weight, mass_weight, trajectory_weight: >= 0, not all 0 (mass_weight 0: no reference clip needed;
    the trajectory residual takes the reference's temporal median as the background when there is a reference).
    flow / flow_options: flow backend name and its options (:mod:`rewards.flow`).
    features / features_options: feature backend name and its options (:mod:`rewards.features`).
    kinematic: settings of the residuals (flow and trajectory); mask: the trajectory residual's soft masks.
    """

    kinematic_weight: float = 1.0
    mass_weight: float = 1.0
    trajectory_weight: float = 0.0
    flow: str = "dis"
    flow_options: dict = field(default_factory=dict)
    features: str = "appearance"
    features_options: dict = field(default_factory=dict)
    kinematic: KinematicConfig = field(default_factory=KinematicConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self) -> None:
        weights = (self.kinematic_weight, self.mass_weight, self.trajectory_weight)
        if min(weights) < 0 or max(weights) == 0 or not all(math.isfinite(w) for w in weights):
            raise ConfigError(f"reward.kinematic_weight/mass_weight/trajectory_weight: need finite values >= 0, not "
                              f"all 0; got {weights}")


def combined_reward(video: np.ndarray, reference: np.ndarray | None = None, *,
                    config: NewtonRewardConfig = NewtonRewardConfig(), flow: FlowBackend | None = None,
                    features: FeatureBackend | None = None) -> float:
    """kinematic_weight * r_kin + mass_weight * r_mass + trajectory_weight * r_traj of one clip; ``reference`` is
    needed iff mass_weight > 0 (with trajectory_weight > 0 its temporal median is the background)."""
    reward = 0.0
    if config.kinematic_weight > 0:
        flow = flow or make_flow(config.flow, **config.flow_options)
        residual = kinematic_residual(video, flow=flow, config=config.kinematic)
        reward += config.kinematic_weight * kinematic_reward(residual, config.kinematic)
    if config.mass_weight > 0:
        if reference is None:
            raise InputError("reference: the mass reward (mass_weight > 0) needs a reference clip of the same scene")
        features = features or make_features(config.features, **config.features_options)
        reward += config.mass_weight * mass_reward(video, reference, features=features)
    if config.trajectory_weight > 0:
        background = None if reference is None else np.median(reference, axis=0).astype(np.uint8)
        residual = trajectory_residual(video, background, config=config.kinematic, mask=config.mask)
        reward += config.trajectory_weight * kinematic_reward(residual, config.kinematic)
    return reward


def combined_reward_torch(x: torch.Tensor, reference: torch.Tensor | None = None, *, config: NewtonRewardConfig,
                          flow: DifferentiableFlow, features: FeatureBackend) -> torch.Tensor:
    """Combined reward (B,) of a batch (B, T, 3, H, W) in [-1, 1], differentiable in ``x`` (reference: no grad)."""
    reward = torch.zeros(x.shape[0])
    if config.kinematic_weight > 0:
        residual = kinematic_residual_torch(x, flow=flow, config=config.kinematic)
        reward = reward + config.kinematic_weight * kinematic_reward(residual, config.kinematic)
    if config.mass_weight > 0:
        if reference is None or reference.shape[:2] != x.shape[:2]:
            raise InputError("reference: the mass reward needs a reference batch with the same (B, T) as the video")
        with torch.no_grad():
            check_video_batch(reference, name="reference", min_frames=2)
        reward = reward - config.mass_weight * mass_distance_torch(x, reference.detach(), features=features)
    if config.trajectory_weight > 0:
        if reference is not None and reference.shape != x.shape:
            raise InputError(f"reference: shape {tuple(reference.shape)} differs from the video's {tuple(x.shape)}")
        background = None if reference is None else reference.detach().median(dim=1).values
        residual = trajectory_residual_torch(x, background, config=config.kinematic, mask=config.mask)
        reward = reward + config.trajectory_weight * kinematic_reward(residual, config.kinematic)
    return reward


@dataclass
class ScoredBatch:
    """Per-sample results of :class:`NewtonRewardRole`. B samples.

    rewards: (B,) float64 combined reward; 0.0 where ``valid`` is False (exclude those samples).
    valid: (B,) bool. reasons: B strings, empty for valid samples, else what was wrong.
    residual: (B,) kinematic residual R (NaN where not computed). mass: (B,) r_mass (NaN where not computed).
    trajectory: (B,) trajectory residual R_traj (NaN where not computed).
    """

    rewards: np.ndarray
    valid: np.ndarray
    reasons: list[str]
    residual: np.ndarray
    mass: np.ndarray
    trajectory: np.ndarray


class NewtonRewardRole:
    """Reward role: scores batches of generated clips (T, H, W, 3) uint8 against optional reference clips.

    Frozen backends are built once here. A bad sample (not an array, wrong dtype/shape/channels, fewer than
    :data:`MIN_FRAMES` frames, a reference of another length or a missing reference) is flagged invalid with a
    logged reason; the other samples are scored normally.
    """

    def __init__(self, config: NewtonRewardConfig = NewtonRewardConfig(), *, flow: FlowBackend | None = None,
                 features: FeatureBackend | None = None) -> None:
        self.config = config
        self.flow = flow or make_flow(config.flow, **config.flow_options)
        need_features = config.mass_weight > 0
        self.features = features or (make_features(config.features, **config.features_options) if need_features
                                     else None)

    def _problem(self, video: object, reference: object) -> str:
        """Why a sample cannot be scored, or '' if it can."""
        try:
            check_clip(video, min_frames=MIN_FRAMES)
            if self.config.mass_weight > 0 and reference is None:
                raise InputError("reference: missing (mass_weight > 0 needs a reference clip)")
            if reference is not None and (self.config.mass_weight > 0 or self.config.trajectory_weight > 0):
                check_clip(reference, name="reference", min_frames=MIN_FRAMES)
                if len(reference) != len(video):
                    raise InputError(f"reference: has {len(reference)} frames, the video {len(video)}")
                if self.config.trajectory_weight > 0 and reference.shape != video.shape:
                    raise InputError(f"reference: shape {reference.shape} differs from the video's {video.shape}")
        except InputError as exc:
            return str(exc)
        return ""

    def score(self, videos: list, references: list | None = None) -> ScoredBatch:
        """Score B clips; ``references`` (same length as ``videos``) is needed when mass_weight > 0."""
        refs = list(references) if references is not None else [None] * len(videos)
        if len(refs) != len(videos):
            raise InputError(f"references: got {len(refs)} for {len(videos)} videos; give one per video")
        b = len(videos)
        reasons = [self._problem(v, r) for v, r in zip(videos, refs, strict=True)]
        ok = [i for i in range(b) if not reasons[i]]
        for i in range(b):
            if reasons[i]:
                logger.warning("reward: sample %d flagged invalid: %s", i, reasons[i])
        residual, mass, trajectory = np.full(b, np.nan), np.full(b, np.nan), np.full(b, np.nan)
        rewards = np.zeros(b)
        cfg = self.config
        if cfg.kinematic_weight > 0:
            for i in ok:
                residual[i] = kinematic_residual(videos[i], flow=self.flow, config=cfg.kinematic)
                rewards[i] += cfg.kinematic_weight * kinematic_reward(residual[i], cfg.kinematic)
        if cfg.mass_weight > 0 and ok:
            gen = self.features.embed([videos[i] for i in ok])
            ref = self.features.embed([refs[i] for i in ok])
            cos = (gen * ref).sum(1) / (np.linalg.norm(gen, axis=1) * np.linalg.norm(ref, axis=1) + 1e-8)
            mass[ok] = cos - 1
            rewards[ok] += cfg.mass_weight * mass[ok]
        if cfg.trajectory_weight > 0:
            for i in ok:
                background = None if refs[i] is None else np.median(refs[i], axis=0).astype(np.uint8)
                trajectory[i] = trajectory_residual(videos[i], background, config=cfg.kinematic, mask=cfg.mask)
                rewards[i] += cfg.trajectory_weight * kinematic_reward(trajectory[i], cfg.kinematic)
        return ScoredBatch(rewards=rewards, valid=np.array([not r for r in reasons]), reasons=reasons,
                           residual=residual, mass=mass, trajectory=trajectory)
