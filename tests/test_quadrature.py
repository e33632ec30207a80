"""Quadrature rules against closed-form integrals, known rates and independent GP computations."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError, InputError
from rewards import quadrature as quad
from rewards.kernels import NUMPY, Matern

T = 0.1
BQ = [r for r in quad.RULES if r.startswith("bq-matern")]
BSQ = [r for r in quad.RULES if r.startswith("bsq-")]
NU = {"12": 0.5, "32": 1.5, "52": 2.5, "72": 3.5}


def _sin_exp(t: np.ndarray) -> np.ndarray:
    return np.exp(3 * t) * np.sin(5 * t)


SIN_EXP_INTEGRAL = ((np.exp((3 + 5j) * T) - 1) / (3 + 5j)).imag  # int_0^T e^{3t} sin 5t dt


def _random_nodes(n: int, a: float, b: float, seed: int, *, ends: bool) -> np.ndarray:
    inner = np.sort(np.random.default_rng(seed).uniform(a, b, n - 2 if ends else n))
    return np.concatenate([[a], inner, [b]]) if ends else inner


def _poly_error(rule: str, nodes: np.ndarray, a: float, b: float, power: int, **params) -> float:
    """|rule - exact| / exact for int_a^b t^power dt."""
    exact = (b ** (power + 1) - a ** (power + 1)) / (power + 1)
    return abs(quad.integrate(rule, nodes**power, nodes, a, b, **params) - exact) / abs(exact)


def test_trapezoid_exact_on_lines_only() -> None:
    for nodes in (np.linspace(0.2, 1.2, 6), _random_nodes(7, 0.2, 1.2, seed=0, ends=True)):
        assert _poly_error("trapezoid", nodes, 0.2, 1.2, 1) < 1e-14
        assert _poly_error("trapezoid", nodes, 0.2, 1.2, 2) > 1e-4


def test_simpson_exact_on_cubics_not_quartics() -> None:
    nodes = np.linspace(0.2, 1.2, 7)
    assert _poly_error("simpson", nodes, 0.2, 1.2, 3) < 1e-14
    assert _poly_error("simpson", nodes, 0.2, 1.2, 4) > 1e-6
    uneven = _random_nodes(7, 0.2, 1.2, seed=1, ends=True)  # a parabola per pair of intervals: exact on quadratics
    assert _poly_error("simpson", uneven, 0.2, 1.2, 2) < 1e-13


@pytest.mark.parametrize("rule", BSQ)
@pytest.mark.parametrize("degree", [0, 3, 5])
def test_bayes_sard_exact_on_polynomials_up_to_degree(rule: str, degree: int) -> None:
    a, b = 1.0, 1.1
    for seed, ends in [(2, True), (3, False)]:
        nodes = _random_nodes(9, a, b, seed, ends=ends)
        for d in range(degree + 1):
            assert _poly_error(rule, nodes, a, b, d, degree=degree) < 1e-13, (rule, degree, d)
        assert _poly_error(rule, nodes, a, b, degree + 1, degree=degree) > 1e-12


@pytest.mark.parametrize("rule", BQ)
def test_plain_bq_is_not_exact_on_constants(rule: str) -> None:
    nodes = np.linspace(0.0, T, 5)
    assert _poly_error(rule, nodes, 0.0, T, 0) > 1e-9


def _observed_order(rule: str, n1: int, n2: int, **params) -> float:
    def err(n: int) -> float:
        nodes = np.linspace(0.0, T, n)
        return abs(quad.integrate(rule, _sin_exp(nodes), nodes, 0.0, T, **params) - SIN_EXP_INTEGRAL)

    return float(np.log(err(n1) / err(n2)) / np.log((n2 - 1) / (n1 - 1)))


@pytest.mark.parametrize(("rule", "order"), [("trapezoid", 2.0), ("simpson", 4.0), ("bq-wiener", 2.0)])
def test_classical_rates(rule: str, order: float) -> None:
    assert _observed_order(rule, 9, 17) == pytest.approx(order, abs=0.05)


@pytest.mark.parametrize("rule", BQ + BSQ)
def test_matern_rates_reach_theory(rule: str) -> None:
    """Matérn-nu BQ converges at least at the Sobolev rate N^-(nu + 1/2) on a smooth integrand."""
    nu = NU[rule[-2:]]
    assert nu + 0.5 - 0.05 < _observed_order(rule, 9, 17) < nu + 1.7


@pytest.mark.parametrize("start_variance", [1e-3, 1.0, 50.0])
def test_bq_wiener_is_trapezoid(start_variance: float) -> None:
    for nodes, a, b in [(np.linspace(0.0, T, 11), 0.0, T), (_random_nodes(8, -2.0, 3.0, seed=4, ends=True), -2.0, 3.0)]:
        wiener = quad.weights("bq-wiener", nodes, a, b, start_variance=start_variance)
        np.testing.assert_allclose(wiener, quad.weights("trapezoid", nodes, a, b), rtol=1e-12, atol=0)


def _exp_error(n: int, **params) -> float:
    nodes = np.linspace(0.0, T, n)
    return abs(quad.integrate("bq-matern72", np.exp(nodes), nodes, 0.0, T, lengthscale=0.3, **params) - np.expm1(T))


def test_exact_and_jittered_weights_agree_at_small_n() -> None:
    for n in (3, 4):
        nodes = np.linspace(0.0, T, n)
        exact = quad.weights("bq-matern72", nodes, 0.0, T)
        jittered = quad.weights("bq-matern72", nodes, 0.0, T, precision="float64", jitter=1e-8)
        np.testing.assert_allclose(jittered, exact, rtol=1e-4)
        np.testing.assert_allclose(quad.weights("bq-matern72", nodes, 0.0, T, precision="float64", jitter=0.0), exact)


def test_exact_weights_remove_the_jitter_floor() -> None:
    """Authors' setting (lengthscale 0.3, T = 0.1): float64 + jitter 1e-8 stalls after N ~ 8, exact keeps falling."""
    exact = {n: _exp_error(n) for n in (8, 15)}
    jittered = {n: _exp_error(n, precision="float64", jitter=1e-8) for n in (8, 15)}
    assert exact[15] < exact[8] / 20  # about N^-5
    assert jittered[15] > jittered[8] / 5
    assert jittered[15] > 10 * exact[15]


