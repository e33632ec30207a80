"""Kernels and closed-form kernel integrals against Bessel-function forms and brute-force quadrature."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.special

from rewards.kernels import NUMPY, Matern, Wiener, mpmath_backend

ORDERS = [0, 1, 2, 3]  # nu = 1/2, 3/2, 5/2, 7/2


def _matern_bessel(r: np.ndarray, nu: float) -> np.ndarray:
    """General Matérn form 2^(1-nu)/Gamma(nu) x^nu K_nu(x), x = sqrt(2 nu) r (r > 0)."""
    x = np.sqrt(2 * nu) * r
    return 2 ** (1 - nu) / scipy.special.gamma(nu) * x**nu * scipy.special.kv(nu, x)


@pytest.mark.parametrize("order", ORDERS)
def test_matern_gram_matches_bessel_form(order: int) -> None:
    lengthscale = 0.3
    u = np.array([0.0, 0.01, 0.05, 0.1, 0.7])
    gram = Matern(order, lengthscale).gram(u, u, NUMPY)
    r = np.abs(u[:, None] - u[None, :]) / lengthscale
    expected = np.where(r > 0, _matern_bessel(np.where(r > 0, r, 1.0), order + 0.5), 1.0)
    np.testing.assert_allclose(gram, expected, rtol=1e-12, atol=1e-15)


def test_matern72_closed_form() -> None:
    r = np.linspace(0.0, 3.0, 7)
    s7 = np.sqrt(7.0)
    expected = (1 + s7 * r + 14 * r**2 / 5 + 7 * s7 * r**3 / 15) * np.exp(-s7 * r)
    np.testing.assert_allclose(Matern(3, 1.0).gram(r, np.zeros(1), NUMPY)[:, 0], expected, rtol=1e-14)


def _kernel_mean_by_quad(kernel, u_j: float, T: float) -> float:
    def k(s: float) -> float:
        return float(kernel.gram(np.array([s]), np.array([u_j]), NUMPY)[0, 0])

    left = scipy.integrate.quad(k, 0.0, u_j, epsabs=0, epsrel=1e-13)[0] if u_j > 0 else 0.0
    right = scipy.integrate.quad(k, u_j, T, epsabs=0, epsrel=1e-13)[0] if u_j < T else 0.0
    return left + right


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lengthscale", [0.02, 0.3, 5.0])
@pytest.mark.parametrize("T", [0.1, 2.0])
def test_matern_kernel_mean_matches_quad(order: int, lengthscale: float, T: float) -> None:
    kernel = Matern(order, lengthscale)
    u = np.array([0.0, 0.013, 0.37, 0.5, 0.999, 1.0]) * T
    expected = np.array([_kernel_mean_by_quad(kernel, uj, T) for uj in u])
    np.testing.assert_allclose(kernel.mean(u, T, NUMPY), expected, rtol=1e-11)
    mp = mpmath_backend(40)
    np.testing.assert_allclose(np.array(kernel.mean(mp.array(u), mp.scalar(T), mp), dtype=float), expected, rtol=1e-11)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lengthscale", [0.02, 0.3, 5.0])
def test_matern_double_mean_matches_quad(order: int, lengthscale: float) -> None:
    kernel, T = Matern(order, lengthscale), 0.4

    def integrand(r: float) -> float:  # iint k(s - t) ds dt = 2 int_0^T (T - r) k(r) dr
        return 2 * (T - r) * float(kernel.gram(np.array([r]), np.zeros(1), NUMPY)[0, 0])

    expected = scipy.integrate.quad(integrand, 0.0, T, epsabs=0, epsrel=1e-13)[0]
    assert kernel.double_mean(T, NUMPY) == pytest.approx(expected, rel=1e-10)


def test_wiener_integrals_match_quad() -> None:
    kernel, T = Wiener(start_variance=0.7), 1.3
    u = np.array([0.0, 0.2, 1.0, 1.3])
    expected = np.array([_kernel_mean_by_quad(kernel, uj, T) for uj in u])
    np.testing.assert_allclose(kernel.mean(u, T, NUMPY), expected, rtol=1e-12)
    double = scipy.integrate.quad(lambda s: _kernel_mean_by_quad(kernel, s, T), 0.0, T, epsrel=1e-12)[0]
    assert kernel.double_mean(T, NUMPY) == pytest.approx(double, rel=1e-11)
    np.testing.assert_allclose(kernel.gram(u, u, NUMPY), 0.7 + np.minimum(u[:, None], u[None, :]), rtol=1e-15)


@pytest.mark.parametrize("order", ORDERS)
def test_mpmath_backend_carries_extended_precision(order: int) -> None:
    """At 50 digits the closed forms match mpmath.quad of the explicit kernel formulas to ~40 digits."""
    lengthscale, T, u_j = 0.3, 0.1, 0.03
    ctx = mpmath.MPContext()
    ctx.dps = 50
    kernel, mp = Matern(order, lengthscale), mpmath_backend(50)
    ls, uj, TT = ctx.mpf(lengthscale), ctx.mpf(u_j), ctx.mpf(T)

    def k(r):  # half-integer Matérn forms of |s - t| = r, written independently of rewards.kernels
        x = ctx.sqrt(2 * order + 1) * abs(r) / ls
        return [1, 1 + x, 1 + x + x**2 / 3, 1 + x + 2 * x**2 / 5 + x**3 / 15][order] * ctx.exp(-x)

    mean = kernel.mean(mp.array(np.array([u_j])), mp.scalar(T), mp)[0]
    assert abs(mean - ctx.quad(lambda s: k(s - uj), [0, uj, TT])) < ctx.mpf(10) ** -40
    double = 2 * ctx.quad(lambda r: (TT - r) * k(r), [0, TT])  # iint k(s - t) ds dt, substituting r = |s - t|
    assert abs(kernel.double_mean(mp.scalar(T), mp) - double) < ctx.mpf(10) ** -40
