"""Policy evaluation of integral RL: the integral Bellman equation solved for w by least squares.

For an interval [t, t+T] sampled at N nodes, ``w' [phi(x(t)) - phi(x(t+T))] = sum_j c_j l(x(tau_j), u(x(tau_j)))``
with quadrature weights c from :mod:`rewards.quadrature`. Stacking M intervals gives ``Phi w = I``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.control import ControlSystem, make_system
from pipeline.config import ControlSection
from pipeline.errors import ConfigError, InputError
from rewards.quadrature import integrate
from rollouts.control import IntervalBatch


class ExcitationLost(InputError):
    """The least-squares system of policy evaluation became (numerically) rank deficient."""


@dataclass
class BellmanRows:
    """Rows of the integral Bellman system: features (M, p) = phi(x_start) - phi(x_end), targets (M,) integrals."""

    features: np.ndarray
    targets: np.ndarray


@dataclass
class EvaluationResult:
    """Least-squares solution w (p,) with diagnostics: numerical rank, condition number, relative residual."""

    weights: np.ndarray
    rank: int
    condition: float
    residual: float
    num_rows: int


NORMAL_EQUATION_SOLVERS = ("newton_schulz", "cg", "bcd")


def check_solver(system: ControlSystem, solver: str) -> None:
    """Normal-equation solvers need linearly independent basis functions (x kron x has duplicated columns)."""
    if solver in NORMAL_EQUATION_SOLVERS and system.basis_rank < system.num_features:
        raise ConfigError(f"config key 'control.iteration.solver': {solver} solves the normal equations, which are "
                          f"singular for {system.name}'s basis ({system.num_features} functions of rank "
                          f"{system.basis_rank}); use solver pinv/lstsq or a basis of independent functions")


class PolicyEvaluator:
    """Reward role of the control track: utilities -> integrals (quadrature) -> Bellman rows -> w (least squares)."""

    def __init__(self, control: ControlSection, worker_index: int = 0) -> None:
        self.system = make_system(control.system.name, control.system.params)
        self.rule = control.quadrature.rule
        self.rule_params = control.quadrature.params()
        self.interval = control.rollout.interval
        self.solver = control.iteration.solver
        self.rcond = control.iteration.rcond
        self.worker_index = worker_index
        self._warm = None  # Newton-Schulz: the previous iteration's inverse (warm start)

    def score(self, batch: IntervalBatch) -> BellmanRows:
        """Integrate the sampled utilities of every interval and build its Bellman row."""
        targets = integrate(self.rule, batch.utilities, batch.nodes, 0.0, self.interval, **self.rule_params)
        phi_start = np.stack([self.system.phi(x) for x in batch.states[:, 0]])
        phi_end = np.stack([self.system.phi(x) for x in batch.states[:, -1]])
        return BellmanRows(features=phi_start - phi_end, targets=np.asarray(targets, dtype=float))

    def solve(self, rows: list[BellmanRows]) -> EvaluationResult:
        """Stack rows from all workers and solve Phi w = I; raises when the system lacks excitation."""
        Phi = np.concatenate([r.features for r in rows])
        targets = np.concatenate([r.targets for r in rows])
        needed = self.system.basis_rank
        if Phi.shape[0] < needed:
            raise InputError(f"policy evaluation is rank deficient: {Phi.shape[0]} intervals for {needed} independent "
                             f"basis functions of {self.system.name}; set control.rollout.intervals >= {needed}")
        if not (np.all(np.isfinite(Phi)) and np.all(np.isfinite(targets))):
            raise InputError("policy evaluation got non-finite features or integrals (NaN/inf in the rollout)")
        sv = np.linalg.svd(Phi, compute_uv=False)
        condition = float(sv[0] / sv[needed - 1]) if sv[needed - 1] > 0 else float("inf")
        if condition * self.rcond > 1.0:
            raise ExcitationLost(f"policy evaluation lost excitation: condition number {condition:.3g} of the "
                                 f"{Phi.shape[0]}x{Phi.shape[1]} Bellman system exceeds 1/rcond = {1 / self.rcond:.3g} "
                                 "(the trajectory has decayed; use protocol 'restart' or more initial states)")
        w = self._least_squares(Phi, targets)
        residual = float(np.linalg.norm(Phi @ w - targets) / max(np.linalg.norm(targets), 1e-300))
        return EvaluationResult(weights=w, rank=needed, condition=condition, residual=residual, num_rows=Phi.shape[0])

    def _least_squares(self, Phi: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """argmin_w |Phi w - targets| with the configured solver: Phi (M, p), targets (M,) -> (p,)."""
        if self.solver == "pinv":
            return np.linalg.pinv(Phi) @ targets
        if self.solver == "lstsq":
            return np.linalg.lstsq(Phi, targets, rcond=None)[0]
        import torch

        from rewards.solvers import NewtonSchulzSolver, QuadraticProblem, block_coordinate_descent, conjugate_gradient

        X, y = torch.from_numpy(Phi), torch.from_numpy(targets)
        if self.solver == "newton_schulz":
            w, self._warm = NewtonSchulzSolver().solve(X[None], y[None], warm=self._warm)
            return w[0].numpy()
        problem = QuadraticProblem.from_least_squares(X, y)
        if self.solver == "cg":
            return conjugate_gradient(problem, tol=1e-13).w.numpy()
        return block_coordinate_descent(problem, selection="gsl", tol=1e-13, block_size=8).w.numpy()
