"""Reward-gradient learner (NewtonRewards / VADER / DRaFT-K): back-propagate differentiable rewards into the
denoiser through the last K sampling steps.

Sampling is the deterministic Euler ODE from noise; the first ``num_steps - grad_steps`` steps run without
autograd (truncated backprop, DRaFT-K), the last ``grad_steps`` keep the graph (optionally re-computed in the
backward pass with ``torch.utils.checkpoint`` to save memory). The clean clip ``context ++ generated`` goes through
``reward_fn`` (e.g. the kinematic residual of a differentiable flow backend and the mass-conservation feature
distance to the reference clip), and ``loss = -mean(sum_i w_i r_i)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pipeline.errors import ConfigError
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


class RewardGradLearner:
    """Learner role: ``update(conditions) -> metrics`` samples with gradients and ascends the rewards."""

    def __init__(self, policy: VideoPolicy, reward_fn: RewardFn, config: RewardGradConfig) -> None:
        config.validate()
        self.policy, self.reward_fn, self.config = policy, reward_fn, config
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.version = 0

    def get_weights(self) -> dict[str, Tensor]:
        return self.policy.get_weights()

    def set_weights(self, weights: dict[str, Tensor]) -> None:
        self.policy.set_weights(weights)

    def update(self, conditions: ConditionBatch) -> dict[str, float]:
        """One optimizer step over all clips of ``conditions``; metrics: loss, grad_norm, mean of each reward."""
        cfg = self.config
        cond_all = conditions.conditions()
        reference = uint8_to_float(conditions.reference)
        frames = reference.shape[1] - cond_all.context.shape[1]
        sigmas = flow_sigmas(cfg.num_steps)
        self.policy.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        n = len(conditions)
        for start in range(0, n, cfg.minibatch):
            idx = torch.arange(start, min(n, start + cfg.minibatch))
            cond = cond_all.index(idx)
            noise = torch.randn((len(idx), frames, *reference.shape[2:]), generator=self.generator)
            sample = sample_with_grad(self.policy, cond, noise, sigmas, grad_steps=cfg.grad_steps,
                                      checkpointing=cfg.checkpointing)
            video = torch.cat([cond.context, self.policy.to_video(sample, cond)], dim=1)
            rewards = self.reward_fn(video, reference[idx])
            objective = sum(w * rewards[k] for k, w in cfg.weights.items())
            loss = -objective.sum() / n
            loss.backward()
            for k, v in {**rewards, LOSS: -objective}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().sum())
        norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.policy.net.eval()
        self.version += 1
        metrics = {k: v / n for k, v in sums.items()}
        metrics[GRAD_NORM] = float(norm)
        return {k: float(np.float64(v)) for k, v in metrics.items()}
