"""Quadrature rules for the integral Bellman equation: ``sum_j c_j f(t_j) ~ int_a^b f(t) dt``.

Rules (``quadrature.rule``):

- ``trapezoid``, ``simpson``: composite Newton-Cotes on the given nodes (any spacing, via scipy); the nodes must
  include both ends; ``simpson`` needs an odd number of nodes (exact on cubics for even spacing).
- ``bq-wiener``: Bayesian quadrature (BQ) with Brownian motion started at ``a`` from a random value of variance
  ``start_variance``; with nodes at both ends its weights are the trapezoid weights.
- ``bq-matern{12,32,52,72}``: BQ with a Matérn-nu kernel (nu = 1/2 .. 7/2) of ``lengthscale`` (same time units as
  the nodes): weights ``c = K^-1 z``, K the Gram matrix of the nodes, z the kernel means (:mod:`rewards.kernels`).
- ``bsq-matern{12,32,52,72}``: Bayes-Sard quadrature (Karvonen, Oates, Särkkä 2018): the same GP plus a flat prior
  on a polynomial mean of ``degree``; weights from ``[[K, P], [P', 0]] [c; lam] = [z; int p]``, exact on
  polynomials up to ``degree`` for any nodes. Needs ``num_nodes >= degree + 1``.

Precision of the kernel rules (``quadrature.precision``):

- ``"exact"`` (default): Gram matrix, kernel means and the solve in mpmath with enough digits for the Gram
  matrix's condition number (at least 50; about 1e12 for lengthscale 0.3, T = 0.1, N = 15), no jitter, then
  rounded to float64. The weights are correct to float64 accuracy, so BQ errors keep falling with N.
- ``"float64"``: the IntRL authors' way (as in probnum): a double-precision solve on ``K + jitter * I``. The
  jitter (default 1e-8) regularises the ill-conditioned system and the error stops falling at N ~ 8.

Weights depend on the nodes only through ``nodes - a`` and ``b - a``, and are cached on these and the
parameters. Evenly spaced nodes with both ends (the main case) are recognised up to ``1e-11 (b - a)``, the float
noise of ``t_k + linspace(0, T, N)`` even at ``t_k ~ 1e4 T``, and use the weights of exactly evenly spaced nodes
on ``b - a`` rounded to 12 significant digits, so every interval of a trajectory hits one cache entry (nodes and
length move by at most 1e-11 relative, in practice by the float noise they already carry, far below any rule's
error). Other layouts are cached on their exact offsets; to share weights between intervals, compute them once
on ``[0, T]`` and reuse them.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.integrate

from pipeline.errors import ConfigError, InputError
from rewards.kernels import NUMPY, Backend, Kernel, Matern, Wiener, mpmath_backend

DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "lengthscale": 0.3,  # Matérn lengthscale, time units of the nodes
        "degree": 3,  # Bayes-Sard: polynomial degree integrated exactly
        "precision": "exact",  # "exact" (mpmath solve) or "float64" (double-precision solve on K + jitter I)
        "jitter": 1e-8,  # added to the Gram diagonal with precision "float64" only (exact solves need none)
        "start_variance": 1.0,  # bq-wiener: variance of the Brownian motion's start value (units of f^2 / time)
    }
)
PRECISIONS = ("exact", "float64")
_UNIFORM_TOL = 1e-11  # nodes this close (relative to b - a) to evenly spaced count as evenly spaced
_MIN_DPS = 50


@dataclass(frozen=True)
class _Rule:
    """A rule: the parameters it reads and, for kernel rules, how to build its kernel."""

    params: tuple[str, ...] = ()
    kernel: Callable[[Mapping[str, Any]], Kernel] | None = None
    sard: bool = False


def _matern_rule(order: int, sard: bool) -> _Rule:
    names = ("lengthscale", "precision", "jitter") + (("degree",) if sard else ())
    return _Rule(names, lambda p: Matern(order, float(p["lengthscale"])), sard)


_MATERN = {"12": 0, "32": 1, "52": 2, "72": 3}
_RULES: dict[str, _Rule] = {
    "trapezoid": _Rule(),
    "simpson": _Rule(),
    "bq-wiener": _Rule(("start_variance", "precision", "jitter"), lambda p: Wiener(float(p["start_variance"]))),
    **{f"bq-matern{s}": _matern_rule(order, sard=False) for s, order in _MATERN.items()},
    **{f"bsq-matern{s}": _matern_rule(order, sard=True) for s, order in _MATERN.items()},
}
RULES: tuple[str, ...] = tuple(_RULES)


def _positive(key: str, value: Any, *, allow_zero: bool = False, prefix: str = "quadrature") -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ConfigError(f"{prefix}.{key} = {value!r}: expected {expected}")


def check_rule_params(rule: str, num_nodes: int, *, prefix: str = "quadrature", nodes_key: str = "quadrature.num_nodes",
                      **params: Any) -> None:
    """Validate a rule, its node count and parameters before any work starts.

    Args:
        rule: one of :data:`RULES`.
        num_nodes: nodes per interval N.
        **params: any of :data:`DEFAULTS` (those a rule does not read are validated and ignored).

    Raises:
        ConfigError: naming the key (``quadrature.rule``, ``quadrature.num_nodes``, ``quadrature.<param>``),
            the value and what is expected.
    """
    if rule not in _RULES:
        raise ConfigError(f"{prefix}.rule = {rule!r}: unknown rule; expected one of {', '.join(RULES)}")
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown parameter; expected some of {', '.join(DEFAULTS)}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral) or num_nodes < 2:
        raise ConfigError(f"{nodes_key} = {num_nodes!r}: expected an integer >= 2")
    if rule == "simpson" and num_nodes % 2 == 0:
        raise ConfigError(
            f"{nodes_key} = {num_nodes}: simpson needs an odd number of nodes; use {num_nodes - 1} or "
            f"{num_nodes + 1}"
        )
    p = {**DEFAULTS, **params}
    _positive("lengthscale", p["lengthscale"], prefix=prefix)
    _positive("start_variance", p["start_variance"], prefix=prefix)
    _positive("jitter", p["jitter"], allow_zero=True, prefix=prefix)
    if p["precision"] not in PRECISIONS:
        raise ConfigError(f"{prefix}.precision = {p['precision']!r}: expected one of {', '.join(PRECISIONS)}")
    degree = p["degree"]
    if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 0:
        raise ConfigError(f"{prefix}.degree = {degree!r}: expected an integer >= 0")
    if _RULES[rule].sard and degree > num_nodes - 1:
        raise ConfigError(
            f"{prefix}.degree = {degree}: rule {rule} with {num_nodes} nodes integrates polynomials of degree "
            f"<= {num_nodes - 1} at most; lower quadrature.degree or raise quadrature.num_nodes"
        )


def _offsets(nodes: np.ndarray, a: float, b: float, *, need_ends: bool = False) -> tuple[np.ndarray, float]:
    """Node offsets ``nodes - a`` clipped into [0, T] and ``T = b - a``; raises InputError.

    Nodes may leave [a, b] by float noise (1e-12 T plus a few ulps of a and b); with ``need_ends`` the first and
    last node must be a and b within that noise.
    """
    if not (math.isfinite(a) and math.isfinite(b) and b > a):
        raise InputError(f"quadrature interval [a, b] = [{a}, {b}]: expected finite a < b")
    if nodes.ndim != 1 or not np.all(np.isfinite(nodes)):
        raise InputError(f"quadrature nodes: expected a finite 1-D array, got shape {nodes.shape}")
    if np.any(np.diff(nodes) <= 0):
        raise InputError("quadrature nodes: expected strictly increasing nodes")
    T = float(b - a)
    u = nodes - a
    tol = 1e-12 * T + 8 * np.finfo(np.float64).eps * max(abs(a), abs(b))
    if u[0] < -tol or u[-1] > T + tol:
        raise InputError(f"quadrature nodes span [{nodes[0]}, {nodes[-1]}], outside the interval [{a}, {b}]")
    if need_ends and (u[0] > tol or u[-1] < T - tol):
        raise InputError(f"quadrature nodes span [{nodes[0]}, {nodes[-1]}]: this rule needs both ends of [{a}, {b}]")
    return np.clip(u, 0.0, T), T


def weights(rule: str, nodes: np.ndarray, a: float, b: float, **params: Any) -> np.ndarray:
    """Quadrature weights c (N,) so that ``sum_j c_j f(nodes_j) ~ int_a^b f(t) dt``.

    Args:
        rule: one of :data:`RULES`.
        nodes: (N,) strictly increasing nodes in [a, b] (time units).
        a, b: the interval.
        **params: rule parameters, see :data:`DEFAULTS` and the module docstring.

    Returns:
        (N,) float64 weights (time units); a fresh copy, cached internally.

    Raises:
        ConfigError: bad rule or parameters. InputError: bad nodes or interval.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    check_rule_params(rule, nodes.size, **params)
    u, T = _offsets(nodes, a, b, need_ends=_RULES[rule].kernel is None)
    return _cached_weights(*_cache_key(rule, u, T, params)).copy()


