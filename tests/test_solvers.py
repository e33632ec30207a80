"""Tests for rewards.solvers: batched Newton–Schulz, block coordinate descent, CG, direct, feature dictionaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from rewards.solvers import (
    SELECTIONS,
    Method,
    NewtonSchulzSolver,
    QuadraticProblem,
    block_coordinate_descent,
    cold_start,
    conjugate_gradient,
    direct_solve,
    grid_centres,
    monomial_exponents,
    newton_schulz,
    polynomial_features,
    rbf_features,
)

F64 = torch.float64


def _spd_batch(B: int, p: int, cond: float, seed: int) -> torch.Tensor:
    """SPD matrices Q diag(eigs) Q' with eigenvalues log-spaced in [1/cond, 1]."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(B, p, p, generator=g, dtype=F64))
    eigs = torch.logspace(0, -math.log10(cond), p, dtype=F64)
    return Q @ torch.diag(eigs) @ Q.mT


def _lstsq_batch(seed: int, B: int = 30, M: int = 25, p: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, M, p, generator=g, dtype=F64), torch.randn(B, M, generator=g, dtype=F64)


@pytest.mark.parametrize("scaling", ["spectral", "frobenius"])
def test_newton_schulz_converges_to_the_inverse(scaling: str) -> None:
    S = _spd_batch(40, 8, cond=1e3, seed=0)
    M, res, its, failed = newton_schulz(S, cold_start(S, scaling), tol=1e-10, max_iter=60)
    assert not failed.any()
    assert (res <= 1e-10).all()
    ref = torch.linalg.inv(S)
    assert torch.linalg.matrix_norm(M - ref).max() / torch.linalg.matrix_norm(ref).max() < 1e-9
    assert its.max() <= 2 * math.log2(1e3) + 8  # quadratic phase after ~log2(cond^2) doubling steps


def test_solve_matches_lstsq_and_warm_start_needs_at_most_three_steps() -> None:
    X, y = _lstsq_batch(seed=1)
    solver = NewtonSchulzSolver()
    w, state = solver.solve(X, y)
    ref = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    assert state.n_fallback == 0 and state.iterations.min() >= 6  # a cold start takes many steps
    assert torch.allclose(w, ref, atol=1e-8)
    g = torch.Generator().manual_seed(2)
    X2 = X * (1 + 1e-3 * torch.randn(X.shape, generator=g, dtype=F64))  # a small policy-iteration-like change
    w2, state2 = solver.solve(X2, y, warm=state)
    ref2 = torch.linalg.lstsq(X2, y.unsqueeze(-1)).solution.squeeze(-1)
    assert state2.n_fallback == 0
    assert state2.iterations.max() <= 3
    assert torch.allclose(w2, ref2, atol=1e-8)


def test_warm_start_far_from_the_answer_restarts_cold_without_fallback() -> None:
    X, y = _lstsq_batch(seed=3)
    _, state = NewtonSchulzSolver().solve(100.0 * X, y)  # inverse 1e4 times too small: ||I - S M0||_F >= 1
    w, state2 = NewtonSchulzSolver().solve(X, y, warm=state)
    assert state2.n_fallback == 0
    assert torch.allclose(w, torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1), atol=1e-8)


def test_half_spectral_scaling_does_not_converge_while_the_good_ones_do() -> None:
    S = _spd_batch(20, 6, cond=10.0, seed=4)
    res = {}
    for scaling in ("spectral", "frobenius", "half_spectral"):
        _, r, _, failed = newton_schulz(S, cold_start(S, scaling), tol=1e-12, max_iter=30)
        res[scaling] = (r, failed)
    assert not res["spectral"][1].any() and not res["frobenius"][1].any()
    bad_r, bad_failed = res["half_spectral"]
    assert bad_failed.all()
    assert ((bad_r >= 0.9) | ~torch.isfinite(bad_r)).all()  # stuck at ||R|| ~ 1 (or blown up)


