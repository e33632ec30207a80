"""Video track: post-train a video diffusion policy with NewtonRewards, then evaluate it against the SFT base.

Phases per iteration (:func:`post_train`): conditions (train-split scenes) -> sample (rollout role, k clips per
scene) -> score (reward role: kinematic residual + mass vs the reference clip) -> advantages (group-relative) ->
update (learner role) -> sync weights -> log. With ``learner.algorithm = reward_grad`` the learner samples with
gradients itself and the sample/score/advantage phases collapse into its update.

Roles are passed in as objects with plain-data methods, so in-process objects and Ray actor proxies work alike:
``rollout.sample(conditions, version) -> RolloutBatch``, ``rollout.set_weights(weights, version)``,
``scorer.score(videos, references) -> {name: (B,)}``, ``learner.update(batch) -> metrics``,
``learner.get_weights()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator

from envs.newton import render_clip, sample_spec
from pipeline.config import Strict
from pipeline.errors import ConfigError
from pipeline.learners.advantages import AdvantageConfig, compute_advantages
from rollouts.models import VideoPolicy, load_tiny_policy, load_transformer_policy
from rollouts.video import ConditionBatch, RolloutBatch, SamplerConfig, clips_to_conditions

log = logging.getLogger(__name__)
ITERATION_S, SAMPLE_S, SCORE_S, UPDATE_S = "iteration_s", "sample_s", "score_s", "update_s"


class ModelSection(Strict):
    kind: Literal["tiny", "transformer"] = "tiny"  # tiny: embedded UNet checkpoint; transformer: diffusers + LoRA
    path: str = "assets/sft_base"  # tiny: folder with model.safetensors + config.json; transformer: model folder
    lora_rank: int = Field(8, ge=1)  # transformer only: LoRA rank on to_q/to_k/to_v/to_out.0


class SamplerSection(Strict):
    kind: Literal["sde", "cps", "ddim"] = "sde"  # sde/cps: flow models (Flow-GRPO); ddim: epsilon models (DDPO)
    num_steps: int = Field(10, ge=2)  # sampling steps during training
    window: tuple[int, int] | None = None  # [start, end) stochastic steps with log-probs; None: all
    noise_level: float = Field(0.7, gt=0)  # Flow-GRPO a, or DDIM eta
    shift: float = Field(1.0, gt=0)  # flow time shift of the sigma grid
    shared_noise: bool = False  # one initial noise per group (DanceGRPO)


class DataSection(Strict):
    split: str = "train"  # scenes the policy is post-trained on
    resolution: int = Field(32, ge=8)  # square frame size, px (must match the model)
    num_frames: int = Field(16, ge=6)  # total frames per clip = context frames + generated frames
    conditions_per_iteration: int = Field(4, ge=1)  # scenes per iteration
    group_size: int = Field(4, ge=1)  # clips per scene (GRPO group); >= 2 for grpo/ddpo


class RewardSection(Strict):
    flow: str = "dis"  # flow backend of the kinematic reward for scoring (reward_grad always uses 'lk')
    features: str = "appearance"  # feature backend of the mass reward
    weights: dict[str, float] = Field(default_factory=lambda: {"kinematic": 1.0, "mass": 1.0})  # reward -> weight
    advantage_mode: Literal["weighted_sum", "per_reward"] = "per_reward"  # see pipeline.learners.advantages
    advantage_clip: float = Field(5.0, gt=0)  # |A| bound


class LearnerSection(Strict):
    algorithm: Literal["grpo", "ddpo", "reward_grad"] = "grpo"
    lr: float = Field(1e-4, gt=0)  # AdamW learning rate
    clip_range: float = Field(1e-3, gt=0)  # PPO ratio clip (grpo/ddpo)
    kl_beta: float = Field(0.0, ge=0)  # KL-to-reference weight (grpo/ddpo)
    timestep_fraction: float = Field(1.0, gt=0, le=1)  # share of window steps trained per minibatch
    minibatch: int = Field(8, ge=1)  # clips per forward/backward pass
    grad_accum: int = Field(1, ge=1)  # minibatches per optimizer step
    epochs: int = Field(1, ge=1)  # passes over each batch
    grad_steps: int = Field(1, ge=1)  # reward_grad: last K sampling steps that keep gradients
    checkpointing: bool = False  # reward_grad: recompute those steps in backward (less memory)


class EvalSection(Strict):
    splits: list[str] = Field(default_factory=lambda: ["test"])  # held-out splits evaluated after training
    clips: int = Field(24, ge=1)  # clips per split
    num_steps: int = Field(20, ge=2)  # Euler ODE steps for evaluation samples
    seed: int = 1234  # scenes and initial noise (same for base and post-trained)


class VideoSection(Strict):
    model: ModelSection = ModelSection()
    sampler: SamplerSection = SamplerSection()
    data: DataSection = DataSection()
    reward: RewardSection = RewardSection()
    learner: LearnerSection = LearnerSection()
    eval: EvalSection = EvalSection()
    iterations: int = Field(40, ge=1)  # post-training iterations (upper bound)
    time_budget_s: float = Field(420.0, gt=0)  # stop post-training after this many seconds
    threads: int = Field(2, ge=1)  # torch CPU threads of the in-process roles

    @model_validator(mode="after")
    def _check(self) -> VideoSection:
        if self.learner.algorithm != "reward_grad" and self.data.group_size < 2:
            raise ValueError(f"data.group_size = {self.data.group_size}: grpo/ddpo need >= 2 clips per scene")
        wanted = "ddim" if self.learner.algorithm == "ddpo" else None
        if wanted and self.sampler.kind != wanted:
            raise ValueError(f"sampler.kind = {self.sampler.kind!r}: learner.algorithm = ddpo needs 'ddim'")
        return self


def parse_video_section(data: dict[str, Any] | None) -> VideoSection:
    """Validate the ``video:`` config dict; ConfigError names the key."""
    try:
        return VideoSection.model_validate(data or {})
    except ValidationError as exc:
        msgs = [f"config key 'video.{'.'.join(map(str, e['loc']))}': {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()]
        raise ConfigError("; ".join(msgs)) from None


def sampler_config(section: SamplerSection) -> SamplerConfig:
    return SamplerConfig(kind=section.kind, num_steps=section.num_steps,
                         window=tuple(section.window) if section.window else None,
                         noise_level=section.noise_level, shift=section.shift, shared_noise=section.shared_noise)


def load_policy(section: ModelSection) -> VideoPolicy:
    """The policy named by ``video.model`` (errors for a missing path / wrong class come before any work)."""
    if section.kind == "tiny":
        return load_tiny_policy(section.path)
    return load_transformer_policy(section.path, lora_rank=section.lora_rank)


def make_conditions(split: str, n: int, rng: np.random.Generator, *, resolution: int, num_frames: int
                    ) -> ConditionBatch:
    """Render ``n`` scenes of ``split`` (context = first 4 frames, reference = the whole clip)."""
    specs = [sample_spec(split, rng, resolution=(resolution, resolution), num_frames=num_frames) for _ in range(n)]
    return clips_to_conditions([render_clip(s, seed=int(rng.integers(1 << 31))) for s in specs])


def post_train(cfg: VideoSection, *, rollout, scorer, learner, rng: np.random.Generator,
               log_fn: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """The post-training loop over role objects; returns one metrics dict per iteration."""
    adv_cfg = AdvantageConfig(weights=cfg.reward.weights, mode=cfg.reward.advantage_mode,
                              clip=cfg.reward.advantage_clip)
    history: list[dict[str, float]] = []
    start, version = time.perf_counter(), 0
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        conditions = make_conditions(cfg.data.split, cfg.data.conditions_per_iteration, rng,
                                     resolution=cfg.data.resolution, num_frames=cfg.data.num_frames)
        if cfg.learner.algorithm == "reward_grad":
            metrics = learner.update(conditions.repeat(cfg.data.group_size))
            t1 = t2 = time.perf_counter()
        else:
            batch: RolloutBatch = rollout.sample(conditions.repeat(cfg.data.group_size), version)
            t1 = time.perf_counter()
            batch.rewards = scorer.score(batch.videos, batch.conditions.reference)
            batch.advantages = compute_advantages(batch.rewards, batch.groups, adv_cfg)
            t2 = time.perf_counter()
            metrics = learner.update(batch)
            metrics.update({f"reward_{k}": float(np.mean(v)) for k, v in batch.rewards.items()})
        version += 1
        rollout.set_weights(learner.get_weights(), version)
        t3 = time.perf_counter()
        metrics.update({SAMPLE_S: t1 - t0, SCORE_S: t2 - t1, UPDATE_S: t3 - t2, ITERATION_S: t3 - t0})
        history.append(metrics)
        if log_fn is not None:
            log_fn(it, metrics)
        if time.perf_counter() - start > cfg.time_budget_s:
            log.info("video post-training: time budget %.0f s reached after %d iterations", cfg.time_budget_s, it + 1)
            break
    return history


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
