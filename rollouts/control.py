"""Control-track rollout worker: closed-loop trajectories sampled at quadrature nodes (scipy ``solve_ivp``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from envs.control import ControlSystem, gain_input, make_system, policy_input
from pipeline.config import ControlSection
from pipeline.errors import InputError


@dataclass(frozen=True)
class PolicySpec:
    """A control policy as plain data: value weights w (u = -1/2 R^-1 g' dphi' w) or a linear gain K (u = -Kx)."""

    weights: np.ndarray | None = None  # (p,)
    gain: np.ndarray | None = None  # (m, n)
    version: int = 0

    def __call__(self, system: ControlSystem, x: np.ndarray) -> np.ndarray:
        if self.gain is not None:
            return gain_input(self.gain, x)
        return policy_input(system, self.weights, x)


@dataclass
class IntervalBatch:
    """Sampled intervals of one rollout call; intervals of all streams are stacked along the first axis.

    states: (M, N, n) states at the N nodes of each interval; utilities: (M, N) l(x, u(x)) at the nodes;
    nodes: (N,) node offsets inside an interval (s), same for every interval; end_states: (S, n) per stream.
    """

    states: np.ndarray
    utilities: np.ndarray
    nodes: np.ndarray
    end_states: np.ndarray
    policy_version: int = 0


class ControlRolloutWorker:
    """Simulates closed-loop trajectories of one system under a given policy (a plain class; Ray wraps it)."""

    def __init__(self, control: ControlSection, worker_index: int = 0) -> None:
        self.cfg = control.rollout
        self.system = make_system(control.system.name, control.system.params)
        self.worker_index = worker_index
        self.nodes = np.linspace(0.0, self.cfg.interval, self.cfg.nodes)

    def rollout(self, policy: PolicySpec, starts: np.ndarray, counts: list[int]) -> IntervalBatch:
        """Integrate ``counts[s]`` consecutive intervals from ``starts[s]`` (S, n) for every stream s.

        Every interval is its own ``solve_ivp`` call from the end state of the previous one (the IntRL authors'
        protocol), with ``t_eval`` at the N nodes. Raises InputError when the state blows up (policy not admissible).
        """
        states, utilities, ends = [], [], []
        for start, count in zip(np.atleast_2d(starts), counts):
            x = np.asarray(start, dtype=float)
            for k in range(count):
                traj = self._interval(policy, x, t0=k * self.cfg.interval)
                states.append(traj)
                utilities.append([self.system.utility(s, policy(self.system, s)) for s in traj])
                x = traj[-1]
            ends.append(x)
        n = self.system.state_dim
        return IntervalBatch(
            states=np.asarray(states).reshape(-1, len(self.nodes), n),
            utilities=np.asarray(utilities, dtype=float).reshape(-1, len(self.nodes)),
            nodes=self.nodes,
            end_states=np.asarray(ends).reshape(-1, n),
            policy_version=policy.version,
        )

    def _interval(self, policy: PolicySpec, x: np.ndarray, *, t0: float) -> np.ndarray:
        """One interval [0, T] from x: states at the nodes (N, n)."""
        system, limit = self.system, self.cfg.blowup_norm

        def rhs(_t: float, y: np.ndarray) -> np.ndarray:
            return system.dynamics(y, policy(system, y))

        def blowup(_t: float, y: np.ndarray) -> float:
            return limit - float(np.linalg.norm(y))

        blowup.terminal = True  # type: ignore[attr-defined]
        sol = solve_ivp(rhs, (0.0, self.cfg.interval), x, method=self.cfg.method, t_eval=self.nodes,
                        rtol=self.cfg.rtol, atol=self.cfg.atol, events=blowup)
        if sol.status == 1 or not np.all(np.isfinite(sol.y)):
            t_hit = t0 + (sol.t_events[0][0] if sol.t_events[0].size else sol.t[-1])
            raise InputError(
                f"policy v{policy.version} is not admissible on {system.name}: the state blew up "
                f"(|x| > {limit:g}) at t = {t_hit:.3g} s into the rollout from |x0| = {np.linalg.norm(x):.3g}; "
                "start from a stabilising policy (iteration.initial_weights / initial_gain)")
        if sol.status != 0:
            raise InputError(f"ODE solver failed on {system.name} at t = {t0:.3g} s: {sol.message}")
        return sol.y.T
