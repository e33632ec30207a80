"""Policy-gradient learner for diffusion/flow video policies: Flow-GRPO (SDE/CPS sampler) and DDPO (DDIM sampler).

For every stored window transition ``x_j -> x_{j+1}`` the current policy re-scores ``log p_theta(x_{j+1} | x_j)``
(:func:`rollouts.samplers.stochastic_step` with ``prev_sample``); with ``r = exp(log p_theta - log p_old)``:

    loss = mean( max(-A r, -A clip(r, 1 - eps, 1 + eps)) ) + beta * KL,
    KL   = mean((mu_theta - mu_ref)^2) / (2 std^2)      (Flow-GRPO; mu_ref from the reference model)

A random ``timestep_fraction`` of the window steps is trained per minibatch; gradients are accumulated over
``grad_accum`` minibatches (x the chosen steps) before each optimizer step. With the DDIM sampler in the batch this
is DDPO (clip 1e-4, advantages clipped to +-5 upstream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import ConfigError, InputError
from rollouts.models import Conditions, VideoPolicy
from rollouts.samplers import stochastic_step
from rollouts.video import RolloutBatch

LOSS, RATIO, CLIPFRAC, KL, APPROX_KL, GRAD_NORM = "loss", "ratio_mean", "clip_frac", "kl", "approx_kl", "grad_norm"


@dataclass(frozen=True)
class GRPOConfig:
    """``lr``: AdamW learning rate; ``clip_range``: PPO ratio clip eps; ``kl_beta``: weight of the KL to the
    reference (0 = no reference forward pass); ``timestep_fraction``: share of window steps trained per
    minibatch (DanceGRPO 0.6); ``minibatch``: samples per forward pass; ``grad_accum``: minibatches per optimizer
    step; ``epochs``: passes over a batch; ``max_grad_norm``: gradient clipping; ``objective``: 'clipped'
    (the PPO surrogate above) or 'weighted_fm' (see :meth:`GRPOLearner.weighted_fm_loss`); ``seed``: timestep
    choice and flow-matching noise."""

    lr: float = 1e-4
    clip_range: float = 1e-4
    kl_beta: float = 0.0
    timestep_fraction: float = 1.0
    minibatch: int = 8
    grad_accum: int = 1
    epochs: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    objective: Literal["clipped", "weighted_fm"] = "clipped"
    seed: int = 0

    def validate(self) -> None:
        checks = {"lr": self.lr > 0, "clip_range": self.clip_range > 0, "kl_beta": self.kl_beta >= 0,
                  "timestep_fraction": 0 < self.timestep_fraction <= 1, "minibatch": self.minibatch >= 1,
                  "grad_accum": self.grad_accum >= 1, "epochs": self.epochs >= 1,
                  "max_grad_norm": self.max_grad_norm > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if self.objective not in ("clipped", "weighted_fm"):
            bad.append("objective")
        if bad:
            raise ConfigError(f"grpo.{bad[0]} = {getattr(self, bad[0])!r}: out of range (see GRPOConfig docs)")


class GRPOLearner:
    """Learner role: ``update(scored_batch) -> metrics``, ``get_weights()``, ``set_weights(weights)``."""

    def __init__(self, policy: VideoPolicy, config: GRPOConfig) -> None:
        config.validate()
        self.policy, self.config = policy, config
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.generator = np.random.default_rng(config.seed)
        self.torch_generator = torch.Generator().manual_seed(config.seed)
        self.version = 0

    def get_weights(self) -> dict[str, Tensor]:
        return self.policy.get_weights()

    def set_weights(self, weights: dict[str, Tensor]) -> None:
        self.policy.set_weights(weights)

    def transition_loss(self, batch: RolloutBatch, idx: np.ndarray, j: int, cond: Conditions
                        ) -> tuple[Tensor, dict[str, float]]:
        """Clipped surrogate (+ KL) of window step ``j`` for samples ``idx``; returns (loss, metrics)."""
        cfg, sampler = self.config, batch.sampler
        x, x_next = batch.latents[idx, j], batch.latents[idx, j + 1]
        level = batch.levels[j].expand(len(idx))
        out = self.policy(x, level, cond)
        step = stochastic_step(sampler.kind, out, batch.levels[j], x, level_next=batch.levels[j + 1],
                               noise_level=sampler.noise_level, prev_sample=x_next)
        adv = torch.from_numpy(batch.advantages[idx]).float()
        diff = step.log_prob - batch.log_probs[idx, j]
        ratio = torch.exp(diff)
        ratio_d = ratio.detach()
        surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
        loss = surrogate.mean()
        metrics = {RATIO: float(ratio_d.mean()), CLIPFRAC: float(((ratio_d - 1).abs() > cfg.clip_range).float().mean()),
                   APPROX_KL: float(0.5 * (diff.detach() ** 2).mean())}
        if cfg.kl_beta > 0:
            ref = stochastic_step(sampler.kind, self.policy.reference(x, level, cond), batch.levels[j], x,
                                  level_next=batch.levels[j + 1], noise_level=sampler.noise_level, prev_sample=x_next)
            std = step.std.flatten(1)[:, 0]
            kl = ((step.mean - ref.mean) ** 2).flatten(1).mean(1) / (2 * std**2)
            loss = loss + cfg.kl_beta * kl.mean()
            metrics[KL] = float(kl.detach().mean())
        metrics[LOSS] = float(loss.detach())
        return loss, metrics

    def weighted_fm_loss(self, batch: RolloutBatch, idx: np.ndarray, cond: Conditions
                         ) -> tuple[Tensor, dict[str, float]]:
        """Advantage-weighted flow matching on the rollouts' own clean samples (RAFT / AWR style):
        ``sum_i w_i |x_sigma - sigma v_theta(x_sigma) - x0_i|^2 / sum_i w_i`` with ``w = max(A, 0)``, sigma ~ U(0, 1).
        A supervised target per sample instead of one log-prob per step: far less gradient noise for small batches.
        """
        if batch.final is None:
            raise InputError("grpo objective 'weighted_fm' needs the batch's clean samples (RolloutBatch.final)")
        x0 = batch.final[idx].float()
        weights = torch.from_numpy(batch.advantages[idx]).float().clamp(min=0)
        if float(weights.sum()) == 0.0:
            return torch.zeros((), requires_grad=True), {LOSS: 0.0}
        sigma = torch.rand(len(idx), generator=self.torch_generator).clamp(min=1e-3)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - s) * x0 + s * torch.randn(x0.shape, generator=self.torch_generator)
        per_sample = ((x_t - s * self.policy(x_t, sigma, cond) - x0) ** 2).flatten(1).mean(1)
        loss = (weights * per_sample).sum() / weights.sum()
        return loss, {LOSS: float(loss.detach())}

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One or more PPO-style passes over a scored batch; returns averaged metrics."""
        if batch.advantages is None:
            raise InputError("grpo update: the batch has no advantages; run the advantage stage first")
        cfg, n, k = self.config, len(batch), batch.log_probs.shape[1]
        cond_all = batch.conditions.conditions()
        per_mb = max(1, math.ceil(cfg.timestep_fraction * k))
        self.policy.net.train()
        history: list[dict[str, float]] = []
        micro = 0
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.epochs):
            order = self.generator.permutation(n)
            for start in range(0, n, cfg.minibatch):
                idx = np.sort(order[start:start + cfg.minibatch])
                cond = cond_all.index(torch.from_numpy(idx))
                if cfg.objective == "weighted_fm":
                    loss, metrics = self.weighted_fm_loss(batch, idx, cond)
                    (loss / cfg.grad_accum).backward()
                    history.append(metrics)
                for j in np.sort(self.generator.permutation(k)[:per_mb]) if cfg.objective == "clipped" else []:
                    loss, metrics = self.transition_loss(batch, idx, int(j), cond)
                    (loss / (per_mb * cfg.grad_accum)).backward()
                    history.append(metrics)
                micro += 1
                if micro % cfg.grad_accum == 0:
                    history[-1][GRAD_NORM] = self._step()
        if micro % cfg.grad_accum:
            history[-1][GRAD_NORM] = self._step()
        self.policy.net.eval()
        self.version += 1
        keys = {key for h in history for key in h}
        return {key: float(np.mean([h[key] for h in history if key in h])) for key in sorted(keys)}

    def _step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)
