"""Block coordinate descent (Nutini, Laradji, Schmidt, JMLR 2022), conjugate gradients and a direct solve for
large-dictionary least squares in Gram form.

Problem (:class:`QuadraticProblem`): ``f(w) = 1/2 w'Gw - b'w + c + l1 ||w||_1`` with ``G = X'X + ridge I``,
``b = X'y``, ``c = 1/2 ||y||^2``, i.e. ``1/2 ||Xw - y||^2 + ridge/2 ||w||^2 + l1 ||w||_1``.

BCD keeps the gradient ``g = Gw - b`` up to date (O(p |block|) per update) and, per step, picks one block of
contiguous features by a rule from :data:`SELECTIONS`:

- ``"gsl"``: Gauss-Southwell-Lipschitz, ``argmax_b ||d_b|| / sqrt(L_b)``, ``L_b = lambda_max(G_bb)``,
- ``"random"``: uniform at random (seeded), ``"cyclic"``: in order.

``d`` is the gradient mapping ``d_b = L_b (w_b - soft(w_b - g_b / L_b, l1 / L_b))``; with ``l1 = 0`` it is the
gradient. Block update: without L1 the exact Newton step ``w_b -= G_bb^-1 g_b`` (Cholesky factors of all diagonal
blocks are computed once); with L1 the standard soft-threshold (block proximal-gradient) step
``w_b = soft(w_b - g_b / L_b, l1 / L_b)``, which is a proximal Newton step with ``G_bb`` replaced by ``L_b I``.
Stopping rule (all methods): ``||d||_2 <= tol ||b||_2`` (relative gradient / gradient-mapping norm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor

from pipeline.errors import ConfigError, InputError


@dataclass(frozen=True)
class QuadraticProblem:
    """Least squares in Gram form: G (p, p) SPD, b (p,), const = 1/2 ||y||^2, l1 >= 0 (L1 weight)."""

    G: Tensor
    b: Tensor
    const: float = 0.0
    l1: float = 0.0

    @classmethod
    def from_least_squares(cls, X: Tensor, y: Tensor, *, ridge: float = 0.0, l1: float = 0.0) -> QuadraticProblem:
        """Build from X (M, p), y (M,): f = 1/2 ||Xw - y||^2 + ridge/2 ||w||^2 + l1 ||w||_1."""
        if X.ndim != 2 or y.shape != X.shape[:1]:
            raise InputError(f"expected X (M, p) and y (M,); got {tuple(X.shape)} and {tuple(y.shape)}")
        G = X.T @ X
        if ridge:
            G = G + ridge * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        return cls(G=G, b=X.T @ y, const=0.5 * float(y @ y), l1=l1)

    def objective(self, w: Tensor) -> float:
        """f(w) for w (p,)."""
        return float(0.5 * w @ (self.G @ w) - self.b @ w + self.const + self.l1 * w.abs().sum())


@dataclass(frozen=True)
class SolveResult:
    """w (p,); iterations (block updates for BCD, CG steps, 1 for direct); final objective; converged flag;
    stationarity = ||d|| / ||b|| at the end (see module docstring)."""

    w: Tensor
    iterations: int
    objective: float
    converged: bool
    stationarity: float


def _soft(x: Tensor, t: Tensor | float) -> Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def gradient_mapping(problem: QuadraticProblem, w: Tensor, g: Tensor, step: Tensor) -> Tensor:
    """d = (w - soft(w - step g, step l1)) / step for per-coordinate steps (p,); equals g when l1 = 0."""
    if not problem.l1:
        return g
    return (w - _soft(w - step * g, step * problem.l1)) / step


def _gsl(scores: Tensor, k: int, rng: np.random.Generator) -> int:
    return int(torch.argmax(scores))


def _random(scores: Tensor, k: int, rng: np.random.Generator) -> int:
    return int(rng.integers(scores.numel()))


def _cyclic(scores: Tensor, k: int, rng: np.random.Generator) -> int:
    return k % scores.numel()


SELECTIONS: dict[str, Callable[[Tensor, int, np.random.Generator], int]] = {
    "gsl": _gsl,
    "random": _random,
    "cyclic": _cyclic,
}


@dataclass(frozen=True)
class _Blocks:
    """Contiguous blocks: ids (p,) block of each coordinate, starts (nb+1,), chol (list of factors), lips (nb,)."""

    ids: Tensor
    starts: list[int]
    chol: list[Tensor]
    lips: Tensor

    @classmethod
    def build(cls, G: Tensor, block_size: int) -> _Blocks:
        p = G.shape[0]
        starts = list(range(0, p, block_size)) + [p]
        ids = torch.arange(p, device=G.device) // block_size
        diag = [G[s:e, s:e] for s, e in zip(starts[:-1], starts[1:], strict=True)]
        chol, lips = [], []
        for H in diag:
            L, info = torch.linalg.cholesky_ex(H)
            if int(info):
                raise InputError("a diagonal block of the Gram matrix is not positive definite; add a ridge")
            chol.append(L)
            lips.append(torch.linalg.eigvalsh(H)[-1])
        return cls(ids=ids, starts=starts, chol=chol, lips=torch.stack(lips))


def _stationarity(problem: QuadraticProblem, w: Tensor, step: Tensor, scale: float) -> tuple[Tensor, float]:
    g = problem.G @ w - problem.b
    return g, float(torch.linalg.vector_norm(gradient_mapping(problem, w, g, step))) / scale


def block_coordinate_descent(
    problem: QuadraticProblem, *, block_size: int = 32, selection: str = "gsl", tol: float = 1e-6,
    max_iter: int = 100_000, seed: int = 0, w0: Tensor | None = None,
) -> SolveResult:
    """Minimise ``problem`` by BCD over contiguous blocks of ``block_size`` features (see module docstring).

    selection: "gsl" | "random" | "cyclic". tol: on ||d|| / ||b||. max_iter: block updates. seed: for "random".
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"bcd selection={selection!r} is unknown; expected one of {sorted(SELECTIONS)}")
    if block_size < 1:
        raise ConfigError(f"bcd block_size={block_size} must be >= 1")
    G, b = problem.G, problem.b
    blocks = _Blocks.build(G, block_size)
    step = blocks.lips.reciprocal()[blocks.ids]
    scale = max(float(torch.linalg.vector_norm(b)), torch.finfo(b.dtype).tiny)
    w = torch.zeros_like(b) if w0 is None else w0.clone()
    g = G @ w - b
    rng, pick, updates = np.random.default_rng(seed), SELECTIONS[selection], 0
    nb = len(blocks.chol)
    for k in range(max_iter + 1):
        d = gradient_mapping(problem, w, g, step)
        block_sq = torch.zeros(nb, dtype=b.dtype, device=b.device).index_add_(0, blocks.ids, d * d)
        if float(block_sq.sum().sqrt()) <= tol * scale:  # confirm with an exactly recomputed gradient
            g, stat = _stationarity(problem, w, step, scale)
            if stat <= tol or k == max_iter:
                break
            continue
        if k == max_iter:
            break
        j = pick(block_sq / blocks.lips, k, rng)
        s, e = blocks.starts[j], blocks.starts[j + 1]
        if problem.l1:
            delta = _soft(w[s:e] - g[s:e] / blocks.lips[j], problem.l1 / blocks.lips[j]) - w[s:e]
        else:
            delta = -torch.cholesky_solve(g[s:e, None], blocks.chol[j]).squeeze(-1)
        w[s:e] += delta
        g += delta @ G[s:e]  # G is symmetric: rows are contiguous
        updates += 1
    _, stat = _stationarity(problem, w, step, scale)
    return SolveResult(w=w, iterations=updates, objective=problem.objective(w), converged=stat <= tol,
                       stationarity=stat)


