"""Neural control policy by likelihood-ratio policy gradient on quadrature returns, trained on the learner group.

Estimator: REINFORCE with a Gaussian sample-and-hold exploration policy u_k ~ N(pi_theta(x_k, t_k), sigma^2 I)
(:mod:`rollouts.neural_exploration`). Rollout workers only simulate and score (no gradients through the solver);
the gradient of the expected quadrature cost is

    grad J = E[ sum_k (G_k - b_k) grad log N(u_k; pi_theta(x_k, t_k), sigma^2 I) ],

with G_k the quadrature cost from the interval containing t_k to the horizon (causality) and b_k the mean of
G_k over the ``group_size`` trajectories from the same start (a GRPO-style group baseline per start and decision
time; the leave-one-out baseline differs from it only by the factor k / (k - 1)). Advantages A = -(G - b) / s
(higher is better) are scaled by one batch-wide std s: a per-group std would re-weight decision times and move the
fixed point. The learner minimises mean_{trajectory, k} A_k (-log N(u_k; ...)) with Adam; the learning rate and
sigma decay over the iterations. Beside the pathwise estimator (:mod:`pipeline.learners.neural_pg`) it needs no
differentiable simulator, at the price of sampling variance and of optimising the sample-and-hold closed loop.

Phases per iteration: sample (rollout pool, current weights) -> advantages -> update (learner group: equal
shards of the trajectories, gradients averaged over the replicas) -> sync (versioned weights to the rollouts).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.control import make_system
from pipeline.config import RuntimeSection
from pipeline.errors import ConfigError, InputError
from pipeline.learner_group import LearnerGroup, LearnerSettings, split
from pipeline.learners.neural_pg import MEAN_RETURN, NeuralPGResult
from pipeline.runtime import Placement, make_pool, ray_session
from pipeline.weights import WeightSync
from rollouts.neural_control import ControlPolicy
from rollouts.neural_exploration import (
    Draw,
    ExplorationBatch,
    ExplorationSpec,
    ExplorationWorker,
    cost_to_go,
    gaussian_log_prob,
)

log = logging.getLogger(__name__)

#: metric names
LOG_PROB, SIGMA, LR, DIVERGED = "log_prob", "sigma", "lr", "diverged_fraction"


@dataclass(frozen=True)
class NeuralLRSettings:
    """Policy, exploration and optimiser settings of the likelihood-ratio estimator."""

    hidden: tuple[int, ...] = (32, 32)  # MLP widths; () = linear policy u = -K x
    time_dependent: bool = False  # pi(x, t) instead of pi(x)
    iterations: int = 100  # sample -> update rounds (one Adam step each)
    lr: float = 0.5  # Adam learning rate of the linear gain K at the first iteration (gain units per step)
    mlp_lr: float = 0.01  # Adam learning rate of the MLP's parameters at the first iteration
    lr_final: float = 0.1  # learning rate at the last iteration, as a fraction of `lr` (linear decay)
    sigma: float = 1.0  # exploration std at the first iteration (input units, e.g. N)
    sigma_final: float = 0.2  # exploration std at the last iteration (geometric decay from `sigma`)
    group_size: int = 8  # trajectories per start and iteration (the group of the baseline), >= 2
    max_grad_norm: float = float("inf")  # clip the gradient norm; inf: no clipping (the norm is still reported)
    eps: float = 1e-8  # added to the advantage std
    diverged_norm: float = 1e3  # a trajectory whose decision states leave |x| <= this (or whose cost is not finite)
    # is flagged as diverged and excluded from its group's baseline and from the update

    def __post_init__(self) -> None:
        checks = {"iterations": self.iterations >= 1, "lr": self.lr > 0, "mlp_lr": self.mlp_lr > 0,
                  "lr_final": 0 < self.lr_final <= 1, "sigma": self.sigma > 0, "sigma_final": self.sigma_final > 0,
                  "group_size": self.group_size >= 2, "max_grad_norm": self.max_grad_norm > 0,
                  "diverged_norm": self.diverged_norm > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"neural_lr.{bad[0]} = {getattr(self, bad[0])!r}: out of range (see NeuralLRSettings)")

    def sigma_at(self, iteration: int) -> float:
        """Exploration std of ``iteration`` (0-based)."""
        frac = iteration / max(self.iterations - 1, 1)
        return self.sigma * (self.sigma_final / self.sigma) ** frac

    def lr_factor(self, update: int) -> float:
        """Learning rate of optimizer step ``update`` as a fraction of ``lr``."""
        return 1.0 - (1.0 - self.lr_final) * min(update / max(self.iterations - 1, 1), 1.0)


class NeuralLRLearner:
    """Learner replica (the :class:`pipeline.learner_group.Learner` protocol): float64 policy, Adam, LR decay.

    ``num_processes``: replicas in the group. accelerate steps a prepared scheduler once per process per
    update, so the schedule counts updates as scheduler steps // num_processes.
    """

    def __init__(self, policy: ControlPolicy, settings: NeuralLRSettings, *, num_processes: int = 1) -> None:
        self.model = policy
        groups = [{"params": list(policy.linear.parameters()), "lr": settings.lr}]
        if policy.mlp is not None:
            groups.append({"params": list(policy.mlp.parameters()), "lr": settings.mlp_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: settings.lr_factor(step // num_processes))

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """``scale`` x sum over rows of A (-log N(u; model(x, t), sigma^2 I)).

        Batch: ``states`` (M, n), ``times`` (M, 1) s, ``actions`` (M, m), ``advantages`` (M,), ``sigma``, ``scale``
        (micro-batches in the update / rows in the update, so that the average over replicas is the batch mean).
        """
        log_prob = gaussian_log_prob(batch["actions"], model(batch["states"], batch["times"]), batch["sigma"])
        loss = batch["scale"] * (batch["advantages"] * -log_prob).sum()
        return loss, {LOG_PROB: float(log_prob.detach().mean()), LR: self.optimizer.param_groups[0]["lr"]}


def build_learner(state_dim: int, input_dim: int, policy_kwargs: dict[str, Any], settings: NeuralLRSettings,
                  seed: int, num_processes: int) -> NeuralLRLearner:
    """Learner factory (picklable through functools.partial): every replica builds the same initial policy."""
    torch.manual_seed(seed)
    return NeuralLRLearner(ControlPolicy(state_dim, input_dim, **policy_kwargs), settings,
                           num_processes=num_processes)


def advantages(costs_to_go: np.ndarray, eps: float = 1e-8, valid: np.ndarray | None = None) -> np.ndarray:
    """(B, k, D) costs to go -> (B, k, D) advantages: minus the group-centred cost over one batch-wide std.

    ``valid`` (B, k): trajectories that count; the others get advantage 0 and stay out of the group means and the
    std (a group with no valid trajectory contributes nothing)."""
    valid = np.ones(costs_to_go.shape[:2], bool) if valid is None else valid
    w = np.broadcast_to(valid[..., None], costs_to_go.shape)
    costs = np.where(w, costs_to_go, 0.0)
    count = w.sum(axis=1, keepdims=True)
    centred = np.where(w, costs - costs.sum(axis=1, keepdims=True) / np.maximum(count, 1), 0.0)
    std = np.sqrt((centred ** 2).sum() / max(int(w.sum()), 1))
    return -centred / (std + eps)


def flag_diverged(batch: ExplorationBatch, bound: float) -> np.ndarray:
    """(B, k) True for trajectories whose decision states leave the ball |x| <= ``bound`` or whose interval costs
    are not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(batch.states, axis=-1).max(axis=-1)
    return ~np.isfinite(batch.interval_costs).all(axis=-1) | ~(norms <= bound)


