"""Video rollouts: clips <-> tensors, and the rollout worker role that samples with per-step log-probs.

Tensor conventions: video batches are (B, T, 3, H, W) float in [-1, 1]; clips at the edges are (T, H, W, 3)
uint8. A scene clip of ``T_total`` frames is split into ``context`` (its first Tc frames, the condition) and the
``T_total - Tc`` future frames the model generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from envs.newton import PRIMITIVES
from pipeline.errors import ConfigError, InputError
from pipeline.weights import WeightsMessage, apply_message
from rollouts import samplers
from rollouts.models import Conditions, VideoPolicy


def uint8_to_float(video: np.ndarray) -> Tensor:
    """(..., T, H, W, 3) uint8 -> (..., T, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(video)).float() / 127.5 - 1.0
    return x.movedim(-1, -3)


def float_to_uint8(video: Tensor) -> np.ndarray:
    """(..., T, 3, H, W) float in [-1, 1] -> (..., T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def primitive_label(primitive: str) -> int:
    return PRIMITIVES.index(primitive)


@dataclass
class ConditionBatch:
    """Conditions of B scenes as plain data: ``context`` (B, Tc, H, W, 3) uint8, ``labels`` (B,) int64,
    ``reference`` (B, T_total, H, W, 3) uint8 ground-truth clips (for rewards/metrics), ``specs``: scene dicts,
    ``groups``: (B,) condition ids after :meth:`repeat` (None: every row its own condition)."""

    context: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    specs: list[dict] = field(default_factory=list)
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def conditions(self) -> Conditions:
        return Conditions(context=uint8_to_float(self.context), labels=torch.from_numpy(self.labels).long())

    def take(self, index: np.ndarray) -> ConditionBatch:
        """The rows ``index`` (group ids kept)."""
        return ConditionBatch(self.context[index], self.labels[index], self.reference[index],
                              [self.specs[i] for i in index] if self.specs else [],
                              None if self.groups is None else self.groups[index])

    @classmethod
    def concat(cls, parts: Sequence[ConditionBatch]) -> ConditionBatch:
        """Rows of ``parts`` stacked in order."""
        groups = [p.groups for p in parts]
        return cls(np.concatenate([p.context for p in parts]), np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.reference for p in parts]), [s for p in parts for s in p.specs],
                   None if any(g is None for g in groups) else np.concatenate(groups))

    def repeat(self, k: int) -> ConditionBatch:
        """Each scene repeated k times consecutively: B -> B * k (GRPO groups)."""
        return ConditionBatch(np.repeat(self.context, k, 0), np.repeat(self.labels, k, 0),
                              np.repeat(self.reference, k, 0), [s for s in self.specs for _ in range(k)],
                              groups=np.repeat(np.arange(len(self)), k))


def clips_to_conditions(clips: Sequence, *, context_frames: int = 4) -> ConditionBatch:
    """Rendered clips (``envs.newton.Clip``) -> a ConditionBatch."""
    video = np.stack([c.video for c in clips])
    return ConditionBatch(
        context=video[:, :context_frames],
        labels=np.array([primitive_label(c.spec.primitive) for c in clips], dtype=np.int64),
        reference=video,
        specs=[c.spec.to_dict() for c in clips],
    )


def model_fn(policy: VideoPolicy, cond: Conditions):
    """Adapter for :func:`rollouts.samplers.sample_with_window`: (x, level_batch, step) -> model output."""
    def fn(x: Tensor, level: Tensor, _step: int) -> Tensor:
        return policy(x, level, cond)
    return fn


@dataclass(frozen=True)
class SamplerConfig:
    """``kind``: 'sde' | 'cps' (flow models) or 'ddim' (epsilon models); ``num_steps``: sampling steps;
    ``window``: [start, end) stochastic steps with log-probs (None: all with non-zero noise); ``noise_level``:
    Flow-GRPO ``a`` or DDIM ``eta``; ``shift``: flow time shift; ``shared_noise``: one initial noise per group."""

    kind: samplers.StepKind = "sde"
    num_steps: int = 10
    window: tuple[int, int] | None = None
    noise_level: float = 0.7
    shift: float = 1.0
    shared_noise: bool = False

    def check(self, policy: VideoPolicy) -> None:
        """ConfigError if the sampler does not fit the policy's parametrisation or the window is invalid."""
        wanted = "epsilon" if self.kind == "ddim" else "flow"
        if policy.parametrisation != wanted:
            raise ConfigError(f"sampler.kind = {self.kind!r} needs a {wanted} model, but the policy predicts "
                              f"{policy.parametrisation!r}; use {'ddim' if wanted == 'flow' else 'sde or cps'}")
        window = self.window or samplers.default_window(self.num_steps, self.kind)
        samplers.check_window(tuple(window), self.num_steps, self.kind)


def sampler_levels(policy: VideoPolicy, cfg: SamplerConfig) -> Tensor:
    """Noise-level grid of ``cfg.num_steps + 1`` points (sigma for flow, alpha_bar for DDIM)."""
    if cfg.kind == "ddim":
        return samplers.ddim_alpha_bars(policy.meta["alphas_cumprod"], cfg.num_steps)[1]
    return samplers.flow_sigmas(cfg.num_steps, shift=cfg.shift)


