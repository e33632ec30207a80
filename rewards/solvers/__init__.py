"""Least-squares solvers for policy evaluation: batched Newton–Schulz for many small systems, block coordinate
descent / CG / direct for large feature dictionaries, and the dictionaries themselves."""

from rewards.solvers.bcd import (
    SELECTIONS,
    QuadraticProblem,
    SolveResult,
    block_coordinate_descent,
    conjugate_gradient,
    direct_solve,
)
from rewards.solvers.features import grid_centres, monomial_exponents, polynomial_features, rbf_features
from rewards.solvers.newton_schulz import (
    SCALINGS,
    Method,
    NewtonSchulzSolver,
    NSState,
    cholesky_solve_batched,
    cold_start,
    newton_schulz,
)

__all__ = [
    "SCALINGS",
    "SELECTIONS",
    "Method",
    "NSState",
    "NewtonSchulzSolver",
    "QuadraticProblem",
    "SolveResult",
    "block_coordinate_descent",
    "cholesky_solve_batched",
    "cold_start",
    "conjugate_gradient",
    "direct_solve",
    "grid_centres",
    "monomial_exponents",
    "newton_schulz",
    "polynomial_features",
    "rbf_features",
]
