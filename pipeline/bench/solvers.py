"""``newtonrl bench solvers``: least-squares solvers for policy evaluation.

(a) Many small systems: Newton–Schulz (cold; warm after a small change of X, as from one policy-iteration step to
    the next) vs batched Cholesky on the normal equations, over a grid of batch sizes B and sizes p. Systems:
    X = randn(B, 2p, p) diag(logspace(0, -spread, p)), y = randn(B, 2p); the warm case re-solves with
    X (1 + perturbation N(0, 1)) elementwise, starting from the first solve's inverses. Only the solve of
    S w = X'y is timed (forming S = X'X is common to all methods).
(b) One large-dictionary critic: the integral-Bellman least squares of a stable 2-D linear system
    dx/dt = A x with utility x'x on intervals of length T: rows phi(x_k) - phi(e^{AT} x_k), targets
    V(x_k) - V(e^{AT} x_k) = the exact interval integral (V = x'Px, A'P + PA + I = 0), states x_k ~ U[-1, 1]^2,
    phi = Gaussian RBFs on a per_dim x per_dim grid over [-1, 1]^2 (width = grid spacing), plus a ridge.
    Also ("regression") the plain fit of V(x_k) on phi(x_k), as for a critic trained on returns. Greedy (GSL) /
    random / cyclic BCD vs CG vs Cholesky to a relative gradient norm ``--tol`` (optionally with an L1 penalty).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import torch

from pipeline.bench import BenchResult
from pipeline.errors import ConfigError
from rewards.solvers import (
    NewtonSchulzSolver,
    QuadraticProblem,
    block_coordinate_descent,
    cholesky_solve_batched,
    conjugate_gradient,
    direct_solve,
    grid_centres,
    rbf_features,
)

_A = ((0.0, 1.0), (-1.0, -0.5))  # closed-loop matrix of part (b): a damped oscillator (eigenvalues -0.25 +- 0.97i)
_BYTES_PER_SYSTEM_ENTRY = 8 * 8  # ~8 float64 (B, p, p) tensors alive during a Newton–Schulz solve


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    return values


def _problems(text: str) -> list[str]:
    kinds = [k for k in text.split(",") if k]
    if not kinds or set(kinds) - {"bellman", "regression"}:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of bellman,regression, got {text!r}")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=("ns", "bcd", "all"), default="all", help="which benchmark to run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the torch solvers run (cuda: skipped without a GPU; CG always on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.add_argument_group("part (a): Newton-Schulz vs Cholesky")
    ns.add_argument("--batches", type=_ints, default=[1, 10, 100, 1000, 10000], help="batch sizes B, e.g. 1,10,100")
    ns.add_argument("--dims", type=_ints, default=[3, 10, 30, 100], help="system sizes p, e.g. 3,10")
    ns.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ns.add_argument("--spread", type=float, default=1.0, help="decades between largest and smallest column scale")
    ns.add_argument("--perturbation", type=float, default=1e-3, help="relative change of X before the warm solve")
    ns.add_argument("--max-work", type=float, default=2e9, help="skip (B, p) with B p^3 above this")
    ns.add_argument("--max-memory-gb", type=float, default=3.0, help="skip (B, p) needing more memory than this")
    bcd = parser.add_argument_group("part (b): block coordinate descent vs CG vs direct")
    bcd.add_argument("--problems", type=_problems, default=["bellman", "regression"],
                     help="comma-separated subset of bellman,regression")
    bcd.add_argument("--grid", type=_ints, default=[32, 63], help="RBF grid sizes per dim (p = n^2): 32,63")
    bcd.add_argument("--rows-factor", type=float, default=2.0, help="sampled intervals M = factor * p")
    bcd.add_argument("--interval", type=float, default=0.1, help="interval length T (s)")
    bcd.add_argument("--ridge", type=float, default=1e-4, help="ridge, relative to the mean diagonal of X'X")
    bcd.add_argument("--tol", type=float, default=1e-6, help="stop at ||gradient|| <= tol ||X'y||")
    bcd.add_argument("--block-size", type=int, default=64, help="BCD block size (contiguous grid centres)")
    bcd.add_argument("--cond", action="store_true", help="also report cond(G) (an eigendecomposition, slow)")
    bcd.add_argument("--l1", type=float, default=0.0, help="L1 weight as a fraction of max|X'y| (0: none)")
    bcd.add_argument("--max-epochs", type=float, default=300.0, help="BCD budget in passes over all features")


def _timed(fn: Callable[[], Any], *, repeats: int, device: torch.device, min_s: float = 0.02) -> tuple[float, Any]:
    """Median wall time (s) per call of ``fn`` over ``repeats`` rounds (each >= ~min_s, after a warm-up call)."""

    def round_time(n: int) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / n, out

    single, out = round_time(1)
    if single >= 1.0:  # long calls: the first one counts, and 3 rounds are enough
        times = [single] + [round_time(1)[0] for _ in range(min(repeats, 3) - 1)]
        return statistics.median(times), out
    n = max(1, int(min_s / max(single, 1e-9)))
    times = []
    for _ in range(repeats):
        t, out = round_time(n)
        times.append(t)
    return statistics.median(times), out


def _systems(B: int, p: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """Normal equations (S, b) of the base systems and of the perturbed ones: 4 tensors, (B, p, p) and (B, p)."""
    g = torch.Generator().manual_seed(args.seed)
    X = torch.randn(B, 2 * p, p, generator=g, dtype=torch.float64) * torch.logspace(0, -args.spread, p,
                                                                                     dtype=torch.float64)
    y = torch.randn(B, 2 * p, generator=g, dtype=torch.float64)
    X2 = X * (1 + args.perturbation * torch.randn(X.shape, generator=g, dtype=torch.float64))
    out = [(Z.mT @ Z, (Z.mT @ y.unsqueeze(-1)).squeeze(-1)) for Z in (X, X2)]
    return [t.to(device=device, dtype=dtype) for pair in out for t in pair]


def _rel_err(w: torch.Tensor, ref: torch.Tensor) -> float:
    return float((torch.linalg.vector_norm(w.double() - ref, dim=-1) / torch.linalg.vector_norm(ref, dim=-1)).max())


def _ns_row(B: int, p: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    S, b, S2, b2 = _systems(B, p, args, device, dtype)
    ref = torch.linalg.solve(S2.double(), b2.double())
    solver = NewtonSchulzSolver()
    t_chol, (w_chol, _) = _timed(lambda: cholesky_solve_batched(S2, b2), repeats=args.repeats, device=device)
    t_cold, (w_cold, st_cold) = _timed(lambda: solver.solve_normal(S2, b2), repeats=args.repeats, device=device)
    _, st0 = solver.solve_normal(S, b)
    t_warm, (w_warm, st_warm) = _timed(lambda: solver.solve_normal(S2, b2, warm=st0), repeats=args.repeats,
                                       device=device)
    return {
        "B": B, "p": p, "chol_ms": 1e3 * t_chol, "ns_cold_ms": 1e3 * t_cold, "ns_warm_ms": 1e3 * t_warm,
        "warm/chol": t_warm / t_chol, "cold_iters": float(st_cold.iterations.double().mean()),
        "warm_iters_mean": float(st_warm.iterations.double().mean()),
        "warm_iters_max": int(st_warm.iterations.max()), "fallback_cold": st_cold.n_fallback,
        "fallback_warm": st_warm.n_fallback, "err_chol": _rel_err(w_chol, ref), "err_cold": _rel_err(w_cold, ref),
        "err_warm": _rel_err(w_warm, ref),
    }


def _crossovers(rows: list[dict[str, Any]], key: str) -> dict[int, int | None]:
    """Per p: the smallest B from which ``key`` (an NS time) beats Cholesky for every larger measured B."""
    out: dict[int, int | None] = {}
    for p in sorted({r["p"] for r in rows}):
        by_b = sorted((r["B"], r[key] < r["chol_ms"]) for r in rows if r["p"] == p)
        first = None
        for B, wins in reversed(by_b):
            if not wins:
                break
            first = B
        out[p] = first
    return out


def run_newton_schulz(args: argparse.Namespace, device: torch.device, result: BenchResult) -> None:
    rows, skipped = [], []
    for p in args.dims:
        for B in args.batches:
            mem_gb = B * p * p * _BYTES_PER_SYSTEM_ENTRY / 2**30
            if B * p**3 > args.max_work or mem_gb > args.max_memory_gb:
                skipped.append(f"(B={B}, p={p}): B p^3 = {B * p**3:.1e}, ~{mem_gb:.1f} GiB")
                continue
            rows.append(_ns_row(B, p, args, device))
    result.tables["newton_schulz_vs_cholesky"] = rows
    if skipped:
        result.notes.append(f"skipped (over --max-work {args.max_work:.0e} or --max-memory-gb "
                            f"{args.max_memory_gb}): " + "; ".join(skipped))
    for key, label in (("ns_warm_ms", "warm"), ("ns_cold_ms", "cold")):
        cross = _crossovers(rows, key)
        result.extra[f"crossover_{label}"] = cross
        text = ", ".join(f"p={p}: " + (f"B>={B}" if B is not None else "never") for p, B in cross.items())
        result.notes.append(f"{label} Newton-Schulz beats batched Cholesky from: {text}")


def critic_problem(kind: str, per_dim: int, args: argparse.Namespace, device: torch.device) -> QuadraticProblem:
    """Least squares of part (b) (module docstring) with p = per_dim^2 RBF features and the ridge of ``args``.

    kind "bellman": rows phi(x_k) - phi(e^{AT} x_k), targets V(x_k) - V(e^{AT} x_k) (integral Bellman equation);
    kind "regression": rows phi(x_k), targets V(x_k) (a critic fitted to exact values / Monte-Carlo returns).
    """
    if per_dim < 2:
        raise ConfigError(f"--grid value {per_dim} must be >= 2 (RBF centres per dimension)")
    A = torch.tensor(_A, dtype=torch.float64)
    P = torch.from_numpy(scipy.linalg.solve_continuous_lyapunov(A.T.numpy(), -np.eye(2)))
    p = per_dim * per_dim
    g = torch.Generator().manual_seed(args.seed)
    x0 = 2 * torch.rand(int(math.ceil(args.rows_factor * p)), 2, generator=g, dtype=torch.float64) - 1
    centres = grid_centres(-1.0, 1.0, per_dim=per_dim, dim=2)
    width = 2.0 / (per_dim - 1)
    X, y = rbf_features(x0, centres, width), ((x0 @ P) * x0).sum(-1)
    if kind == "bellman":
        xT = x0 @ torch.linalg.matrix_exp(A * args.interval).T
        X, y = X - rbf_features(xT, centres, width), y - ((xT @ P) * xT).sum(-1)
    X, y = X.to(device), y.to(device)
    G = X.T @ X
    ridge = args.ridge * float(G.diagonal().mean())
    l1 = args.l1 * float((X.T @ y).abs().max())
    return QuadraticProblem(G=G + ridge * torch.eye(p, dtype=G.dtype, device=device), b=X.T @ y,
                            const=0.5 * float(y @ y), l1=l1)


def _bcd_rows(problem: QuadraticProblem, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time each method on ``problem``; with an L1 weight only the BCD rules apply (reference: a long GSL run)."""
    p = problem.b.numel()
    budget = int(args.max_epochs * math.ceil(p / args.block_size))
    runs: dict[str, Callable[[], Any]] = {}
    if not problem.l1:
        runs["direct (Cholesky)"] = lambda: direct_solve(problem)
        runs["CG (scipy)"] = lambda: conjugate_gradient(problem, tol=args.tol, max_iter=int(args.max_epochs))
    for sel in ("gsl", "random", "cyclic"):
        runs[f"BCD {sel}"] = (lambda s=sel: block_coordinate_descent(
            problem, block_size=args.block_size, selection=s, tol=args.tol, max_iter=budget, seed=args.seed))
    f_star = (direct_solve(problem) if not problem.l1 else block_coordinate_descent(
        problem, block_size=args.block_size, tol=1e-3 * args.tol, max_iter=10 * budget)).objective
    f_zero = problem.objective(torch.zeros_like(problem.b))
    rows = []
    for name, fn in runs.items():
        t, res = _timed(fn, repeats=max(1, args.repeats // 2), device=device)
        epochs = res.iterations * args.block_size / p if name.startswith("BCD") else res.iterations
        rows.append({"p": p, "method": name, "time_s": t, "iterations": res.iterations, "epochs": epochs,
                     "objective": res.objective, "gap": (res.objective - f_star) / (f_zero - f_star),
                     "rel_grad": res.stationarity, "converged": res.converged, "nonzeros": int((res.w != 0).sum())})
    return rows


def run_bcd(args: argparse.Namespace, device: torch.device, result: BenchResult) -> None:
    for kind in args.problems:
        rows = []
        for per_dim in args.grid:
            t0 = time.perf_counter()
            problem = critic_problem(kind, per_dim, args, device)
            note = f"{kind} p={per_dim**2}: building X and X'X took {time.perf_counter() - t0:.1f} s"
            if args.cond:
                eig = torch.linalg.eigvalsh(problem.G)
                note += f"; cond(G) = {float(eig[-1] / eig[0]):.2e}"
            result.notes.append(note)
            rows += _bcd_rows(problem, args, device)
        result.tables[f"{kind}_least_squares" + ("_l1" if args.l1 else "")] = rows
    result.notes.append(f"(b): epochs = block updates x block size / p for BCD (each costs O(p |block|)); CG "
                        f"iterations cost one O(p^2) product each; stop at ||d|| <= {args.tol:g} ||X'y|| or after "
                        f"{args.max_epochs:g} epochs; gap = (f - f*) / (f(0) - f*) with f* from Cholesky "
                        f"(with L1: a GSL run to tol/1000)")


def run(args: argparse.Namespace) -> BenchResult:
    result = BenchResult(title="least-squares solvers for policy evaluation")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        result.notes.append("--device cuda requested but no GPU is available: skipped")
        return result
    torch.set_num_threads(args.threads)
    result.extra["settings"] = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list))}
    if args.part in ("ns", "all"):
        run_newton_schulz(args, device, result)
    if args.part in ("bcd", "all"):
        run_bcd(args, device, result)
    return result
