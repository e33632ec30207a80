"""Gaussian sample-and-hold exploration of a control policy: trajectories for likelihood-ratio policy gradients.

At the decision times t_k = k Delta (k = 0 .. D - 1, D = horizon / Delta, control step Delta) the rollout samples
u_k ~ N(pi_theta(x(t_k), t_k), sigma^2 I) and holds it until t_{k+1}. States come from the spec's fixed-step
solver (no gradients) on a grid holding both the quadrature nodes and the decision times: ``rk4`` with
``substeps`` steps per sampling step h (accurate states), or ``euler`` at h (the IntRL authors' Euler case: Delta
must then be a multiple of h). Each interval's cost is the quadrature rule applied to the utilities
l(x, u) = x'Qx + u'Ru at its N nodes (``cost="exact"``: a running-cost state integrated with the states). At a
node where u jumps, the utility uses the control acting inside the interval: the new one at interior nodes, the
held one at the interval's end node, so the cost of interval i depends only on actions sampled before its end.

Choice of the control step (default Delta = 0.025 s, independent of h): the learned mean policy is a
continuous-time feedback, but a likelihood-ratio gradient needs the control to be the sampled action between
decisions, so the learner optimises the sample-and-hold closed loop. On the linearised cart-pole (16 bench starts,
4 s) the pole-placement start is unstable when held over Delta = T = 0.4 s, and the best sample-and-hold gain, run
as a continuous feedback, costs 3.52 at Delta = T / 2 = 0.2 s, 2.499 at 0.05 s and 2.459 at 0.025 s (LQR: 2.446);
only the last is well below the quadrature effects being measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from envs.control import ControlSystem, make_system
from pipeline.errors import InputError
from pipeline.weights import WeightsMessage, apply_message
from rewards.quadrature import weights
from rollouts.neural_control import ControlPolicy, NeuralRolloutSpec, node_times, torch_dynamics, utility

_TOL = 1e-9  # relative tolerance when times are compared (s / s)


@dataclass(frozen=True)
class ExplorationSpec:
    """What an exploration worker simulates: the quadrature return of ``rollout`` under sample-and-hold actions."""

    rollout: NeuralRolloutSpec
    control_step: float = 0.025  # Delta (s): sample-and-hold period of the Gaussian actions; see the module doc

    def __post_init__(self) -> None:
        ratio = self.rollout.horizon / self.control_step if self.control_step > 0 else 0.0
        if self.control_step <= 0 or abs(ratio - round(ratio)) > _TOL * ratio:
            raise InputError(f"exploration control_step = {self.control_step}: expected a positive divisor of the "
                             f"horizon {self.rollout.horizon:g} s")
        per_step = self.control_step / self.rollout.step
        if self.rollout.simulator == "euler" and abs(per_step - round(per_step)) > _TOL * per_step:
            raise InputError(f"exploration control_step = {self.control_step} with simulator=euler: expected a "
                             f"multiple of the sampling step h = {self.rollout.step:g} s (Euler steps at h)")

    @property
    def decisions(self) -> int:
        """Number of sampled actions per trajectory."""
        return int(round(self.rollout.horizon / self.control_step))

    def decision_times(self) -> np.ndarray:
        """(D,) times t_k (s)."""
        return np.arange(self.decisions) * self.control_step

    def decision_interval(self) -> np.ndarray:
        """(D,) index of the quadrature interval that contains each decision time."""
        return np.floor(self.decision_times() / self.rollout.interval + _TOL).astype(int)


@dataclass(frozen=True)
class _Plan:
    """Time grid of one trajectory: steps (G - 1,) with the decision they hold, node positions in the grid."""

    grid: np.ndarray  # (G,) times (s)
    held: np.ndarray  # (G - 1,) decision index in force over each step
    nodes: np.ndarray  # (S,) grid index of each sampling time
    node_decision: np.ndarray  # (K, N) decision whose action acts at node j of interval i (inside the interval)


def plan(spec: ExplorationSpec) -> _Plan:
    """The simulation grid: the node grid (refined by ``substeps`` for rk4) merged with the decision times."""
    r = spec.rollout
    times = node_times(r).numpy()
    sub = r.substeps if r.simulator == "rk4" else 1
    fine = np.linspace(0.0, r.horizon, (times.size - 1) * sub + 1)
    grid = np.unique(np.round(np.concatenate([fine, spec.decision_times()]), 12))
    D = spec.decisions
    right = np.minimum(np.floor(grid / spec.control_step + _TOL).astype(int), D - 1)  # right-continuous
    left = np.maximum(np.ceil(grid / spec.control_step - _TOL).astype(int) - 1, 0)  # left limit
    node_grid = np.searchsorted(grid, np.round(times, 12))
    idx = np.arange(r.intervals)[:, None] * (r.nodes - 1) + np.arange(r.nodes)[None, :]  # (K, N) node indices
    node_decision = right[node_grid[idx]]
    node_decision[:, -1] = left[node_grid[idx[:, -1]]]  # an interval's end node: the action held up to it
    return _Plan(grid=grid, held=right[:-1], nodes=node_grid, node_decision=node_decision)


@dataclass
class ExplorationBatch:
    """Trajectories from B starts x k samples: decision states (B, k, D, n), actions (B, k, D, m), per-interval
    costs (B, k, K); ``start_ids`` (B,) index the starts in the driver's batch."""

    states: np.ndarray
    actions: np.ndarray
    interval_costs: np.ndarray
    start_ids: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        """(B, k) cost of each trajectory over the horizon."""
        return self.interval_costs.sum(-1)