def test_half_spectral_scaling_is_rescued_by_the_cholesky_fallback() -> None:
    X, y = _lstsq_batch(seed=5, B=10)
    w, state = NewtonSchulzSolver(scaling="half_spectral", max_iter=30).solve(X, y)
    assert state.n_fallback == 10 and (state.method == Method.CHOLESKY).all()
    assert torch.allclose(w, torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1), atol=1e-10)


def test_fallback_flags_ill_conditioned_and_singular_systems() -> None:
    S = _spd_batch(4, 3, cond=10.0, seed=6)
    S[1] = _spd_batch(1, 3, cond=1e13, seed=7)[0]  # NS needs ~90 cold steps: more than max_iter
    S[2] = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)  # exactly singular
    b = torch.tensor([[1.0, 2.0, 3.0]] * 4, dtype=F64)
    w, state = NewtonSchulzSolver(max_iter=60).solve_normal(S, b)
    assert state.method.tolist() == [Method.NEWTON_SCHULZ, Method.CHOLESKY, Method.PSEUDOINVERSE, Method.NEWTON_SCHULZ]
    assert state.n_fallback == 2
    S_np, b_np = S.numpy(), b.numpy()
    assert np.allclose(w[1].numpy(), np.linalg.solve(S_np[1], b_np[1]), rtol=1e-4)
    assert np.allclose(w[2].numpy(), np.linalg.pinv(S_np[2]) @ b_np[2], atol=1e-12)  # min-norm: [0.75, 0.75, 1.5]
    for i in (0, 3):
        assert np.allclose(w[i].numpy(), np.linalg.solve(S_np[i], b_np[i]), atol=1e-8)


def test_solver_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="scaling"):
        NewtonSchulzSolver(scaling="two_over_norm")
    with pytest.raises(ConfigError, match="selection"):
        block_coordinate_descent(QuadraticProblem(G=torch.eye(2, dtype=F64), b=torch.ones(2, dtype=F64)),
                                 selection="greedy")


