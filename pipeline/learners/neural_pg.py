"""Neural control policy by pathwise policy gradient on quadrature returns (IntRL authors' cart-pole experiment).

Estimator: the pathwise (reparameterised, "analytic") policy gradient. System and policy are deterministic and
differentiable, so the gradient of the quadrature return is exact backpropagation through the fixed-step solver
(:mod:`rollouts.neural_control`). The only randomness is the fixed batch of initial states and the objective is
deterministic, which lets L-BFGS replace Adam (far fewer rollouts). The likelihood-ratio alternative
(:mod:`pipeline.learners.neural_lr`: Gaussian sample-and-hold exploration, Adam on the learner group) needs no
differentiable simulator, but optimises the sample-and-hold loop under sampling noise.

Phases per step: rollout workers simulate shards of the initial states and return returns + summed gradients
-> the learner averages them -> optimiser step -> new parameters to the workers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from envs.control import make_system
from pipeline.config import RuntimeSection
from pipeline.errors import InputError
from pipeline.runtime import make_pool
from rollouts.neural_control import ControlPolicy, NeuralRolloutSpec, NeuralRolloutWorker

log = logging.getLogger(__name__)

#: metric names
MEAN_RETURN = "mean_return"
GRAD_NORM = "grad_norm"
DIVERGED_FACTOR = 1e3  # cost of a diverged probe: this times the best mean return so far


@dataclass(frozen=True)
class NeuralPGSettings:
    """Policy and optimiser settings."""

    hidden: tuple[int, ...] = (32, 32)  # MLP widths; () = linear policy u = -K x
    time_dependent: bool = False  # pi(x, t) instead of pi(x)
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    steps: int = 25  # optimiser steps (L-BFGS: iterations, each with up to `max_evals` rollouts)
    lr: float = 1.0  # L-BFGS initial step (with strong-Wolfe line search) or Adam learning rate
    max_evals: int = 3  # L-BFGS rollouts per iteration at most
    num_workers: int = 1  # rollout workers; the initial states are split over them


@dataclass
class NeuralPGResult:
    policy: ControlPolicy
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class NeuralPGLearner:
    """Holds the policy and its optimiser; applies averaged worker gradients (plain class)."""

    def __init__(self, policy: ControlPolicy, settings: NeuralPGSettings) -> None:
        self.policy, self.settings = policy, settings
        params = list(policy.parameters())
        if settings.optimizer == "lbfgs":
            self.opt: torch.optim.Optimizer = torch.optim.LBFGS(
                params, lr=settings.lr, max_iter=settings.max_evals, line_search_fn="strong_wolfe")
        else:
            self.opt = torch.optim.Adam(params, lr=settings.lr)

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.policy.state_dict().items()}

    def step(self, evaluate: Any) -> dict[str, float]:
        """One optimiser step; ``evaluate(params) -> (mean return, {name: mean gradient})`` runs the rollouts."""
        named = dict(self.policy.named_parameters())
        last: dict[str, float] = {}

        def closure() -> torch.Tensor:
            value, grads = evaluate(self.params())
            for name, p in named.items():
                p.grad = torch.as_tensor(grads[name]) if name in grads else torch.zeros_like(p)
            flat = np.concatenate([g.ravel() for g in grads.values()])
            last.update({MEAN_RETURN: value, GRAD_NORM: math.hypot(*flat)})  # hypot: no overflow for huge returns
            return torch.tensor(value, dtype=torch.float64)

        self.opt.step(closure)
        return last


def train_neural_policy(spec: NeuralRolloutSpec, settings: NeuralPGSettings, starts: np.ndarray, *,
                        gain0: np.ndarray | None = None, seed: int = 0,
                        runtime: RuntimeSection | None = None) -> NeuralPGResult:
    """Train a policy (linear part started at ``gain0``) on the mean quadrature return from ``starts`` (B, n)."""
    runtime = runtime or RuntimeSection(use_ray=False)
    torch.manual_seed(seed)
    kwargs = {"hidden": settings.hidden, "time_dependent": settings.time_dependent, "horizon": spec.horizon,
              "gain": gain0}
    shards = [s for s in np.array_split(np.asarray(starts, dtype=float), settings.num_workers) if len(s)]
    system = make_system(spec.system, spec.params)
    # the learner's policy first: in-process workers build policies too and would consume the seeded RNG
    learner = NeuralPGLearner(ControlPolicy(system.state_dim, system.input_dim, **kwargs), settings)
    pool = make_pool(NeuralRolloutWorker, len(shards), spec, kwargs, runtime=runtime)
    counts: dict[str, float] = {"rollouts": 0}

    def evaluate(params: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        batches = pool.map("rollout", [(params, shard) for shard in shards])
        counts["rollouts"] += len(starts)
        total = sum(b.returns.sum() for b in batches)
        if not np.isfinite(total):
            if "best" not in counts:
                raise InputError(f"the initial neural policy is not admissible on {spec.system}: a trajectory "
                                 "diverged; start from a stabilising gain")
            # a line-search probe past the admissible set: a large finite cost makes the search step back
            return DIVERGED_FACTOR * counts["best"], {k: np.zeros_like(v) for k, v in batches[0].grads.items()}
        counts["best"] = min(counts.get("best", np.inf), float(total / len(starts)))
        grads = {k: sum(b.grads[k] for b in batches) / len(starts) for k in batches[0].grads}
        return float(total / len(starts)), grads

    result, t0 = NeuralPGResult(policy=learner.policy), time.perf_counter()
    try:
        for step in range(settings.steps):
            metrics = learner.step(evaluate)
            if not np.isfinite(metrics[MEAN_RETURN]):
                raise InputError(f"neural policy gradient diverged at step {step}: mean return {metrics[MEAN_RETURN]}")
            result.history.append(metrics)
    finally:
        pool.close()
    result.summary = {"steps": settings.steps, "rollouts": counts["rollouts"], "final_return": result.history[-1][
        MEAN_RETURN], "sim_s": counts["rollouts"] * spec.horizon, "wall_s": time.perf_counter() - t0}
    return result
