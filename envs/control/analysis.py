"""Local analysis at an equilibrium: Jacobians, linearisation and closed-loop eigenvalues (central differences)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.control.base import ControlSystem

_STEP = 1e-6  # central-difference step (state / input units)


def jacobian(fun: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float = _STEP) -> np.ndarray:
    """d fun / dx at x by central differences: fun (k,) -> (r,), x (k,) -> (r, k)."""
    x = np.asarray(x, dtype=float)
    cols = [(fun(x + step * e) - fun(x - step * e)) / (2 * step) for e in np.eye(x.size)]
    return np.stack(cols, axis=1)


def linearize(system: ControlSystem, x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A = df/dx (n, n) and B = g (n, m) at x (default: the origin) of dx/dt = f(x) + g(x) u."""
    x = np.zeros(system.state_dim) if x is None else np.asarray(x, dtype=float)
    return jacobian(system.f, x), np.asarray(system.g(x), dtype=float)


def closed_loop_eigenvalues(system: ControlSystem, policy: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Eigenvalues (n,) of the closed-loop Jacobian d/dx [f(x) + g(x) policy(x)] at the origin."""
    J = jacobian(lambda x: system.dynamics(x, policy(x)), np.zeros(system.state_dim))
    return np.linalg.eigvals(J)


def stability_abscissa(system: ControlSystem, policy: Callable[[np.ndarray], np.ndarray]) -> float:
    """Largest real part of the closed-loop eigenvalues at the origin (< 0: locally stabilising) (1/s)."""
    return float(closed_loop_eigenvalues(system, policy).real.max())


def mirrored_gain(A: np.ndarray, B: np.ndarray, *, min_rate: float = 0.5) -> np.ndarray:
    """A CARE-free stabilising gain K (m, n): poles of A - BK at the open-loop eigenvalues mirrored into the left
    half-plane, -max(|Re lambda|, min_rate) + i Im lambda (repeated real poles spread by 10 % so that
    scipy.signal.place_poles can place them with few inputs)."""
    import scipy.signal

    eig = np.linalg.eigvals(A)
    poles = -np.maximum(np.abs(eig.real), min_rate) + 1j * eig.imag
    for i in range(poles.size):
        while np.any(np.isclose(poles[:i], poles[i])):
            poles[i] *= 1.1
    return scipy.signal.place_poles(A, B, poles).gain_matrix