@dataclass
class RolloutBatch:
    """One batch of rollouts; stages add ``rewards`` and ``advantages``.

    ``videos``: (B, T_total, H, W, 3) uint8 = context ++ generated frames; ``latents``: (B, K + 1, T, 3, H, W)
    states in the sample space at the K window steps; ``log_probs``: (B, K) behaviour log-probs (nats/element);
    ``levels``: (K + 1,); ``groups``: (B,) condition ids; ``final``: (B, T, 3, H, W) clean samples in the sample
    space (float, before the uint8 conversion of ``videos``)."""

    conditions: ConditionBatch
    groups: np.ndarray
    videos: np.ndarray
    latents: Tensor
    log_probs: Tensor
    levels: Tensor
    weights_version: int
    sampler: SamplerConfig
    final: Tensor | None = None
    rewards: dict[str, np.ndarray] = field(default_factory=dict)
    advantages: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.groups)

    @classmethod
    def concat(cls, parts: Sequence[RolloutBatch]) -> RolloutBatch:
        """Batches of the same policy version (e.g. shards from several rollout workers) stacked in order, with the
        rewards they all have."""
        if len({p.weights_version for p in parts}) != 1:
            raise InputError("cannot concatenate rollouts of different policy versions")
        finals = [p.final for p in parts]
        return cls(conditions=ConditionBatch.concat([p.conditions for p in parts]),
                   groups=np.concatenate([p.groups for p in parts]),
                   videos=np.concatenate([p.videos for p in parts]),
                   latents=torch.cat([p.latents for p in parts]), log_probs=torch.cat([p.log_probs for p in parts]),
                   levels=parts[0].levels, weights_version=parts[0].weights_version, sampler=parts[0].sampler,
                   final=None if any(f is None for f in finals) else torch.cat(finals),
                   rewards={k: np.concatenate([p.rewards[k] for p in parts]) for k in parts[0].rewards
                            if all(k in p.rewards for p in parts)})

    def take(self, index: np.ndarray) -> RolloutBatch:
        """The rows ``index`` (rewards and advantages included)."""
        rows = torch.from_numpy(np.asarray(index))
        return RolloutBatch(conditions=self.conditions.take(index), groups=self.groups[index],
                            videos=self.videos[index], latents=self.latents[rows], log_probs=self.log_probs[rows],
                            levels=self.levels, weights_version=self.weights_version, sampler=self.sampler,
                            final=None if self.final is None else self.final[rows],
                            rewards={k: v[index] for k, v in self.rewards.items()},
                            advantages=None if self.advantages is None else self.advantages[index])


def shard_by_group(groups: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Row indices split into at most ``num_shards`` contiguous shards of whole groups (rows (B,) -> shards)."""
    ids = np.unique(groups)
    return [np.flatnonzero(np.isin(groups, chunk)) for chunk in np.array_split(ids, min(num_shards, len(ids)))]


def initial_noise(shape: tuple[int, ...], groups: np.ndarray | None, *, shared: bool,
                  generator: torch.Generator) -> Tensor:
    """(B, ...) standard normal noise; with ``shared`` every group gets one draw (DanceGRPO)."""
    if not shared or groups is None:
        return torch.randn(shape, generator=generator)
    uniq, inverse = np.unique(groups, return_inverse=True)
    per_group = torch.randn((len(uniq), *shape[1:]), generator=generator)
    return per_group[torch.from_numpy(inverse)]


def generate(policy: VideoPolicy, cond: Conditions, noise: Tensor, levels: Tensor, cfg: SamplerConfig,
             generator: torch.Generator | None) -> tuple[samplers.Trajectory, Tensor]:
    """Sample future frames: (trajectory in sample space, frames (B, T, 3, H, W) in [-1, 1])."""
    traj = samplers.sample_with_window(model_fn(policy, cond), noise, levels, kind=cfg.kind, window=cfg.window,
                                       noise_level=cfg.noise_level, generator=generator)
    return traj, policy.to_video(traj.final, cond)


class VideoRolloutWorker:
    """Rollout role: ``sample(conditions, weights_version) -> RolloutBatch`` with per-step log-probs.

    Holds a policy copy and a generator seeded with ``seed + worker_index``; ``set_weights`` applies a newer
    :class:`pipeline.weights.WeightsMessage`; ``state`` / ``load_state`` carry the generator over a checkpoint.
    """

    def __init__(self, policy: VideoPolicy, sampler: SamplerConfig, *, seed: int = 0, worker_index: int = 0) -> None:
        sampler.check(policy)
        self.policy, self.sampler, self.version = policy, sampler, 0
        self.policy.net.eval()
        self.generator = torch.Generator().manual_seed(seed + worker_index)

    def set_weights(self, message: WeightsMessage) -> int:
        """Load ``message`` unless it is older than the held weights; returns the version now held."""
        self.version = apply_message(self.policy.net, message, self.version)
        return self.version

    def state(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def sample(self, conditions: ConditionBatch, weights_version: int) -> RolloutBatch:
        """Generate one clip per condition row (rows of one group share ``conditions.groups``)."""
        if weights_version > self.version:
            raise InputError(f"rollout worker holds weights v{self.version}, asked to sample with "
                             f"v{weights_version}: call set_weights first")
        cond = conditions.conditions()
        b, total, h, w, _ = conditions.reference.shape
        frames = total - conditions.context.shape[1]
        noise = initial_noise((b, frames, 3, h, w), conditions.groups, shared=self.sampler.shared_noise,
                              generator=self.generator)
        traj, video = generate(self.policy, cond, noise, sampler_levels(self.policy, self.sampler), self.sampler,
                               self.generator)
        clip = np.concatenate([conditions.context, float_to_uint8(video)], axis=1)
        groups = conditions.groups if conditions.groups is not None else np.arange(b)
        return RolloutBatch(conditions=conditions, groups=groups, videos=clip, latents=traj.latents,
                            log_probs=traj.log_probs, levels=traj.levels, weights_version=self.version,
                            sampler=self.sampler, final=traj.final)