def _problem(seed: int, *, M: int = 300, p: int = 60, block: int = 5, spread: float = 2.0, coupling: float = 0.5,
             ridge: float = 1e-6, l1: float = 0.0) -> QuadraticProblem:
    """Random least squares whose blocks have column scales 10^U(-spread, spread) and a shared column direction."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(M, p, generator=g, dtype=F64) + coupling * torch.randn(M, 1, generator=g, dtype=F64)
    scales = 10 ** (spread * (2 * torch.rand(p // block, generator=g, dtype=F64) - 1))
    X = X * scales.repeat_interleave(block)
    y = torch.randn(M, generator=g, dtype=F64)
    return QuadraticProblem.from_least_squares(X, y, ridge=ridge, l1=l1)


def test_bcd_variants_and_cg_reach_the_direct_solution() -> None:
    problem = _problem(seed=0, spread=1.0)
    ref = direct_solve(problem)
    assert ref.stationarity < 1e-10
    for selection in SELECTIONS:
        res = block_coordinate_descent(problem, block_size=5, selection=selection, tol=1e-10, seed=1)
        assert res.converged, selection
        assert torch.allclose(res.w, ref.w, rtol=1e-6, atol=1e-8), selection
        assert res.objective - ref.objective < 1e-9 * abs(ref.objective)
    cg = conjugate_gradient(problem, tol=1e-10)
    assert cg.converged and torch.allclose(cg.w, ref.w, rtol=1e-6, atol=1e-8)


def test_gsl_needs_fewer_block_updates_with_uneven_lipschitz_constants() -> None:
    problem = _problem(seed=0, M=400, p=100, spread=2.0)
    lips = torch.linalg.eigvalsh(torch.stack([problem.G[i:i + 5, i:i + 5] for i in range(0, 100, 5)]))[:, -1]
    assert lips.max() / lips.min() > 1e3  # the blocks really are uneven
    its = {s: block_coordinate_descent(problem, block_size=5, selection=s, tol=1e-6, seed=0).iterations
           for s in SELECTIONS}
    assert its["gsl"] <= 0.5 * min(its["random"], its["cyclic"]), its


def _fista(problem: QuadraticProblem, n_iter: int) -> torch.Tensor:
    """Independent reference: accelerated proximal gradient on the whole vector, step 1/lambda_max(G)."""
    step = 1.0 / torch.linalg.eigvalsh(problem.G)[-1]
    w = z = torch.zeros_like(problem.b)
    t = 1.0
    for _ in range(n_iter):
        v = z - step * (problem.G @ z - problem.b)
        w_new = torch.sign(v) * torch.clamp(v.abs() - step * problem.l1, min=0.0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = w_new + (t - 1) / t_new * (w_new - w)
        w, t = w_new, t_new
    return w


def test_l1_bcd_matches_a_proximal_gradient_lasso() -> None:
    problem = _problem(seed=2, M=200, p=40, spread=0.5, coupling=0.2, l1=20.0)
    ref = _fista(problem, 20_000)
    for selection in SELECTIONS:
        res = block_coordinate_descent(problem, block_size=5, selection=selection, tol=1e-10, seed=0)
        assert res.converged, selection
        assert torch.allclose(res.w, ref, atol=1e-7), selection
        assert torch.equal(res.w == 0, ref == 0)  # same support
    assert 5 < int((ref == 0).sum()) < 40  # the penalty selects a real subset of the basis


def test_feature_dictionaries_match_closed_forms() -> None:
    c = grid_centres(-1.0, 1.0, per_dim=3, dim=2)
    assert c.shape == (9, 2) and torch.equal(c[5], torch.tensor([0.0, 1.0], dtype=F64))
    x = torch.tensor([[0.5, 0.5]], dtype=F64)
    phi = rbf_features(x, c, width=0.7)
    assert math.isclose(float(phi[0, 4]), math.exp(-0.5 / (2 * 0.49)), rel_tol=1e-12)
    assert monomial_exponents(3, 4).shape[0] == math.comb(3 + 4, 4) - 1
    x3 = torch.tensor([[2.0, -1.0, 3.0]], dtype=F64)
    feats = polynomial_features(x3, 3)
    exps = monomial_exponents(3, 3).tolist()
    assert float(feats[0, exps.index([1, 0, 2])]) == 2.0 * 9.0
    assert float(feats[0, exps.index([0, 3, 0])]) == -1.0


def test_bench_crossover_is_the_start_of_the_winning_tail() -> None:
    from pipeline.bench.solvers import _crossovers

    times = ((1, 0.5), (10, 2.0), (100, 0.9), (1000, 0.1))
    rows = [{"p": 3, "B": B, "chol_ms": 1.0, "ns_warm_ms": t} for B, t in times]
    rows += [{"p": 10, "B": B, "chol_ms": 1.0, "ns_warm_ms": 2.0} for B in (1, 10)]
    assert _crossovers(rows, "ns_warm_ms") == {3: 100, 10: None}


def test_bench_runs_on_a_tiny_grid() -> None:
    import argparse

    from pipeline.bench import render
    from pipeline.bench import solvers as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--batches", "1,4", "--dims", "3", "--grid", "5", "--repeats", "1", "--max-epochs", "20",
                              "--problems", "regression", "--threads", str(torch.get_num_threads())])
    result = bench.run(args)
    ns_rows, ls_rows = result.tables["newton_schulz_vs_cholesky"], result.tables["regression_least_squares"]
    assert [(r["B"], r["p"]) for r in ns_rows] == [(1, 3), (4, 3)]
    assert all(r["fallback_warm"] == 0 and r["err_warm"] < 1e-8 for r in ns_rows)
    assert [r["method"] for r in ls_rows] == ["direct (Cholesky)", "CG (scipy)", "BCD gsl", "BCD random", "BCD cyclic"]
    assert ls_rows[0]["gap"] == 0.0 and all(r["gap"] >= -1e-12 for r in ls_rows)
    assert "warm Newton-Schulz beats batched Cholesky from: p=3:" in render(result)
