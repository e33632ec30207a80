"""Reward-gradient learner (NewtonRewards / VADER / DRaFT-K): back-propagate differentiable rewards into the
denoiser through the last K sampling steps.

Sampling is the deterministic Euler ODE from noise; the first ``num_steps - grad_steps`` steps run without
autograd (truncated backprop, DRaFT-K), the last ``grad_steps`` keep the graph (optionally re-computed in the
backward pass with ``torch.utils.checkpoint`` to save memory). The clean clip ``context ++ generated`` goes through
``reward_fn`` (e.g. the kinematic residual of a differentiable flow backend and the mass-conservation feature
distance to the reference clip), and ``loss = -mean(sum_i w_i r_i)``.

An update is planned first (:class:`RewardGradPlanner` draws the initial noise) as micro-batches of ``minibatch``
clips whose gradients accumulate into one optimizer step; each goes through :meth:`RewardGradLearner.loss`, also as
a replica of :class:`pipeline.learner_group.LearnerGroup`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pipeline.errors import ConfigError
from pipeline.learners.base import VideoLearner
from rollouts.models import Conditions, VideoPolicy
from rollouts.samplers import flow_sigmas
from rollouts.video import ConditionBatch, uint8_to_float

#: reward_fn(video (B, T_total, 3, H, W) in [-1, 1], reference (B, T_total, 3, H, W)) -> name -> (B,) rewards.
RewardFn = Callable[[Tensor, Tensor], Mapping[str, Tensor]]
LOSS, GRAD_NORM = "loss", "grad_norm"


@dataclass(frozen=True)
class RewardGradConfig:
    """``lr``: AdamW learning rate; ``num_steps``: Euler steps per sample; ``grad_steps``: K last steps that
    keep gradients; ``weights``: reward name -> weight of ``r`` in the objective (higher reward is better);
    ``checkpointing``: recompute the K steps in backward; ``max_grad_norm``: gradient clipping;
    ``minibatch``: clips per backward pass (gradients accumulate over the batch); ``seed``: initial noise."""

    weights: Mapping[str, float]
    lr: float = 1e-4
    num_steps: int = 10
    grad_steps: int = 1
    checkpointing: bool = False
    max_grad_norm: float = 1.0
    minibatch: int = 8
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.grad_steps <= self.num_steps:
            raise ConfigError(f"reward_grad.grad_steps = {self.grad_steps}: expected 1 <= grad_steps <= "
                              f"num_steps = {self.num_steps}")
        if self.lr <= 0 or self.minibatch < 1 or not self.weights:
            raise ConfigError(f"reward_grad.lr = {self.lr}, minibatch = {self.minibatch}, weights = "
                              f"{dict(self.weights)}: expected lr > 0, minibatch >= 1, at least one weight")


def sample_with_grad(policy: VideoPolicy, cond: Conditions, noise: Tensor, sigmas: Tensor, *, grad_steps: int,
                     checkpointing: bool = False) -> Tensor:
    """Euler ODE from ``noise`` (B, T, 3, H, W); gradients flow through the last ``grad_steps`` steps only.
    Returns the clean sample in the policy's sample space."""
    x, n = noise, len(sigmas) - 1
    for i in range(n):
        sigma, dt = sigmas[i].expand(len(x)), sigmas[i + 1] - sigmas[i]
        if i < n - grad_steps:
            with torch.no_grad():
                x = x + policy(x, sigma, cond) * dt
        elif checkpointing:
            x = x + checkpoint(policy, x, sigma, cond, use_reentrant=False) * dt
        else:
            x = x + policy(x, sigma, cond) * dt
    return x


@dataclass
class RewardGradMicroBatch:
    """One forward/backward pass: the clips of ``conditions`` sampled from ``noise`` (m, T, 3, H, W); ``scale``:
    micro-batches / clips of the update, so that the mean of ``-scale * sum(objective)`` over the micro-batches is
    minus the update's mean objective."""

    conditions: ConditionBatch
    noise: Tensor
    scale: float


class RewardGradPlanner:
    """The randomness of reward-gradient updates: the initial noise of every clip (torch generator, ``seed``)."""

    def __init__(self, config: RewardGradConfig) -> None:
        self.generator = torch.Generator().manual_seed(config.seed)

    def plan(self, conditions: ConditionBatch, minibatch: int) -> list[RewardGradMicroBatch]:
        """``conditions`` in order, in micro-batches of ``minibatch`` clips."""
        n, frames, h, w = conditions.reference.shape[:4]
        frames -= conditions.context.shape[1]
        chunks = [np.arange(s, min(n, s + minibatch)) for s in range(0, n, minibatch)]
        return [RewardGradMicroBatch(conditions.take(idx), torch.randn((len(idx), frames, 3, h, w),
                                                                       generator=self.generator), len(chunks) / n)
                for idx in chunks]

    def state(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


class RewardGradLearner(VideoLearner):
    """Learner role: ``update(conditions) -> metrics`` samples with gradients and ascends the rewards;
    ``weights(version)``, ``state()`` / ``load_state()`` as every :class:`VideoLearner`; also a
    :class:`pipeline.learner_group.Learner` replica (``loss(model, micro_batch)``)."""

    def __init__(self, policy: VideoPolicy, reward_fn: RewardFn, config: RewardGradConfig) -> None:
        config.validate()
        self.policy, self.reward_fn, self.config = policy, reward_fn, config
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr, weight_decay=0.0)
        self.planner = RewardGradPlanner(config)
        self.version = 0

    def generator_state(self) -> dict[str, Tensor]:
        return self.planner.state()

    def load_generator_state(self, state: dict[str, Tensor]) -> None:
        self.planner.load_state(state)

    def loss(self, model: nn.Module, micro: RewardGradMicroBatch) -> tuple[Tensor, dict[str, float]]:
        """``-scale * sum(objective)`` of one micro-batch sampled through ``model`` (the net or its DDP wrapper);
        metrics: the micro-batch means of each reward and of the loss per clip."""
        cfg, cond = self.config, micro.conditions.conditions()
        sample = sample_with_grad(self._through(model), cond, micro.noise, flow_sigmas(cfg.num_steps),
                                  grad_steps=cfg.grad_steps, checkpointing=cfg.checkpointing)
        video = torch.cat([cond.context, self.policy.to_video(sample, cond)], dim=1)
        rewards = self.reward_fn(video, uint8_to_float(micro.conditions.reference))
        objective = sum(w * rewards[k] for k, w in cfg.weights.items())
        metrics = {k: float(v.detach().mean()) for k, v in {**rewards, LOSS: -objective}.items()}
        return -objective.sum() * micro.scale, metrics

    def update(self, conditions: ConditionBatch) -> dict[str, float]:
        """One optimizer step over all clips of ``conditions``; metrics: loss, grad_norm, mean of each reward."""
        plan = self.planner.plan(conditions, self.config.minibatch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in plan:
            loss, metrics = self.loss(self.model, micro)
            (loss / len(plan)).backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * len(micro.conditions)
        norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.model.eval()
        self.version += 1
        return {**{k: v / len(conditions) for k, v in sums.items()}, GRAD_NORM: float(norm)}
