"""Policy-gradient learner for diffusion/flow video policies: Flow-GRPO (SDE/CPS sampler) and DDPO (DDIM sampler).

For every stored window transition ``x_j -> x_{j+1}`` the current policy re-scores ``log p_theta(x_{j+1} | x_j)``
(:func:`rollouts.samplers.stochastic_step` with ``prev_sample``); with ``r = exp(log p_theta - log p_old)``:

    loss = mean( max(-A r, -A clip(r, 1 - eps, 1 + eps)) ) + beta * KL,
    KL   = mean((mu_theta - mu_ref)^2) / (2 std^2)      (Flow-GRPO; mu_ref from the reference model)

A random ``timestep_fraction`` of the window steps is trained per minibatch; gradients are accumulated over
``grad_accum`` minibatches (x the chosen steps) before each optimizer step. With the DDIM sampler in the batch this
is DDPO (clip 1e-4, advantages clipped to +-5 upstream).

An update is planned first (:class:`GRPOPlanner` draws all its randomness: sample order, trained steps,
flow-matching noise) as a list of :class:`MicroBatch`, then each goes through :meth:`GRPOLearner.loss`. The same
learner is a replica of :class:`pipeline.learner_group.LearnerGroup` (``model``, ``optimizer``, ``loss``): there
the driver plans and the replicas run the micro-batches.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.errors import ConfigError, InputError
from pipeline.learners.base import VideoLearner
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


@dataclass
class MicroBatch:
    """One forward/backward pass of an update: rows ``idx`` of ``batch``; ``step``: the window step trained
    (objective 'clipped'), or ``noise``: (sigma (n,), eps (n, T, 3, H, W)) of objective 'weighted_fm'."""

    batch: RolloutBatch
    idx: np.ndarray
    step: int | None = None
    noise: tuple[Tensor, Tensor] | None = None


class GRPOPlanner:
    """The randomness of GRPO updates, drawn when an update is planned: sample order and trained window steps
    (numpy generator), flow-matching noise (torch generator); both seeded with ``config.seed``."""

    def __init__(self, config: GRPOConfig) -> None:
        self.config = config
        self.generator = np.random.default_rng(config.seed)
        self.torch_generator = torch.Generator().manual_seed(config.seed)

    def steps_per_minibatch(self, window_steps: int) -> int:
        """Micro-batches per minibatch: the trained share of the ``window_steps`` (1 for 'weighted_fm')."""
        if self.config.objective == "weighted_fm":
            return 1
        return max(1, math.ceil(self.config.timestep_fraction * window_steps))

    def fm_noise(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Flow-matching draws for samples of ``shape`` (n, T, 3, H, W): sigma ~ U(1e-3, 1) (n,), eps ~ N(0, I)."""
        sigma = torch.rand(shape[0], generator=self.torch_generator).clamp(min=1e-3)
        return sigma, torch.randn(shape, generator=self.torch_generator)

    def plan(self, batch: RolloutBatch, minibatch: int) -> list[MicroBatch]:
        """``epochs`` passes over ``batch`` in random minibatches of ``minibatch`` rows, each split into
        :meth:`steps_per_minibatch` micro-batches."""
        k = batch.log_probs.shape[1]
        per_mb, out = self.steps_per_minibatch(k), []
        for _ in range(self.config.epochs):
            order = self.generator.permutation(len(batch))
            for start in range(0, len(batch), minibatch):
                idx = np.sort(order[start:start + minibatch])
                if self.config.objective == "weighted_fm":
                    out.append(MicroBatch(batch, idx, noise=self.fm_noise((len(idx), *batch.latents.shape[2:]))))
                else:
                    steps = np.sort(self.generator.permutation(k)[:per_mb])
                    out += [MicroBatch(batch, idx, step=int(j)) for j in steps]
        return out

    def state(self) -> dict[str, Any]:
        return {"generator": self.generator.bit_generator.state, "torch_generator": self.torch_generator.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.generator.bit_generator.state = state["generator"]
        self.torch_generator.set_state(state["torch_generator"])


class GRPOLearner(VideoLearner):
    """Learner role: ``update(scored_batch) -> metrics``, ``weights(version)``, ``state()`` / ``load_state()``;
    also a :class:`pipeline.learner_group.Learner` replica (``model``, ``optimizer``, ``scheduler``, ``loss``)."""

    def __init__(self, policy: VideoPolicy, config: GRPOConfig) -> None:
        config.validate()
        self.policy, self.config = policy, config
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.planner = GRPOPlanner(config)
        self.version = 0
        if config.kl_beta > 0 and not policy.lora and policy.frozen_reference is None:
            # the reference is the weights at construction, also when a checkpoint is loaded afterwards
            policy.frozen_reference = copy.deepcopy(policy.net).requires_grad_(False).eval()

    def transition_loss(self, batch: RolloutBatch, idx: np.ndarray, j: int, cond: Conditions, *,
                        net: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
        """Clipped surrogate (+ KL) of window step ``j`` for samples ``idx``; returns (loss, metrics)."""
        cfg, sampler = self.config, batch.sampler
        x, x_next = batch.latents[idx, j], batch.latents[idx, j + 1]
        level = batch.levels[j].expand(len(idx))
        out = self._through(net)(x, level, cond)
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

    def weighted_fm_loss(self, batch: RolloutBatch, idx: np.ndarray, cond: Conditions,
                         noise: tuple[Tensor, Tensor] | None = None, *, net: nn.Module | None = None
                         ) -> tuple[Tensor, dict[str, float]]:
        """Advantage-weighted flow matching on the rollouts' own clean samples (RAFT / AWR style):
        ``sum_i w_i |x_sigma - sigma v_theta(x_sigma) - x0_i|^2 / sum_i w_i`` with ``w = max(A, 0)``, sigma ~ U(0, 1).
        A supervised target per sample instead of one log-prob per step: far less gradient noise for small batches.
        ``noise``: the (sigma, eps) draws (None: drawn now by the planner). Without a positive advantage the loss is 0
        (with a zero gradient through the model, so that data-parallel replicas stay in step).
        """
        if batch.final is None:
            raise InputError("grpo objective 'weighted_fm' needs the batch's clean samples (RolloutBatch.final)")
        x0 = batch.final[idx].float()
        weights = torch.from_numpy(batch.advantages[idx]).float().clamp(min=0)
        sigma, eps = noise if noise is not None else self.planner.fm_noise(tuple(x0.shape))
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - s) * x0 + s * eps
        per_sample = ((x_t - s * self._through(net)(x_t, sigma, cond) - x0) ** 2).flatten(1).mean(1)
        loss = (weights * per_sample).sum() / weights.sum().clamp(min=1e-12)
        return loss, {LOSS: float(loss.detach())}

    def loss(self, model: nn.Module, micro: MicroBatch) -> tuple[Tensor, dict[str, float]]:
        """Loss of one planned micro-batch through ``model`` (the policy's net, or its DDP wrapper)."""
        cond = micro.batch.conditions.take(micro.idx).conditions()
        if micro.step is None:
            return self.weighted_fm_loss(micro.batch, micro.idx, cond, micro.noise, net=model)
        return self.transition_loss(micro.batch, micro.idx, micro.step, cond, net=model)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One or more PPO-style passes over a scored batch; returns averaged metrics."""
        if batch.advantages is None:
            raise InputError("grpo update: the batch has no advantages; run the advantage stage first")
        plan = self.planner.plan(batch, self.config.minibatch)
        accum = self.planner.steps_per_minibatch(batch.log_probs.shape[1]) * self.config.grad_accum
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        history: list[dict[str, float]] = []
        for i, micro in enumerate(plan, 1):
            loss, metrics = self.loss(self.model, micro)
            (loss / accum).backward()
            if i % accum == 0 or i == len(plan):  # a last, partial accumulation steps too
                metrics[GRAD_NORM] = self._step()
            history.append(metrics)
        self.model.eval()
        self.version += 1
        keys = {key for h in history for key in h}
        return {key: float(np.mean([h[key] for h in history if key in h])) for key in sorted(keys)}

    def _step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def generator_state(self) -> dict[str, Any]:
        return self.planner.state()

    def load_generator_state(self, state: dict[str, Any]) -> None:
        self.planner.load_state(state)
