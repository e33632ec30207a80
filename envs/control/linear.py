"""Linear systems dx/dt = A x + B u; the optimum is the CARE solution P* (V* = x'P*x, K* = R^-1 B'P*)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg

from envs.control.base import ControlSystem
from envs.control.quadratic import kron_grad, kron_phi, matrix_to_weights, triu_grad, triu_phi, weights_to_matrix
from pipeline.errors import ConfigError

BASES = ("kron", "triu")


def as_matrix(value: Any, key: str, shape: tuple[int | None, int | None]) -> np.ndarray:
    """Turn a config value (nested lists or a scalar) into a float matrix of the expected shape, or ConfigError."""
    try:
        arr = np.atleast_2d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}': expected a numeric matrix (list of rows), got {value!r}") from None
    if arr.ndim != 2:
        raise ConfigError(f"config key '{key}': expected a 2-D matrix, got an array of shape {arr.shape}")
    for axis, want in enumerate(shape):
        if want is not None and arr.shape[axis] != want:
            raise ConfigError(f"config key '{key}': expected shape {_shape_text(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"config key '{key}': entries must be finite, got {value!r}")
    return arr


def _shape_text(shape: tuple[int | None, int | None]) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"


class LinearSystem(ControlSystem):
    """dx/dt = A x + B u, l = x'Qx + u'Ru, quadratic value basis (``basis``: kron = x kron x, triu = monomials)."""

    name = "linear"

    def __init__(
        self,
        A: Any,
        B: Any,
        Q: Any = None,
        R: Any = None,
        x0: Any = None,
        basis: str = "kron",
        key: str = "control.system.params",
    ) -> None:
        self.A = as_matrix(A, f"{key}.A", (None, None))
        n = self.A.shape[0]
        if self.A.shape != (n, n):
            raise ConfigError(f"config key '{key}.A': expected a square matrix, got shape {self.A.shape}")
        B_arr = np.asarray(B, dtype=float)
        self.B = as_matrix(B_arr.reshape(-1, 1) if B_arr.ndim == 1 else B_arr, f"{key}.B", (n, None))
        m = self.B.shape[1]
        self.Q = np.eye(n) if Q is None else as_matrix(Q, f"{key}.Q", (n, n))
        self.R = np.eye(m) if R is None else as_matrix(R, f"{key}.R", (m, m))
        self._check_psd(self.Q, f"{key}.Q", strict=False)
        self._check_psd(self.R, f"{key}.R", strict=True)
        self.x0 = np.ones(n) if x0 is None else as_matrix(x0, f"{key}.x0", (1, n))[0]
        if basis not in BASES:
            raise ConfigError(f"config key '{key}.basis': expected one of {', '.join(BASES)}, got {basis!r}")
        self.basis = basis

    @staticmethod
    def _check_psd(M: np.ndarray, key: str, *, strict: bool) -> None:
        if not np.allclose(M, M.T):
            raise ConfigError(f"config key '{key}': expected a symmetric matrix, got {M.tolist()}")
        low = float(np.linalg.eigvalsh(M).min())
        if low < 0 or (strict and low <= 0):
            kind = "positive definite" if strict else "positive semi-definite"
            raise ConfigError(f"config key '{key}': expected a {kind} matrix (smallest eigenvalue {low:.3g})")

    def f(self, x: np.ndarray) -> np.ndarray:
        return self.A @ x

    def g(self, x: np.ndarray) -> np.ndarray:
        return self.B

    def phi(self, x: np.ndarray) -> np.ndarray:
        return kron_phi(x) if self.basis == "kron" else triu_phi(x)

    def grad_phi(self, x: np.ndarray) -> np.ndarray:
        return kron_grad(x) if self.basis == "kron" else triu_grad(x)

    @cached_property
    def care_solution(self) -> np.ndarray:
        """P* from scipy.linalg.solve_continuous_are (n, n)."""
        return scipy.linalg.solve_continuous_are(self.A, self.B, self.Q, self.R)

    def optimal_weights(self) -> np.ndarray:
        return matrix_to_weights(self.care_solution, self.basis)

    def optimal_gain(self) -> np.ndarray:
        """K* = R^-1 B' P* (m, n)."""
        return self.R_inv @ self.B.T @ self.care_solution

    def gain_from_weights(self, w: np.ndarray) -> np.ndarray:
        """The linear gain K (m, n) of the improved policy u = -K x for value weights w."""
        return self.R_inv @ self.B.T @ weights_to_matrix(w, self.state_dim, self.basis)

    def weights_from_gain(self, K: np.ndarray) -> np.ndarray | None:
        """Value weights whose improved policy is u = -K x, when K = R^-1 B' P has a symmetric solution P."""
        P, *_ = np.linalg.lstsq(self.R_inv @ self.B.T, K, rcond=None)
        P = 0.5 * (P + P.T)
        return matrix_to_weights(P, self.basis) if np.allclose(self.R_inv @ self.B.T @ P, K, atol=1e-9) else None


class Example1(LinearSystem):
    """IntRL Example 1: third-order linear system, Q = I3, R = 1, x0 = [2, -2, 3], phi = x kron x, K0 = 0."""

    name = "example1"

    def __init__(self, x0: Any = (2.0, -2.0, 3.0), basis: str = "kron") -> None:
        super().__init__(
            A=[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-0.1, -0.5, -0.7]],
            B=[[0.0], [0.0], [1.0]],
            Q=np.eye(3),
            R=[[1.0]],
            x0=x0,
            basis=basis,
        )
