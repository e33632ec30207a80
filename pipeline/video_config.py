"""Typed config of the video track (the ``video:`` section): every field commented with units and interactions,
validated when the config loads (:func:`parse_video_section`), together with what the ``runtime`` section asks of
it (:func:`check_runtime`), so that a bad value fails before any work starts."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pipeline.config import RuntimeSection, Strict
from pipeline.errors import ConfigError
from rewards.newton import REWARD_NAMES


class ModelSection(Strict):
    kind: Literal["tiny", "transformer"] = "tiny"  # tiny: embedded UNet checkpoint; transformer: diffusers + LoRA
    path: str = "assets/sft_base"  # tiny: folder with model.safetensors + config.json; transformer: model folder
    lora_rank: int = Field(8, ge=1)  # transformer only: LoRA rank on to_q/to_k/to_v/to_out.0


class SamplerSection(Strict):
    kind: Literal["sde", "cps", "ddim"] = "sde"  # sde/cps: flow models (Flow-GRPO); ddim: epsilon models (DDPO)
    num_steps: int = Field(10, ge=2)  # sampling steps during training
    window: tuple[int, int] | None = (0, 4)  # [start, end) stochastic steps with log-probs; None: all
    noise_level: float = Field(0.7, gt=0)  # Flow-GRPO a, or DDIM eta
    shift: float = Field(1.0, gt=0)  # flow time shift of the sigma grid
    shared_noise: bool = True  # one initial noise per group (DanceGRPO): reward differences within a group
    # then come from the window's SDE noise only


class DataSection(Strict):
    split: str = "train"  # scenes the policy is post-trained on
    resolution: int = Field(32, ge=8)  # square frame size, px (must match the model)
    num_frames: int = Field(16, ge=6)  # total frames per clip = context frames + generated frames
    conditions_per_iteration: int = Field(2, ge=1)  # scenes per iteration
    group_size: int = Field(8, ge=1)  # clips per scene (GRPO group); >= 2 for grpo/ddpo


class RewardSection(Strict):
    flow: str = "dis"  # flow backend of the kinematic reward for scoring (reward_grad always uses 'lk')
    features: str = "appearance"  # feature backend of the mass reward
    weights: dict[str, float] = Field(default_factory=lambda: {"kinematic": 1.0, "mass": 1.0})  # reward -> weight
    # (kinematic: flow residual, mass, trajectory: centre-of-mass residual; rewards.newton). With reward_grad
    # leave mass out: the appearance-feature mass reward is gamed by reward gradients (objects stop; measured)
    advantage_mode: Literal["weighted_sum", "per_reward"] = "weighted_sum"  # see pipeline.learners.advantages;
    # per_reward turns the near-constant mass reward of a group into pure noise
    advantage_clip: float = Field(5.0, gt=0)  # |A| bound

    @model_validator(mode="after")
    def _check_weights(self) -> RewardSection:
        unknown = sorted(set(self.weights) - set(REWARD_NAMES))
        if unknown:
            raise ValueError(f"weights: unknown rewards {unknown}; expected some of {list(REWARD_NAMES)}")
        values = list(self.weights.values())
        if not any(w > 0 for w in values) or not all(math.isfinite(w) and w >= 0 for w in values):
            raise ValueError(f"weights: expected finite weights >= 0, at least one > 0; got {self.weights}")
        return self


class LearnerSection(Strict):
    algorithm: Literal["grpo", "ddpo", "reward_grad"] = "grpo"  # measured on the shipped SFT base at equal wall
    # time (configs/video/*.yaml): reward_grad -41 % kinematic residual / +11 % on the five metrics, grpo -1 % / -9 %
    lr: float = Field(1e-5, gt=0)  # AdamW learning rate
    clip_range: float = Field(1e-3, gt=0)  # PPO ratio clip (grpo/ddpo)
    kl_beta: float = Field(1.0, ge=0)  # KL-to-reference weight (grpo/ddpo)
    timestep_fraction: float = Field(1.0, gt=0, le=1)  # share of window steps trained per minibatch
    minibatch: int = Field(16, ge=1)  # clips per forward/backward pass; with runtime.num_learners = R each replica
    # takes ceil(minibatch / R) rows of its shard (whole groups), so an optimizer step sees about as many clips
    grad_accum: int = Field(1, ge=1)  # minibatches per optimizer step
    epochs: int = Field(1, ge=1)  # passes over each batch
    objective: Literal["clipped", "weighted_fm"] = "clipped"  # grpo/ddpo: PPO surrogate on stored transitions, or
    # advantage-weighted flow matching on the rollouts' clean samples (RAFT/AWR style; less gradient noise)
    grad_steps: int = Field(1, ge=1)  # reward_grad: last K sampling steps that keep gradients
    checkpointing: bool = False  # reward_grad: recompute those steps in backward (less memory)


class EvalSection(Strict):
    splits: list[str] = Field(default_factory=lambda: ["test"])  # held-out splits evaluated after training
    clips: int = Field(48, ge=1)  # clips per split
    num_steps: int = Field(20, ge=2)  # Euler ODE steps for evaluation samples
    seed: int = 1234  # scenes and initial noise (same for base and post-trained)


class VideoSection(Strict):
    model: ModelSection = ModelSection()
    sampler: SamplerSection = SamplerSection()
    data: DataSection = DataSection()
    reward: RewardSection = RewardSection()
    learner: LearnerSection = LearnerSection()
    eval: EvalSection = EvalSection()
    iterations: int = Field(40, ge=1)  # post-training iterations (upper bound; ~1.5 s each for the defaults)
    time_budget_s: float = Field(420.0, gt=0)  # stop post-training after this many seconds (a resumed run counts
    # the seconds before its checkpoint)
    checkpoint_every: int = Field(10, ge=0)  # checkpoint every this many iterations (0: only at the end); the last
    # checkpoint.keep_last are kept; `newtonrl train --resume RUN_DIR` continues from the newest
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
        msgs = [f"config key '{'.'.join(['video', *map(str, e['loc'])])}': {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()]
        raise ConfigError("; ".join(msgs)) from None


def replica_shares(cfg: VideoSection, runtime: RuntimeSection) -> tuple[int, int]:
    """(clips, clips per micro-batch) of each learner replica: equal shares of whole groups and of the minibatch."""
    n = max(1, runtime.num_learners)
    return cfg.data.conditions_per_iteration // n * cfg.data.group_size, math.ceil(cfg.learner.minibatch / n)


def check_runtime(cfg: VideoSection, runtime: RuntimeSection) -> None:
    """ConfigError for a ``runtime`` the video track of ``cfg`` cannot run with (checked when the config loads):
    learner replicas need batches that split into equal shares of whole groups (and, for grpo/ddpo, of whole
    accumulation steps); asynchronous rollouts need a learner that learns from rollouts."""
    lc, n = cfg.learner, runtime.num_learners
    if runtime.async_rollouts and lc.algorithm == "reward_grad":
        raise ConfigError("runtime.async_rollouts: video.learner.algorithm = reward_grad samples inside its update, "
                          "there are no rollouts to run ahead; set runtime.async_rollouts: false")
    if not n:
        return
    if runtime.grad_accumulation != 1:
        raise ConfigError(f"runtime.grad_accumulation = {runtime.grad_accumulation}: the video learner accumulates "
                          "over video.learner.grad_accum minibatches; leave runtime.grad_accumulation at 1")
    if cfg.data.conditions_per_iteration % n:
        raise ConfigError(f"video.data.conditions_per_iteration = {cfg.data.conditions_per_iteration}: expected a "
                          f"multiple of runtime.num_learners = {n} (each replica trains on whole groups, equal shares)")
    rows, minibatch = replica_shares(cfg, runtime)
    minibatches = lc.epochs * math.ceil(rows / minibatch)
    if lc.algorithm != "reward_grad" and minibatches % lc.grad_accum:
        raise ConfigError(f"video.learner.grad_accum = {lc.grad_accum}: each of the {n} learners has {minibatches} "
                          f"minibatches per update (epochs x its {rows} clips / {minibatch}); expected a divisor")
