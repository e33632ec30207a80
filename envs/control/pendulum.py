"""Inverted pendulum (open-loop unstable): theta = 0 upright, torque input, quadratic value basis."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.control.base import ControlSystem
from envs.control.quadratic import triu_grad, triu_phi


class InvertedPendulum(ControlSystem):
    """x = [theta (rad), omega (rad/s)], m l^2 theta'' = m g l sin(theta) - b omega + u (torque, N m).

    Linearisation at the origin: A = [[0, 1], [g/l, -b/(m l^2)]], B = [0, 1/(m l^2)]; open-loop eigenvalue
    ~ +sqrt(g/l) for small damping, so u0 = 0 is not admissible. Value basis [theta^2, theta omega, omega^2].
    """

    name = "pendulum"

    def __init__(self, mass: float = 1.0, length: float = 1.0, damping: float = 0.1, gravity: float = 9.81,
                 Q: Any = None, R: Any = None, x0: Any = (0.2, 0.0)) -> None:
        self.mass, self.length, self.damping, self.gravity = float(mass), float(length), float(damping), float(gravity)
        self.inertia = self.mass * self.length**2
        self.Q = np.eye(2) if Q is None else np.asarray(Q, dtype=float).reshape(2, 2)
        self.R = np.eye(1) if R is None else np.asarray(R, dtype=float).reshape(1, 1)
        self.x0 = np.asarray(x0, dtype=float).reshape(2)

    def f(self, x: np.ndarray) -> np.ndarray:
        theta, omega = x
        return np.array([omega, self.gravity / self.length * np.sin(theta) - self.damping / self.inertia * omega])

    def g(self, x: np.ndarray) -> np.ndarray:
        return np.array([[0.0], [1.0 / self.inertia]])

    def phi(self, x: np.ndarray) -> np.ndarray:
        return triu_phi(x)

    def grad_phi(self, x: np.ndarray) -> np.ndarray:
        return triu_grad(x)

    def linearization(self) -> tuple[np.ndarray, np.ndarray]:
        """(A (2, 2), B (2, 1)) at the upright equilibrium, in closed form."""
        A = np.array([[0.0, 1.0], [self.gravity / self.length, -self.damping / self.inertia]])
        return A, np.array([[0.0], [1.0 / self.inertia]])