def test_extended_precision_is_enough_for_many_nodes() -> None:
    """N = 40 with a long lengthscale (Gram condition number ~1e30): constants exact, error still falls as N^-4."""
    err = {}
    for n in (20, 40):
        nodes = np.linspace(0.0, T, n)
        c = quad.weights("bsq-matern72", nodes, 0.0, T, lengthscale=1.0)
        assert c.sum() == pytest.approx(T, rel=1e-14)
        err[n] = abs(c @ _sin_exp(nodes) - SIN_EXP_INTEGRAL)
    assert err[40] < err[20] / (39 / 19) ** 4


@pytest.mark.parametrize("start", [0.1, 37.25, 1e3 + 1 / 3])
def test_weights_are_shift_invariant_and_cached(start: float) -> None:
    """Intervals [t_k, t_k + T] with nodes t_k + linspace(0, T, N) share the weights of [0, T], float noise and all."""
    nodes = np.linspace(0.0, T, 7)
    base = quad.weights("bq-matern52", nodes, 0.0, T)
    hits = quad._cached_weights.cache_info().hits
    for k in range(5):
        a = start + k * T
        shifted = quad.weights("bq-matern52", a + nodes, a, a + T)
        np.testing.assert_allclose(shifted, base, rtol=1e-11)
    assert quad._cached_weights.cache_info().hits == hits + 5
    shifted[:] = 0.0  # callers get copies: the cache is not changed through them
    np.testing.assert_array_equal(quad.weights("bq-matern52", nodes, 0.0, T), base)


def test_integrate_batches_over_leading_axes() -> None:
    nodes = np.linspace(0.0, T, 5)
    values = np.random.default_rng(5).normal(size=(3, 2, 5))
    out = quad.integrate("simpson", values, nodes, 0.0, T)
    assert out.shape == (3, 2)
    c = quad.weights("simpson", nodes, 0.0, T)
    np.testing.assert_allclose(out, np.einsum("ijn,n->ij", values, c))


def test_posterior_variance_matches_discretised_gp() -> None:
    """Var(int f | f(nodes)) of a Matérn-3/2 GP, computed on a fine grid in float64 (well-conditioned case)."""
    lengthscale, a, b = 0.3, 0.0, 1.0
    nodes = np.array([0.0, 0.3, 0.55, 1.0])
    grid = np.linspace(a, b, 1201)
    w = np.full(grid.size, grid[1] - grid[0])
    w[[0, -1]] /= 2
    k = Matern(1, lengthscale)
    cross = k.gram(grid, nodes, NUMPY)
    cond = k.gram(grid, grid, NUMPY) - cross @ np.linalg.solve(k.gram(nodes, nodes, NUMPY), cross.T)
    expected = w @ cond @ w
    assert quad.posterior_variance("bq-matern32", nodes, a, b, lengthscale=lengthscale) == pytest.approx(expected, 1e-5)


