"""The control-affine system interface of the control track.

A system is ``dx/dt = f(x) + g(x) u`` with utility ``l(x, u) = x'Qx + u'Ru`` and a value basis ``phi`` with
``V(x) ~ w' phi(x)``. To bring your own system, subclass :class:`ControlSystem` (or provide the same attributes)
and name it in the config as ``system.name: "package.module:ClassName"``; ``system.params`` become keyword
arguments of its constructor. Required: ``f``, ``g``, ``Q``, ``R``, ``x0``, ``phi``, ``grad_phi``. Optional:
``initial_weights`` (an admissible w0; default zeros, i.e. u0 = 0) and ``optimal_weights`` (w*, if known).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property

import numpy as np


class ControlSystem(ABC):
    """Continuous-time control-affine system with quadratic utility and a value-function basis."""

    #: short name used in reports
    name: str = "system"
    #: state cost (n, n), input cost (m, m), default initial state (n,)
    Q: np.ndarray
    R: np.ndarray
    x0: np.ndarray

    @abstractmethod
    def f(self, x: np.ndarray) -> np.ndarray:
        """Drift f(x): (n,) -> (n,)."""

    @abstractmethod
    def g(self, x: np.ndarray) -> np.ndarray:
        """Input matrix g(x): (n,) -> (n, m)."""

    @abstractmethod
    def phi(self, x: np.ndarray) -> np.ndarray:
        """Value basis phi(x): (n,) -> (p,)."""

    @abstractmethod
    def grad_phi(self, x: np.ndarray) -> np.ndarray:
        """Jacobian of the basis d phi / dx: (n,) -> (p, n)."""

    def initial_weights(self) -> np.ndarray:
        """An admissible initial weight vector w0 (p,); default zeros (u0 = 0)."""
        return np.zeros(self.num_features)

    def optimal_weights(self) -> np.ndarray | None:
        """w* (p,) if known in closed form, else None."""
        return None

    @property
    def state_dim(self) -> int:
        return int(self.Q.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.R.shape[0])

    @cached_property
    def num_features(self) -> int:
        return int(np.asarray(self.phi(np.asarray(self.x0, dtype=float))).shape[0])

    @cached_property
    def R_inv(self) -> np.ndarray:
        return np.linalg.inv(self.R)

    def utility(self, x: np.ndarray, u: np.ndarray) -> float:
        """l(x, u) = x'Qx + u'Ru."""
        return float(x @ self.Q @ x + u @ self.R @ u)

    def dynamics(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """dx/dt = f(x) + g(x) u: (n,), (m,) -> (n,)."""
        return self.f(x) + self.g(x) @ u

    @cached_property
    def basis_rank(self) -> int:
        """Number of linearly independent basis functions (e.g. 6 for the 9 entries of x kron x, n = 3).

        Measured once from phi at random states; a least-squares system of lower rank lacks excitation.
        """
        rng = np.random.default_rng(12345)
        samples = rng.standard_normal((max(4 * self.num_features, 32), self.state_dim))
        rows = np.stack([self.phi(x) for x in samples])
        return int(np.linalg.matrix_rank(rows, tol=1e-8 * np.abs(rows).max()))


def policy_input(system: ControlSystem, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Policy improvement u(x) = -1/2 R^-1 g(x)' dphi(x)' w: (n,) -> (m,)."""
    return -0.5 * system.R_inv @ system.g(x).T @ system.grad_phi(x).T @ weights


def gain_input(gain: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear policy u = -K x: K (m, n), x (n,) -> (m,)."""
    return -gain @ x