def micro_batches(batch: ExplorationBatch, adv: np.ndarray, spec: ExplorationSpec, sigma: float,
                  parts: int) -> list[dict[str, Any]]:
    """The trajectories dealt into ``parts`` contiguous micro-batches of (state, time, action, advantage) rows."""
    B, k, D, n = batch.states.shape
    rows = {"states": batch.states.reshape(B * k, D, n), "actions": batch.actions.reshape(B * k, D, -1),
            "advantages": adv.reshape(B * k, D)}
    times = torch.as_tensor(spec.decision_times())
    out = []
    for shard in split(range(B * k), parts):
        take = {key: torch.as_tensor(value[shard]) for key, value in rows.items()}
        out.append({"states": take["states"].reshape(-1, n), "actions": take["actions"].reshape(len(shard) * D, -1),
                    "advantages": take["advantages"].reshape(-1), "times": times.repeat(len(shard))[:, None],
                    "sigma": sigma, "scale": parts / (B * k * D)})
    return out


def _merge(batches: list[ExplorationBatch]) -> ExplorationBatch:
    return ExplorationBatch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches])
                               for f in dataclasses.fields(ExplorationBatch)})


class LRTrainer:
    """One likelihood-ratio run: a rollout pool and a learner group; :meth:`step` runs one iteration's phases.

    ``runtime``: rollout workers (``num_rollout_workers``, Ray actors with ``use_ray``) and learner replicas
    (``num_learners``; 0 = in-process); with Ray, inside ``placement`` when given. Call :meth:`close` at the end.
    """

    def __init__(self, spec: ExplorationSpec, settings: NeuralLRSettings, starts: np.ndarray, *,
                 gain0: np.ndarray | None, seed: int, runtime: RuntimeSection, placement: Placement | None = None,
                 ) -> None:
        if runtime.num_learners > 0 and not runtime.use_ray:
            raise ConfigError(f"runtime.num_learners = {runtime.num_learners} needs Ray (runtime.use_ray = true); "
                              "use num_learners = 0 for an in-process learner")
        self.spec, self.settings, self.seed = spec, settings, seed
        self.starts = np.asarray(starts, dtype=np.float64)
        self.parts = max(runtime.num_learners, 1) * runtime.grad_accumulation  # micro-batches per update
        if len(self.starts) * settings.group_size < self.parts:
            raise ConfigError(f"{len(self.starts)} starts x group_size {settings.group_size} trajectories cannot fill "
                              f"{self.parts} micro-batches (num_learners x grad_accumulation); add starts")
        system = make_system(spec.rollout.system, spec.rollout.params)
        self.policy_kwargs = {"hidden": settings.hidden, "time_dependent": settings.time_dependent,
                              "horizon": spec.rollout.horizon, "gain": gain0}
        self.dims = (system.state_dim, system.input_dim)
        factory = functools.partial(build_learner, *self.dims, self.policy_kwargs, settings, seed,
                                    max(runtime.num_learners, 1))
        self.shards = [s for s in split(range(len(self.starts)), runtime.num_rollout_workers) if s]
        self.group = LearnerGroup(factory, runtime, placement=placement,
                                  settings=LearnerSettings.from_runtime(runtime, max_grad_norm=settings.max_grad_norm))
        try:
            self.pool = make_pool(ExplorationWorker, len(self.shards), spec, self.policy_kwargs, runtime=runtime,
                                  placement=placement)
        except BaseException:
            self.group.shutdown()  # leave the process group even when the rollouts cannot start
            raise
        self.sync = WeightSync(self.pool)
        self.sync.push(self.group.weights(0))

    def sample(self, iteration: int) -> ExplorationBatch:
        """Trajectories of the current policy (version ``iteration``) from every start."""
        draw = Draw(sigma=self.settings.sigma_at(iteration), group_size=self.settings.group_size, seed=self.seed,
                    iteration=iteration)
        return _merge(self.pool.map("rollout", [(self.starts[s], np.asarray(s), draw) for s in self.shards]))

    def step(self, iteration: int) -> dict[str, float]:
        """sample -> advantages -> update (equal shards over the replicas) -> sync; returns the metrics."""
        sigma = self.settings.sigma_at(iteration)
        batch = self.sample(iteration)
        diverged = flag_diverged(batch, self.settings.diverged_norm)
        if diverged.all():
            raise InputError(f"likelihood-ratio policy gradient: every trajectory diverged at iteration {iteration} "
                             f"on {self.spec.rollout.system}; lower sigma or lr, or start from a stabilising gain")
        if diverged.any():
            log.warning("iteration %d: %d of %d trajectories diverged (|x| > %g); excluded from the update",
                        iteration, int(diverged.sum()), diverged.size, self.settings.diverged_norm)
            keep = ~diverged[..., None, None]  # excluded rows: zero states/actions, advantage 0
            batch = dataclasses.replace(batch, states=np.where(keep, batch.states, 0.0),
                                        actions=np.where(keep, batch.actions, 0.0))
        costs = np.where(diverged[..., None], 0.0, batch.interval_costs)
        adv = advantages(cost_to_go(costs, self.spec), self.settings.eps, valid=~diverged)
        mbs = micro_batches(batch, adv, self.spec, sigma, self.parts)  # replica r: the r-th contiguous shard
        metrics = self.group.update(split(mbs, self.group.num_replicas))
        self.sync.push(self.group.weights(iteration + 1))
        return {MEAN_RETURN: float(costs.sum(-1)[~diverged].mean()), DIVERGED: float(diverged.mean()), SIGMA: sigma,
                **metrics}

    def policy(self) -> ControlPolicy:
        """A copy of the learners' current policy."""
        policy = ControlPolicy(*self.dims, **self.policy_kwargs)
        policy.load_state_dict(self.group.weights(self.sync.version).tensors)
        return policy

    def close(self) -> None:
        self.pool.close()
        self.group.shutdown()