def integrate(rule: str, values: np.ndarray, nodes: np.ndarray, a: float, b: float, **params: Any) -> np.ndarray:
    """Integrals ``int_a^b f`` from samples ``values`` (..., N) of f at ``nodes`` (N,); returns shape (...)."""
    values = np.asarray(values, dtype=np.float64)
    nodes = np.asarray(nodes, dtype=np.float64)
    if values.ndim == 0 or values.shape[-1] != nodes.size:
        raise InputError(f"quadrature values: last axis must match the {nodes.size} nodes, got shape {values.shape}")
    return values @ weights(rule, nodes, a, b, **params)


def posterior_variance(rule: str, nodes: np.ndarray, a: float, b: float, **params: Any) -> float:
    """Posterior variance of the integral under the rule's prior (unit output scale: multiply by sigma^2).

    Computed in extended precision as ``iint k - 2 c'z + c'Kc``, the squared worst-case error of the weights c
    in the kernel's RKHS; for BQ weights it equals ``iint k - z'K^-1 z`` and for Bayes-Sard weights the
    Bayes-Sard posterior variance. With ``precision="float64"`` c are the jittered double-precision weights.

    Raises:
        ConfigError: for ``trapezoid`` and ``simpson`` (no prior), and as :func:`weights`.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    check_rule_params(rule, nodes.size, **params)
    if _RULES[rule].kernel is None:
        raise ConfigError(f"quadrature.rule = {rule!r}: posterior variance needs a kernel rule (bq-*, bsq-*)")
    u, T = _offsets(nodes, a, b)
    return _cached_variance(*_cache_key(rule, u, T, params))


def _cache_key(rule: str, u: np.ndarray, T: float, params: Mapping[str, Any]) -> tuple[str, int | tuple, float, tuple]:
    """Hashable (rule, layout, T, the rule's parameters with defaults).

    The layout is N for evenly spaced nodes with both ends (within ``_UNIFORM_TOL * T``: the float noise of
    ``t_k + linspace(0, T, N)``), then T is rounded to 12 significant digits so that all intervals share one entry;
    otherwise it is the exact tuple of offsets and T is kept exact.
    """
    p = {**DEFAULTS, **params}
    params_key = tuple((k, p[k]) for k in _RULES[rule].params)
    if np.max(np.abs(u - np.linspace(0.0, T, u.size))) <= _UNIFORM_TOL * T:
        return rule, u.size, float(f"{T:.12g}"), params_key
    return rule, tuple(u.tolist()), T, params_key


def _layout_offsets(layout: int | tuple[float, ...], T: float) -> np.ndarray:
    return np.linspace(0.0, T, layout) if isinstance(layout, int) else np.array(layout)


@functools.lru_cache(maxsize=512)
def _cached_weights(rule: str, layout: int | tuple[float, ...], T: float, params_key: tuple) -> np.ndarray:
    """Weights (N,) for the offsets ``layout`` in [0, T], read-only."""
    u, p, spec = _layout_offsets(layout, T), dict(params_key), _RULES[rule]
    if spec.kernel is None:
        integrator = scipy.integrate.trapezoid if rule == "trapezoid" else scipy.integrate.simpson
        c = integrator(np.eye(u.size), x=u, axis=-1)
    elif p["precision"] == "float64":
        c = _kernel_weights(spec, p, u, T, NUMPY, jitter=p["jitter"])
    else:
        c = np.array(_kernel_weights(spec, p, u, T, mpmath_backend(_working_dps(p, u, T))), dtype=np.float64)
    c.setflags(write=False)
    return c


@functools.lru_cache(maxsize=512)
def _cached_variance(rule: str, layout: int | tuple[float, ...], T: float, params_key: tuple) -> float:
    u, p, spec = _layout_offsets(layout, T), dict(params_key), _RULES[rule]
    xp = mpmath_backend(_working_dps(p, u, T) + 20)
    if p["precision"] == "float64":
        c = xp.array(_cached_weights(rule, layout, T, params_key))
    else:
        c = _kernel_weights(spec, p, u, T, xp)
    kernel, uu, TT = spec.kernel(p), xp.array(u), xp.scalar(T)
    return float(kernel.double_mean(TT, xp) - 2 * c @ kernel.mean(uu, TT, xp) + c @ kernel.gram(uu, uu, xp) @ c)


def _kernel_weights(
    spec: _Rule, p: Mapping[str, Any], u: np.ndarray, T: float, xp: Backend, *, jitter: float = 0.0
) -> np.ndarray:
    """BQ weights ``(K + jitter I)^-1 z`` or Bayes-Sard weights from the saddle-point system, in xp's numbers."""
    kernel, uu, TT = spec.kernel(p), xp.array(u), xp.scalar(T)
    K, z = kernel.gram(uu, uu, xp), kernel.mean(uu, TT, xp)
    if jitter:
        K = K + jitter * np.eye(u.size)
    if not spec.sard:
        return xp.solve(K, z)
    powers = np.arange(p["degree"] + 1)
    P = (uu / TT)[:, None] ** powers[None, :]  # scaled monomials ((t - a) / T)^k, (N, degree + 1)
    p_int = np.array([TT / (k + 1) for k in powers], dtype=K.dtype)  # int_a^b ((t - a) / T)^k dt
    A = np.block([[K, P], [P.T, np.zeros((powers.size, powers.size), dtype=K.dtype)]])
    return xp.solve(A, np.concatenate([z, p_int]))[: u.size]


def _working_dps(p: Mapping[str, Any], u: np.ndarray, T: float) -> int:
    """Decimal digits for the exact solve: 30 spare digits beyond an a-priori bound on the condition number.

    The smallest Gram eigenvalue of a Matérn-nu kernel falls like (h / l)^(2 nu) for node spacing h; the
    bound ``N (L / h)^(8 + degree)``, L = max(T, lengthscale, start_variance), covers nu <= 7/2, the Wiener
    kernel and the polynomial block of Bayes-Sard.
    """
    h = float(np.min(np.diff(u)))
    scale = max(T, float(p.get("lengthscale", 0.0)), float(p.get("start_variance", 0.0)))
    digits = 30 + math.log10(u.size) + (8 + int(p.get("degree", 0))) * max(0.0, math.log10(scale / h))
    return max(_MIN_DPS, math.ceil(digits))
