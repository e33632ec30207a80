"""Neural control policies on continuous-time systems: differentiable rollouts sampled at quadrature nodes.

The return of a trajectory from x0 is the cost integral over the horizon [0, K T], computed interval by interval
with a quadrature rule from the utilities l(x, u) = x'Qx + u'Ru at N evenly spaced nodes per interval (sampling
step h = T / (N - 1)); ``cost="exact"`` integrates the running cost as an extra state instead (the reference).
States come from a fixed-step solver (torchdiffeq): ``rk4`` with ``substeps`` steps per sampling step (accurate
states, only the quadrature errs) or ``euler`` at the sampling step (the IntRL authors' Euler case: states and
cost both coarse). Everything is differentiable in the policy parameters: the pathwise policy gradient.
:func:`true_cost` is the accurate check: ``solve_ivp`` with a running-cost state at rtol 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import nn
from torchdiffeq import odeint

from envs.control import ControlSystem, LinearSystem, make_system
from pipeline.errors import InputError
from rewards.quadrature import check_rule_params, weights

TorchDynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NeuralRolloutSpec:
    """What a rollout worker simulates and how the return is computed (times in s)."""

    system: str = "cartpole"  # registry name
    params: dict[str, Any] = field(default_factory=dict)  # system constructor keywords
    interval: float = 0.4  # T: quadrature interval
    intervals: int = 15  # K: intervals per trajectory (horizon K T)
    nodes: int = 5  # N: nodes per interval, both ends (sampling step T / (N - 1))
    rule: str = "trapezoid"  # a rewards.quadrature rule
    rule_params: dict[str, Any] = field(default_factory=dict)
    simulator: Literal["rk4", "euler"] = "rk4"  # rk4: `substeps` steps per sampling step; euler: one
    substeps: int = 10
    cost: Literal["quadrature", "exact"] = "quadrature"  # exact: running-cost state (reference objective)

    def __post_init__(self) -> None:
        check_rule_params(self.rule, self.nodes, prefix="neural_pg", nodes_key="neural_pg.nodes", **self.rule_params)
        if self.interval <= 0 or self.intervals < 1 or self.substeps < 1:
            raise InputError(f"neural rollout: expected interval > 0, intervals >= 1, substeps >= 1; got "
                             f"{self.interval}, {self.intervals}, {self.substeps}")

    @property
    def horizon(self) -> float:
        return self.interval * self.intervals

    @property
    def step(self) -> float:
        """Sampling step h (s)."""
        return self.interval / (self.nodes - 1)


class ControlPolicy(nn.Module):
    """u = -K x + MLP(x) (time-invariant) or -K x + MLP(x, t / horizon) (time-dependent): (B, n) -> (B, m).

    The linear part starts at a given (stabilising) gain, the MLP's last layer at zero, so training starts from
    an admissible policy. ``hidden=()`` gives a purely linear policy.
    """

    def __init__(self, state_dim: int, input_dim: int, *, hidden: tuple[int, ...] = (32, 32),
                 time_dependent: bool = False, horizon: float = 1.0, gain: np.ndarray | None = None) -> None:
        super().__init__()
        self.time_dependent, self.horizon = time_dependent, float(horizon)
        self.linear = nn.Linear(state_dim, input_dim, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(torch.zeros(input_dim, state_dim) if gain is None else -torch.as_tensor(gain))
        layers: list[nn.Module] = []
        width = state_dim + int(time_dependent)
        for h in hidden:
            layers += [nn.Linear(width, h, dtype=torch.float64), nn.Tanh()]
            width = h
        self.mlp = None
        if hidden:
            last = nn.Linear(width, input_dim, dtype=torch.float64)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float = 0.0) -> torch.Tensor:
        """u (B, m) at states x (B, n), time t (s; scalar or (B, 1)); u(0, t) = 0: the origin stays an equilibrium."""
        u = self.linear(x)
        if self.mlp is None:
            return u
        origin = torch.zeros_like(x)
        if self.time_dependent:
            tt = torch.as_tensor(t, dtype=x.dtype).expand(*x.shape[:-1], 1) / self.horizon
            x, origin = torch.cat([x, tt], dim=-1), torch.cat([origin, tt], dim=-1)
        at_x, at_origin = self.mlp(torch.cat([x, origin])).split(x.shape[0])  # one pass for both
        return u + at_x - at_origin


def torch_dynamics(system: ControlSystem) -> TorchDynamics:
    """Batched dx/dt = f(x) + g(x) u in torch: x (B, n), u (B, m) -> (B, n); linear systems and ``terms``."""
    if isinstance(system, LinearSystem):
        A, B = torch.as_tensor(system.A), torch.as_tensor(system.B)
        return lambda x, u: x @ A.T + u @ B.T
    if hasattr(system, "terms"):
        def dynamics(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            f, g = system.terms(x, torch)
            return f + g * u  # single input: g (B, n), u (B, 1)
        return dynamics
    raise InputError(f"system {system.name} has no torch dynamics (a LinearSystem or a `terms(x, xp)` method)")


def utility(system: ControlSystem, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """l = x'Qx + u'Ru for x (..., n), u (..., m) -> (...)."""
    Q, R = torch.as_tensor(system.Q), torch.as_tensor(system.R)
    return ((x @ Q) * x).sum(-1) + ((u @ R) * u).sum(-1)


def node_times(spec: NeuralRolloutSpec) -> torch.Tensor:
    """(K (N - 1) + 1,) sampling times over the horizon (s)."""
    return torch.linspace(0.0, spec.horizon, spec.intervals * (spec.nodes - 1) + 1, dtype=torch.float64)


def simulate(system: ControlSystem, policy: nn.Module, starts: torch.Tensor, spec: NeuralRolloutSpec,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-loop states at the sampling times: starts (B, n) -> (times (S,), states (S, B, n)); differentiable.

    With ``cost="exact"`` the returned states carry the running cost as a last column (S, B, n + 1).
    """
    dynamics = torch_dynamics(system)
    exact = spec.cost == "exact"

    def rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = y[..., :-1] if exact else y
        u = policy(x, t)
        dx = dynamics(x, u)
        return torch.cat([dx, utility(system, x, u)[:, None]], dim=-1) if exact else dx

    times = node_times(spec)
    sub = spec.substeps if spec.simulator == "rk4" else 1
    grid = torch.linspace(0.0, spec.horizon, (times.numel() - 1) * sub + 1, dtype=torch.float64)
    y0 = torch.cat([starts, torch.zeros_like(starts[:, :1])], dim=-1) if exact else starts
    states = odeint(rhs, y0, grid, method=spec.simulator)[::sub]
    return times, states