def _require_smooth(problem: QuadraticProblem, name: str) -> None:
    if problem.l1:
        raise InputError(f"{name} solves only the smooth problem (l1 = 0); got l1={problem.l1}; use BCD")


def conjugate_gradient(problem: QuadraticProblem, *, tol: float = 1e-6, max_iter: int = 100_000) -> SolveResult:
    """scipy CG on G w = b, stopping at ||Gw - b|| <= tol ||b||; the products G v run in torch (float64, CPU)."""
    _require_smooth(problem, "conjugate_gradient")
    G, p = problem.G.detach().cpu().double(), problem.b.numel()
    op = scipy.sparse.linalg.LinearOperator((p, p), matvec=lambda v: (G @ torch.from_numpy(v).reshape(-1)).numpy(),
                                            dtype=np.float64)
    count = [0]

    def callback(_xk: np.ndarray) -> None:
        count[0] += 1

    x, _info = scipy.sparse.linalg.cg(op, problem.b.detach().cpu().double().numpy(), rtol=tol, atol=0.0,
                                      maxiter=max_iter, callback=callback)
    w = torch.from_numpy(x).to(problem.b)
    stat = float(torch.linalg.vector_norm(problem.G @ w - problem.b) / torch.linalg.vector_norm(problem.b))
    return SolveResult(w=w, iterations=count[0], objective=problem.objective(w), converged=stat <= tol,
                       stationarity=stat)


def direct_solve(problem: QuadraticProblem) -> SolveResult:
    """Cholesky solve of G w = b (pseudo-inverse least squares if G is not positive definite)."""
    _require_smooth(problem, "direct_solve")
    L, info = torch.linalg.cholesky_ex(problem.G)
    if int(info) == 0:
        w = torch.cholesky_solve(problem.b[:, None], L).squeeze(-1)
    else:
        w = torch.linalg.lstsq(problem.G, problem.b[:, None], rcond=None).solution.squeeze(-1)
    stat = float(torch.linalg.vector_norm(problem.G @ w - problem.b) / torch.linalg.vector_norm(problem.b))
    return SolveResult(w=w, iterations=1, objective=problem.objective(w), converged=True, stationarity=stat)
