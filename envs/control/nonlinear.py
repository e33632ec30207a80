"""Nonlinear control-affine systems with a known optimal value (converse-HJB constructions)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.control.base import ControlSystem
from envs.control.quadratic import triu_grad, triu_phi

_Q2 = np.eye(2)
_R1 = np.eye(1)


class _Quadratic2D(ControlSystem):
    """Two states, one input, basis [x1^2, x1 x2, x2^2], Q = I2, R = 1."""

    Q = _Q2
    R = _R1

    def __init__(self, x0: Any = (1.0, 1.0), w0: Any = None) -> None:
        self.x0 = np.asarray(x0, dtype=float).reshape(2)
        self._w0 = None if w0 is None else np.asarray(w0, dtype=float).reshape(3)

    def phi(self, x: np.ndarray) -> np.ndarray:
        return triu_phi(x)

    def grad_phi(self, x: np.ndarray) -> np.ndarray:
        return triu_grad(x)

    def optimal_weights(self) -> np.ndarray:
        return np.array([0.5, 0.0, 1.0])  # V* = x1^2/2 + x2^2


class Example2(_Quadratic2D):
    """IntRL Example 2: f = [-x1 + x2; -(x1 + x2)/2 + x2 sin^2(x1)/2], g = [0; sin x1].

    V* = x1^2/2 + x2^2 (w* = [0.5, 0, 1]), u* = -x2 sin x1; the authors start from w0 = [-1, 3, 1.5].
    """

    name = "example2"

    def f(self, x: np.ndarray) -> np.ndarray:
        x1, x2 = x
        return np.array([-x1 + x2, -0.5 * (x1 + x2) + 0.5 * x2 * np.sin(x1) ** 2])

    def g(self, x: np.ndarray) -> np.ndarray:
        return np.array([[0.0], [np.sin(x[0])]])

    def initial_weights(self) -> np.ndarray:
        return np.array([-1.0, 3.0, 1.5]) if self._w0 is None else self._w0


class CosNonlinear(_Quadratic2D):
    """Vamvoudakis & Lewis (2010) benchmark: f = [-x1 + x2; -x1/2 - x2 (1 - (cos 2x1 + 2)^2)/2], g = [0; cos 2x1 + 2].

    Open-loop unstable at the origin (eigenvalue ~4.1), so u0 = 0 is not admissible; the default w0 = [0, 0, 1.5]
    gives u0 = -1.5 (cos 2x1 + 2) x2, which is. V* = x1^2/2 + x2^2, u* = -(cos 2x1 + 2) x2.
    """

    name = "cos_nonlinear"

    def f(self, x: np.ndarray) -> np.ndarray:
        x1, x2 = x
        c = np.cos(2.0 * x1) + 2.0
        return np.array([-x1 + x2, -0.5 * x1 - 0.5 * x2 * (1.0 - c**2)])

    def g(self, x: np.ndarray) -> np.ndarray:
        return np.array([[0.0], [np.cos(2.0 * x[0]) + 2.0]])

    def initial_weights(self) -> np.ndarray:
        return np.array([0.0, 0.0, 1.5]) if self._w0 is None else self._w0