def returns(system: ControlSystem, policy: nn.Module, starts: torch.Tensor, spec: NeuralRolloutSpec,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost of each trajectory over the horizon: (returns (B,), sampled states (S, B, n)); differentiable.

    Quadrature: utilities at the nodes of each interval, (B, K, N) @ c (N,) summed over the K intervals.
    """
    times, states = simulate(system, policy, starts, spec)
    if spec.cost == "exact":
        return states[-1, :, -1], states[..., :-1]
    S, B, n = states.shape
    u = policy(states.reshape(S * B, n), times.repeat_interleave(B)[:, None]).reshape(S, B, -1)
    l_nodes = utility(system, states, u).T  # (B, S)
    K, N = spec.intervals, spec.nodes
    idx = torch.arange(K)[:, None] * (N - 1) + torch.arange(N)[None, :]  # (K, N) node indices per interval
    c = torch.as_tensor(weights(spec.rule, np.linspace(0.0, spec.interval, N), 0.0, spec.interval,
                                **spec.rule_params))
    return (l_nodes[:, idx] @ c).sum(-1), states


def true_cost(system: ControlSystem, policy: Callable[[np.ndarray, float], np.ndarray], starts: np.ndarray,
              horizon: float, *, rtol: float = 1e-10, atol: float = 1e-10) -> np.ndarray:
    """Accurate cost integral over [0, horizon] per start (B,): solve_ivp (DOP853) with a running-cost state.

    ``policy(x (n,), t) -> u (m,)`` in numpy. Diverging trajectories (|x| > 1e6) get cost inf.
    """
    out = []
    for x0 in np.atleast_2d(starts):
        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            x = y[:-1]
            u = policy(x, t)
            return np.append(system.dynamics(x, u), system.utility(x, u))

        def blowup(_t: float, y: np.ndarray) -> float:
            return 1e6 - float(np.linalg.norm(y[:-1]))

        blowup.terminal = True  # type: ignore[attr-defined]
        sol = solve_ivp(rhs, (0.0, horizon), np.append(x0, 0.0), method="DOP853", rtol=rtol, atol=atol,
                        events=blowup)
        out.append(sol.y[-1, -1] if sol.status == 0 else np.inf)
    return np.asarray(out)


def numpy_policy(policy: nn.Module) -> Callable[[np.ndarray, float], np.ndarray]:
    """The torch policy as ``(x (n,), t) -> u (m,)`` in float64 numpy, without gradients."""
    def act(x: np.ndarray, t: float) -> np.ndarray:
        with torch.no_grad():
            return policy(torch.as_tensor(x, dtype=torch.float64)[None], t)[0].numpy()
    return act


@dataclass
class NeuralBatch:
    """One worker's share: returns (B,), summed gradients {name: array} of sum(returns), node states (S, B, n)."""

    returns: np.ndarray
    grads: dict[str, np.ndarray]
    states: np.ndarray


class NeuralRolloutWorker:
    """Rollout role of the neural-policy track: simulate, score by quadrature and differentiate (plain class)."""

    def __init__(self, spec: NeuralRolloutSpec, policy_kwargs: dict[str, Any], worker_index: int = 0) -> None:
        torch.set_num_threads(1)
        self.spec, self.worker_index = spec, worker_index
        self.system = make_system(spec.system, spec.params)
        self.policy = ControlPolicy(self.system.state_dim, self.system.input_dim, **policy_kwargs)

    def rollout(self, params: dict[str, np.ndarray], starts: np.ndarray) -> NeuralBatch:
        """Returns of the policy ``params`` from ``starts`` (B, n) and the pathwise gradient of their sum.

        A diverging trajectory gives a non-finite return and zero gradients (the learner decides what that means).
        """
        self.policy.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})
        self.policy.zero_grad()
        ret, states = returns(self.system, self.policy, torch.as_tensor(starts, dtype=torch.float64), self.spec)
        finite = bool(torch.all(torch.isfinite(ret)))
        if finite:
            ret.sum().backward()
        grads = {k: p.grad.detach().numpy().copy() if finite and p.grad is not None else np.zeros(tuple(p.shape))
                 for k, p in self.policy.named_parameters()}
        return NeuralBatch(returns=ret.detach().numpy(), grads=grads, states=states.detach().numpy())