def explore(system: ControlSystem, policy: nn.Module, starts: torch.Tensor, noise: torch.Tensor, sigma: float,
            spec: ExplorationSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample-and-hold Gaussian rollouts from ``starts`` (B, n) with standard-normal ``noise`` (B, D, m).

    Returns decision states (B, D, n), actions u_k = pi(x_k, t_k) + sigma noise_k (B, D, m) and the cost of each
    quadrature interval (B, K). No gradients.
    """
    r, p = spec.rollout, plan(spec)
    dynamics, exact = torch_dynamics(system), r.cost == "exact"
    t_dec = torch.as_tensor(spec.decision_times())

    def rhs(y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        x = y[:, :-1] if exact else y
        dx = dynamics(x, u)
        return torch.cat([dx, utility(system, x, u)[:, None]], dim=-1) if exact else dx

    y = torch.cat([starts, torch.zeros_like(starts[:, :1])], dim=-1) if exact else starts
    decided, actions, path = [], [], [y]
    with torch.no_grad():
        for i, k in enumerate(p.held):
            if k == len(actions):  # a decision time: sample the next action
                x = y[:, :-1] if exact else y
                decided.append(x)
                actions.append(policy(x, t_dec[k]) + sigma * noise[:, k])
            u, dt = actions[k], float(p.grid[i + 1] - p.grid[i])
            if r.simulator == "euler":
                y = y + dt * rhs(y, u)
            else:
                k1 = rhs(y, u)
                k2 = rhs(y + dt / 2 * k1, u)
                k3 = rhs(y + dt / 2 * k2, u)
                y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + rhs(y + dt * k3, u))
            path.append(y)
        at_nodes = torch.stack(path)[torch.as_tensor(p.nodes)]  # (S, B, n [+ 1])
        u_all = torch.stack(actions, dim=1)  # (B, D, m)
        ends = torch.arange(r.intervals + 1) * (r.nodes - 1)
        if exact:
            running = at_nodes[ends, :, -1].T  # (B, K + 1) running cost at the interval ends
            costs = running[:, 1:] - running[:, :-1]
        else:
            idx = torch.arange(r.intervals)[:, None] * (r.nodes - 1) + torch.arange(r.nodes)[None, :]
            x_nodes = at_nodes.transpose(0, 1)[:, idx]  # (B, K, N, n)
            u_nodes = u_all[:, torch.as_tensor(p.node_decision)]  # (B, K, N, m)
            c = torch.as_tensor(weights(r.rule, np.linspace(0.0, r.interval, r.nodes), 0.0, r.interval,
                                        **r.rule_params))
            costs = utility(system, x_nodes, u_nodes) @ c
    return torch.stack(decided, dim=1), u_all, costs


def cost_to_go(interval_costs: np.ndarray, spec: ExplorationSpec) -> np.ndarray:
    """(..., K) interval costs -> (..., D) cost from the interval containing each decision time to the horizon.

    Causal: an action cannot change earlier intervals (including the part of its own interval before it, which
    only adds variance, not bias).
    """
    tail = np.flip(np.cumsum(np.flip(interval_costs, -1), -1), -1)  # (..., K) cost from interval i on
    return tail[..., spec.decision_interval()]


@dataclass(frozen=True)
class Draw:
    """The exploration of one iteration: std (input units), trajectories per start, seed and iteration."""

    sigma: float
    group_size: int
    seed: int
    iteration: int


class ExplorationWorker:
    """Rollout role for the likelihood-ratio estimator: sample, simulate and score by quadrature (plain class)."""

    def __init__(self, spec: ExplorationSpec, policy_kwargs: dict, worker_index: int = 0) -> None:
        torch.set_num_threads(1)
        self.spec, self.worker_index = spec, worker_index
        self.system = make_system(spec.rollout.system, spec.rollout.params)
        self.policy = ControlPolicy(self.system.state_dim, self.system.input_dim, **policy_kwargs)
        self.version = -1  # any message, version 0 included, is newer

    def set_weights(self, message: WeightsMessage) -> int:
        self.version = apply_message(self.policy, message, self.version)
        return self.version

    def rollout(self, starts: np.ndarray, start_ids: np.ndarray, draw: Draw) -> ExplorationBatch:
        """``draw.group_size`` trajectories from each of ``starts`` (B, n); the noise of start i comes from the
        seed (draw.seed, draw.iteration, start_ids[i]), so the numbers do not depend on how starts are split over
        workers."""
        B, D, m, k = len(starts), self.spec.decisions, self.system.input_dim, draw.group_size
        noise = np.stack([np.random.default_rng([draw.seed, draw.iteration, int(i)]).standard_normal((k, D, m))
                          for i in start_ids]).reshape(B * k, D, m)
        x0 = torch.as_tensor(np.repeat(np.asarray(starts, dtype=np.float64), k, axis=0))
        states, actions, costs = explore(self.system, self.policy, x0, torch.as_tensor(noise), draw.sigma, self.spec)
        shape = (B, k)
        return ExplorationBatch(states=states.numpy().reshape(*shape, D, -1),
                                actions=actions.numpy().reshape(*shape, D, m),
                                interval_costs=costs.numpy().reshape(*shape, -1),
                                start_ids=np.asarray(start_ids))


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(actions; mean, sigma^2 I) for (..., m) tensors -> (...)."""
    m = actions.shape[-1]
    return (-0.5 * ((actions - mean) / sigma).pow(2).sum(-1) - m * math.log(sigma)
            - 0.5 * m * math.log(2 * math.pi))