def train_neural_policy_lr(spec: ExplorationSpec, settings: NeuralLRSettings, starts: np.ndarray, *,
                           gain0: np.ndarray | None = None, seed: int = 0,
                           runtime: RuntimeSection | None = None) -> NeuralPGResult:
    """Train a policy (linear part started at ``gain0``) on the expected quadrature cost from ``starts`` (B, n).

    ``runtime`` places the roles (see :class:`LRTrainer`); Ray is started when needed and not running. The
    result's ``final_return`` is the mean sampled return of the last batch. Deterministic under ``seed``.
    """
    runtime = runtime or RuntimeSection(use_ray=False)
    t0 = time.perf_counter()
    with ray_session(runtime):
        placement, trainer = Placement.reserve(runtime), None
        try:
            trainer = LRTrainer(spec, settings, starts, gain0=gain0, seed=seed, runtime=runtime, placement=placement)
            history = [trainer.step(it) for it in range(settings.iterations)]
            policy = trainer.policy()
        finally:
            if trainer is not None:
                trainer.close()
            if placement is not None:
                placement.close()
    summary = {"steps": settings.iterations, "rollouts": settings.iterations * len(starts) * settings.group_size,
               "final_return": history[-1][MEAN_RETURN], "wall_s": time.perf_counter() - t0}
    return NeuralPGResult(policy=policy, history=history, summary=summary)
