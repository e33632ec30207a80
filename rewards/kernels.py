r"""Kernels on an interval and their closed-form integrals, for Bayesian quadrature.

Every formula is written once and evaluated by a :class:`Backend`: :data:`NUMPY` (float64 arrays) or
:func:`mpmath_backend` (numpy object arrays of ``mpmath.mpf`` at a chosen number of digits), so the same code
gives double-precision and extended-precision Gram matrices and kernel means.

Positions are offsets ``u = t - a`` from the left end of the integration interval ``[a, b]``, ``T = b - a``; both
kernels here depend on the node layout only through these offsets.

Matérn kernels with half-integer smoothness ``nu = p + 1/2`` (``p = 0..3``), unit output scale, lengthscale ``l``:

.. math::
    k(s, t) = e^{-x} \sum_{m=0}^{p} a_m x^m, \quad x = \sqrt{2\nu}\,|s - t| / l, \quad
    a_m = \frac{p!}{(2p)!} \frac{(2p - m)!}{m!\,(p - m)!} 2^m,

e.g. ``p = 3``: ``(1 + x + 2 x^2/5 + x^3/15) e^{-x}``, i.e. ``(1 + sqrt7 r + 14 r^2/5 + 7 sqrt7 r^3/15) e^{-sqrt7 r}``.
With ``s_c = sqrt(2 nu) / l`` and the incomplete-gamma identity
``int_0^X e^{-x} x^m dx = m! (1 - e^{-X} sum_{j<=m} X^j / j!)`` the one-sided integral of the kernel is

.. math::
    G(X) = \int_0^X e^{-x} \sum_m a_m x^m \,dx = A - e^{-X} \sum_{j=0}^{p} q_j X^j, \quad
    A = \sum_m a_m m!, \quad q_j = \frac{1}{j!} \sum_{m \ge j} a_m m!,

and the kernel mean (integral over the interval of ``k(., t)``) and the double integral are

.. math::
    z(u) = \frac{1}{s_c} \bigl[ G(s_c u) + G(s_c (T - u)) \bigr], \qquad
    \iint k = \frac{2}{s_c^2} \Bigl[ A X - \int_0^X e^{-x} \sum_j q_j x^j dx \Bigr]_{X = s_c T},

where the last integral is ``G`` again with the coefficients ``q`` in place of ``a``.

Brownian motion with a random start value (variance ``c0 > 0``) anchored at ``a``:
``k(s, t) = c0 + min(u_s, u_t)``, ``z(u) = c0 T + u T - u^2 / 2``, ``iint k = c0 T^2 + T^3 / 3``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import mpmath
import numpy as np

Array = np.ndarray  # float64 array (NUMPY backend) or object array of mpf (mpmath backend)


@dataclass(frozen=True)
class Backend:
    """The few operations the formulas need, for one number type.

    Attributes:
        exp: elementwise exponential of an array or a scalar.
        sqrt: square root of a scalar.
        scalar: exact conversion of an int, float or Fraction to the backend's scalar.
        array: conversion of a float64 array to the backend's array type (values taken exactly).
        solve: ``solve(A, b)`` for a square (n, n) array and an (n,) right-hand side, LU with partial pivoting.
    """

    exp: Callable[[Any], Any]
    sqrt: Callable[[Any], Any]
    scalar: Callable[[int | float | Fraction], Any]
    array: Callable[[np.ndarray], Array]
    solve: Callable[[Array, Array], Array]


NUMPY = Backend(
    exp=np.exp, sqrt=np.sqrt, scalar=float, array=lambda x: np.asarray(x, dtype=np.float64), solve=np.linalg.solve
)


@functools.lru_cache(maxsize=8)
def mpmath_backend(dps: int) -> Backend:
    """Backend computing with ``dps`` significant decimal digits in its own mpmath context (no global state)."""
    ctx = mpmath.MPContext()
    ctx.dps = dps

    def scalar(value: int | float | Fraction) -> Any:
        q = Fraction(value)
        return ctx.mpf(q.numerator) / q.denominator

    def array(x: np.ndarray) -> Array:
        x = np.asarray(x, dtype=np.float64)
        return np.array([ctx.mpf(float(v)) for v in x.ravel()], dtype=object).reshape(x.shape)

    def solve(A: Array, b: Array) -> Array:
        x = ctx.lu_solve(ctx.matrix(A.tolist()), ctx.matrix(b.tolist()))
        return np.array([x[i] for i in range(len(b))], dtype=object)

    return Backend(exp=np.frompyfunc(ctx.exp, 1, 1), sqrt=ctx.sqrt, scalar=scalar, array=array, solve=solve)


class Kernel(Protocol):
    """A kernel on ``[a, b]`` seen through offsets ``u = t - a``; ``T = b - a`` is a backend scalar."""

    def gram(self, u: Array, v: Array, xp: Backend) -> Array:
        """Kernel matrix ``k(u_i, v_j)``, shape (len(u), len(v))."""

    def mean(self, u: Array, T: Any, xp: Backend) -> Array:
        """Kernel mean ``z(u_i) = int_0^T k(s, u_i) ds``, shape (len(u),)."""

    def double_mean(self, T: Any, xp: Backend) -> Any:
        """``int_0^T int_0^T k(s, t) ds dt`` (the prior variance of the integral)."""


def _horner(coeffs: Sequence[Fraction], x: Any, xp: Backend) -> Any:
    """``sum_m coeffs[m] x^m`` for an array or scalar ``x``."""
    out = xp.scalar(coeffs[-1]) + 0 * x
    for c in reversed(coeffs[:-1]):
        out = out * x + xp.scalar(c)
    return out


def _gamma_moments(coeffs: Sequence[Fraction]) -> tuple[Fraction, list[Fraction]]:
    """``A = sum_m a_m m!`` and ``q_j = sum_{m>=j} a_m m! / j!`` for ``a = coeffs`` (module docstring)."""
    weighted = [c * math.factorial(m) for m, c in enumerate(coeffs)]
    return sum(weighted, Fraction(0)), [sum(weighted[j:], Fraction(0)) / math.factorial(j) for j in range(len(coeffs))]


def _exp_poly_integral(coeffs: Sequence[Fraction], X: Any, xp: Backend) -> Any:
    """``int_0^X e^{-x} sum_m coeffs[m] x^m dx = A - e^{-X} sum_j q_j X^j``, elementwise in ``X``."""
    total, q = _gamma_moments(coeffs)
    return xp.scalar(total) - xp.exp(-X) * _horner(q, X, xp)


@dataclass(frozen=True)
class Matern:
    """Matérn kernel with smoothness ``nu = order + 1/2`` (order 0..3) and lengthscale ``l`` (same units as t)."""

    order: int
    lengthscale: float

    @property
    def coeffs(self) -> tuple[Fraction, ...]:
        """``a_m``, m = 0..order: the kernel is ``e^{-x} sum_m a_m x^m``."""
        p, f = self.order, math.factorial
        return tuple(Fraction(f(p) * f(2 * p - m) * 2**m, f(2 * p) * f(m) * f(p - m)) for m in range(p + 1))

    def _rate(self, xp: Backend) -> Any:
        """``s_c = sqrt(2 nu) / l``: distances times this give the kernel's argument x."""
        return xp.sqrt(xp.scalar(2 * self.order + 1)) / xp.scalar(self.lengthscale)

    def gram(self, u: Array, v: Array, xp: Backend) -> Array:
        x = abs(u[:, None] - v[None, :]) * self._rate(xp)
        return xp.exp(-x) * _horner(self.coeffs, x, xp)

    def mean(self, u: Array, T: Any, xp: Backend) -> Array:
        rate = self._rate(xp)
        return (
            _exp_poly_integral(self.coeffs, u * rate, xp) + _exp_poly_integral(self.coeffs, (T - u) * rate, xp)
        ) / rate

    def double_mean(self, T: Any, xp: Backend) -> Any:
        rate = self._rate(xp)
        X = T * rate
        total, q = _gamma_moments(self.coeffs)
        return 2 * (xp.scalar(total) * X - _exp_poly_integral(q, X, xp)) / rate**2


@dataclass(frozen=True)
class Wiener:
    """Brownian motion started at ``a`` from a random value of variance ``start_variance``: ``c0 + min(u_s, u_t)``."""

    start_variance: float

    def gram(self, u: Array, v: Array, xp: Backend) -> Array:
        s, t = u[:, None], v[None, :]
        return xp.scalar(self.start_variance) + (s + t - abs(s - t)) / 2

    def mean(self, u: Array, T: Any, xp: Backend) -> Array:
        return xp.scalar(self.start_variance) * T + u * T - u * u / 2

    def double_mean(self, T: Any, xp: Backend) -> Any:
        return xp.scalar(self.start_variance) * T**2 + T**3 / 3
