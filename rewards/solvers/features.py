"""Large feature dictionaries for value-function critics: Gaussian RBFs and monomials.

The integral Bellman system uses differences ``phi(x(t_k)) - phi(x(t_k + T))`` of these features.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from pipeline.errors import ConfigError


def grid_centres(low: float, high: float, *, per_dim: int, dim: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Centres on a regular grid over [low, high]^dim, row-major (last coordinate fastest): (per_dim**dim, dim)."""
    if per_dim < 1 or dim < 1:
        raise ConfigError(f"grid per_dim={per_dim}, dim={dim} must both be >= 1")
    axis = torch.linspace(low, high, per_dim, dtype=dtype)
    return torch.cartesian_prod(*([axis] * dim)).reshape(-1, dim)


def rbf_features(x: Tensor, centres: Tensor, width: float) -> Tensor:
    """Gaussian RBFs ``exp(-||x - c_j||^2 / (2 width^2))`` for x (N, d), centres (p, d) -> (N, p)."""
    if width <= 0:
        raise ConfigError(f"rbf width={width} must be > 0")
    return torch.exp(-torch.cdist(x, centres).square() / (2.0 * width**2))


def monomial_exponents(dim: int, degree: int) -> Tensor:
    """Exponents of all monomials of total degree 1..degree in ``dim`` variables: (n, dim) long, graded order."""
    if degree < 1 or dim < 1:
        raise ConfigError(f"polynomial degree={degree}, dim={dim} must both be >= 1")
    rows = []
    for deg in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(dim), deg):
            rows.append([combo.count(i) for i in range(dim)])
    return torch.tensor(rows, dtype=torch.long)


def polynomial_features(x: Tensor, degree: int) -> Tensor:
    """All monomials of x (N, d) of total degree 1..degree (no constant: it cancels in differences) -> (N, n)."""
    exps = monomial_exponents(x.shape[1], degree).to(x.device)
    out = torch.ones(x.shape[0], exps.shape[0], dtype=x.dtype, device=x.device)
    for i in range(x.shape[1]):
        out = out * x[:, i : i + 1] ** exps[:, i]
    return out
