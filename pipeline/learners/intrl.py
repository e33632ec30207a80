"""IntRL learner: policy improvement u = -1/2 R^-1 g' dphi' w (a Newton step on the HJB equation) and stopping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.control import ControlSystem, policy_input
from envs.control.analysis import stability_abscissa
from pipeline.config import ControlSection
from pipeline.errors import InputError
from rewards.policy_eval import EvaluationResult
from rollouts.control import PolicySpec

#: metric names written to metrics.jsonl / TensorBoard / summary.json
WEIGHT_ERROR = "weight_error"
GAIN_ERROR = "gain_error"
POLICY_ERROR = "policy_error"
WEIGHT_CHANGE = "weight_change"


@dataclass
class IterationState:
    iteration: int
    weights: np.ndarray
    converged: bool


class IntRLLearner:
    """Holds the value weights, turns them into the next policy and decides convergence (plain class)."""

    def __init__(self, system: ControlSystem, control: ControlSection, *, seed: int = 0) -> None:
        self.system = system
        self.tol = control.iteration.tol
        it = control.iteration
        self.gain0 = None if it.initial_gain is None else np.atleast_2d(np.asarray(it.initial_gain, dtype=float))
        w0 = system.initial_weights() if it.initial_weights is None else np.asarray(it.initial_weights, dtype=float)
        if w0.shape != (system.num_features,):
            raise InputError(f"config key 'control.iteration.initial_weights': expected {system.num_features} "
                             f"weights for {system.name}, got shape {w0.shape}")
        if self.gain0 is not None and self.gain0.shape != (system.input_dim, system.state_dim):
            raise InputError(f"config key 'control.iteration.initial_gain': expected shape "
                             f"({system.input_dim}, {system.state_dim}), got {self.gain0.shape}")
        self.state = IterationState(iteration=0, weights=w0, converged=False)
        rng = np.random.default_rng(seed)
        r = control.evaluation.sample_radius
        self.eval_states = rng.uniform(-r, r, size=(control.evaluation.policy_samples, system.state_dim))

    def policy(self) -> PolicySpec:
        """The current policy as plain data (initial gain K0 before the first improvement, if given)."""
        if self.state.iteration == 0 and self.gain0 is not None:
            return PolicySpec(gain=self.gain0, version=0)
        return PolicySpec(weights=self.state.weights.copy(), version=self.state.iteration)

    def check_admissible(self) -> None:
        """Refuse an initial policy whose closed loop is unstable at the origin (eigenvalues of its Jacobian)."""
        if np.linalg.norm(self.system.f(np.zeros(self.system.state_dim))) > 1e-12:
            return  # origin is not an equilibrium of this system: only the run-time blow-up check applies
        policy = self.policy()
        worst = stability_abscissa(self.system, lambda x: policy(self.system, x))
        if worst >= 0:
            raise InputError(f"the initial policy is not admissible on {self.system.name}: its closed loop has an "
                             f"eigenvalue with real part {worst:.3g} >= 0 at the origin; give a stabilising "
                             "control.iteration.initial_weights or initial_gain, or use "
                             "control.iteration.initializer: homotopy")

    def update(self, result: EvaluationResult) -> dict[str, float]:
        """Accept the evaluated weights (policy improvement is implicit in :meth:`policy`); return metrics."""
        change = float(np.linalg.norm(result.weights - self.state.weights))
        self.state = IterationState(self.state.iteration + 1, result.weights.copy(), converged=change < self.tol)
        metrics = {WEIGHT_CHANGE: change, "condition": result.condition, "residual": result.residual}
        metrics.update(self.errors())
        return metrics

    def errors(self) -> dict[str, float]:
        """Distances to the known optimum: |w - w*|, |K - K*|_F (linear), E|u - u*| on sampled states."""
        w_star = self.system.optimal_weights()
        if w_star is None:
            return {}
        w = self.state.weights
        out = {WEIGHT_ERROR: float(np.linalg.norm(w - w_star))}
        if hasattr(self.system, "optimal_gain"):
            out[GAIN_ERROR] = float(np.linalg.norm(self.system.gain_from_weights(w) - self.system.optimal_gain()))
        diffs = [np.abs(policy_input(self.system, w - w_star, x)).sum() for x in self.eval_states]
        out[POLICY_ERROR] = float(np.mean(diffs))
        return out
