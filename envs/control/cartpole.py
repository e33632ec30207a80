"""Cart-pole with a continuous force input: nonlinear (control-affine) and linearised about the upright equilibrium.

State x = [p (m), theta (rad, 0 = upright), p' (m/s), theta' (rad/s)], input u = force on the cart (N).
Classic dynamics (Barto et al. 1983, pole of half-length l, M = m_c + m_p):

    theta'' = (g sin th - cos th (u + m_p l th'^2 sin th) / M) / (l (4/3 - m_p cos^2 th / M))
    p''     = (u + m_p l (th'^2 sin th - theta'' cos th)) / M

Both are affine in u, so f(x) = the accelerations at u = 0 and g(x) = their u-coefficients. The same formulas
serve numpy (x (n,)) and torch (x (B, n), for differentiable rollouts) through :meth:`CartPole.terms`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.control.base import ControlSystem
from envs.control.linear import LinearSystem
from envs.control.quadratic import triu_grad, triu_phi

DEFAULT_Q = np.diag([1.0, 1.0, 0.1, 0.1])  # penalise cart position and pole angle most
DEFAULT_R = np.array([[0.1]])
DEFAULT_X0 = (0.0, 0.2, 0.0, 0.0)


class _CartPoleParams:
    def _set_params(self, cart_mass: float, pole_mass: float, half_length: float, gravity: float) -> None:
        self.cart_mass, self.pole_mass = float(cart_mass), float(pole_mass)
        self.half_length, self.gravity = float(half_length), float(gravity)
        self.total_mass = self.cart_mass + self.pole_mass

    def upright_linearization(self) -> tuple[np.ndarray, np.ndarray]:
        """(A (4, 4), B (4, 1)) of the cart-pole at the upright equilibrium, in closed form."""
        M, mp, l, g = self.total_mass, self.pole_mass, self.half_length, self.gravity
        D = l * (4.0 / 3.0 - mp / M)
        A = np.zeros((4, 4))
        A[0, 2] = A[1, 3] = 1.0
        A[3, 1] = g / D
        A[2, 1] = -mp * l * g / (M * D)
        B = np.array([[0.0], [0.0], [(1.0 + mp * l / (M * D)) / M], [-1.0 / (M * D)]])
        return A, B


class CartPole(_CartPoleParams, ControlSystem):
    """Nonlinear cart-pole, cost x'Qx + u'Ru, value basis: the 10 quadratic monomials of x."""

    name = "cartpole"

    def __init__(self, cart_mass: float = 1.0, pole_mass: float = 0.1, half_length: float = 0.5,
                 gravity: float = 9.81, Q: Any = None, R: Any = None, x0: Any = DEFAULT_X0) -> None:
        self._set_params(cart_mass, pole_mass, half_length, gravity)
        self.Q = DEFAULT_Q.copy() if Q is None else np.asarray(Q, dtype=float).reshape(4, 4)
        self.R = DEFAULT_R.copy() if R is None else np.asarray(R, dtype=float).reshape(1, 1)
        self.x0 = np.asarray(x0, dtype=float).reshape(4)

    def terms(self, x: Any, xp: Any = np) -> tuple[Any, Any]:
        """(f, g) for a state array x (..., 4) in the array module ``xp`` (numpy or torch): (..., 4), (..., 4)."""
        M, mp, l, grav = self.total_mass, self.pole_mass, self.half_length, self.gravity
        th, pdot, thdot = x[..., 1], x[..., 2], x[..., 3]
        s, c = xp.sin(th), xp.cos(th)
        D = l * (4.0 / 3.0 - mp * c**2 / M)
        th_acc0 = (grav * s - c * mp * l * thdot**2 * s / M) / D
        th_gain = -c / (M * D)
        p_acc0 = (mp * l * thdot**2 * s - mp * l * c * th_acc0) / M
        p_gain = (1.0 - mp * l * c * th_gain) / M
        zero = 0.0 * th
        return xp.stack([pdot, thdot, p_acc0, th_acc0], -1), xp.stack([zero, zero, p_gain, th_gain], -1)

    def f(self, x: np.ndarray) -> np.ndarray:
        return self.terms(np.asarray(x, dtype=float))[0]

    def g(self, x: np.ndarray) -> np.ndarray:
        return self.terms(np.asarray(x, dtype=float))[1][:, None]

    def phi(self, x: np.ndarray) -> np.ndarray:
        return triu_phi(x)

    def grad_phi(self, x: np.ndarray) -> np.ndarray:
        return triu_grad(x)


class CartPoleLinear(_CartPoleParams, LinearSystem):
    """The cart-pole linearised about the upright equilibrium (A, B in closed form); optimum from the CARE."""

    name = "cartpole_linear"

    def __init__(self, cart_mass: float = 1.0, pole_mass: float = 0.1, half_length: float = 0.5,
                 gravity: float = 9.81, Q: Any = None, R: Any = None, x0: Any = DEFAULT_X0,
                 basis: str = "triu") -> None:
        self._set_params(cart_mass, pole_mass, half_length, gravity)
        A, B = self.upright_linearization()
        super().__init__(A=A, B=B, Q=DEFAULT_Q if Q is None else Q, R=DEFAULT_R if R is None else R, x0=x0,
                         basis=basis)