def test_bayes_sard_variance_matches_schur_formula() -> None:
    """Karvonen et al. (2018): var = iint k - z'K^-1 z + r'(P'K^-1 P)^-1 r, r = int p - P'K^-1 z."""
    lengthscale, a, b, degree = 0.3, 0.0, 1.0, 2
    nodes = _random_nodes(7, a, b, seed=6, ends=False)
    k = Matern(2, lengthscale)
    K, z = k.gram(nodes, nodes, NUMPY), k.mean(nodes, b - a, NUMPY)
    P = nodes[:, None] ** np.arange(degree + 1)
    r = (b ** np.arange(1, degree + 2)) / np.arange(1, degree + 2) - P.T @ np.linalg.solve(K, z)
    expected = (
        k.double_mean(b - a, NUMPY) - z @ np.linalg.solve(K, z) + r @ np.linalg.solve(P.T @ np.linalg.solve(K, P), r)
    )
    got = quad.posterior_variance("bsq-matern52", nodes, a, b, lengthscale=lengthscale, degree=degree)
    assert got == pytest.approx(expected, rel=1e-6)


def test_bq_variance_is_minimal_and_matches_brownian_bridges() -> None:
    nodes = np.linspace(0.0, T, 9)
    exact = quad.posterior_variance("bq-matern72", nodes, 0.0, T)
    assert 0 < exact < quad.posterior_variance("bq-matern72", nodes, 0.0, T, precision="float64")
    h = np.diff(nodes)  # Brownian bridge between nodes: var of its integral is h^3 / 12
    assert quad.posterior_variance("bq-wiener", nodes, 0.0, T) == pytest.approx(np.sum(h**3) / 12, rel=1e-12)


@pytest.mark.parametrize(
    ("rule", "n", "params", "match"),
    [
        ("gauss", 5, {}, "quadrature.rule = 'gauss'.*trapezoid, simpson, bq-wiener"),
        ("trapezoid", 1, {}, "quadrature.num_nodes = 1: expected an integer >= 2"),
        ("simpson", 6, {}, "quadrature.num_nodes = 6: simpson needs an odd number of nodes; use 5 or 7"),
        ("bq-matern72", 5, {"lengthscale": 0.0}, "quadrature.lengthscale = 0.0"),
        ("bq-matern72", 5, {"lengthscale": -1.0}, "quadrature.lengthscale = -1.0"),
        ("bq-matern72", 5, {"lengthscale": float("nan")}, "quadrature.lengthscale"),
        ("bq-matern72", 5, {"precision": "float32"}, "quadrature.precision = 'float32'.*exact, float64"),
        ("bq-matern72", 5, {"jitter": -1e-8}, "quadrature.jitter"),
        ("bq-wiener", 5, {"start_variance": 0}, "quadrature.start_variance"),
        ("bsq-matern72", 3, {}, "quadrature.degree = 3.*3 nodes"),
        ("bsq-matern72", 5, {"degree": 1.5}, "quadrature.degree = 1.5"),
        ("bq-matern72", 5, {"lengthscal": 0.3}, "quadrature.lengthscal: unknown parameter"),
    ],
)
def test_bad_params_raise_config_error(rule: str, n: int, params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        quad.check_rule_params(rule, n, **params)
    with pytest.raises(ConfigError, match=match):
        quad.weights(rule, np.linspace(0.0, T, n), 0.0, T, **params)


@pytest.mark.parametrize(
    ("rule", "nodes", "a", "b", "match"),
    [
        ("bq-matern72", [0.0, 0.05, 0.2], 0.0, T, "outside the interval"),
        ("bq-matern72", [-0.01, 0.05, 0.1], 0.0, T, "outside the interval"),
        ("bq-matern72", [0.0, 0.07, 0.05], 0.0, T, "strictly increasing"),
        ("bq-matern72", [0.0, 0.05, 0.05], 0.0, T, "strictly increasing"),
        ("bq-matern72", [0.0, 0.05, 0.1], T, 0.0, r"expected finite a < b"),
        ("trapezoid", [0.01, 0.05, 0.1], 0.0, T, "needs both ends"),
        ("simpson", [0.0, 0.05, 0.09], 0.0, T, "needs both ends"),
    ],
)
def test_bad_nodes_raise_input_error(rule: str, nodes: list, a: float, b: float, match: str) -> None:
    with pytest.raises(InputError, match=match):
        quad.weights(rule, np.array(nodes), a, b)


def test_values_shape_mismatch_and_variance_without_kernel() -> None:
    nodes = np.linspace(0.0, T, 5)
    with pytest.raises(InputError, match="last axis must match the 5 nodes"):
        quad.integrate("trapezoid", np.ones((2, 4)), nodes, 0.0, T)
    with pytest.raises(ConfigError, match="needs a kernel rule"):
        quad.posterior_variance("trapezoid", nodes, 0.0, T)
