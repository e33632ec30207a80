"""Warm-started batched Newton–Schulz solver for many small least-squares systems (Fu et al. 2023).

For B systems ``X_i w_i ~ y_i`` (X: (B, M, p)) the solver works on the normal equations ``S w = X'y`` with
``S = X'X + ridge I`` and iterates ``M <- M (2I - S M)`` towards ``S^-1``. With ``R_k = I - S M_k`` one step gives
``R_{k+1} = R_k^2`` exactly, so the iteration converges (quadratically) iff the spectral radius of ``R_0`` is < 1.

Cold start ``M_0 = alpha S'`` (S is symmetric, so ``R_0 = I - alpha S^2``) with a scaling from :data:`SCALINGS`:

- ``"spectral"``:  ``alpha = 1 / ||S||_2^2``   (eigenvalues of ``alpha S^2`` in (0, 1]; needs an SVD per system),
- ``"frobenius"``: ``alpha = 1 / ||S S'||_F``  (>= ||S S'||_2, so also in (0, 1]; one matmul; the default),
- ``"half_spectral"``: ``alpha = 2 / ||S S'||_2`` -- kept only to show that it does NOT work: the top eigenvalue
  of ``R_0`` is exactly -1, so ``M`` is annihilated in that direction (``R = +1`` there, a fixed point); in floating
  point it stalls for ~50 steps or diverges.

Warm start: ``M_0`` = the previous policy-iteration step's inverse; after a relative perturbation ``e`` of S the
residual is ~``e cond(S)`` and falls as ``e^(2^k)``. A warm start with ``||R_0||_F >= 1`` (no contraction
guarantee) is replaced by a cold start. Systems that still miss the tolerance fall back to batched Cholesky
(``torch.linalg.cholesky_ex``) and, where S is not positive definite, to the pseudo-inverse; the returned
:class:`NSState` flags them (:class:`Method`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from pipeline.errors import ConfigError, InputError

log = logging.getLogger(__name__)

_BLOWUP = 1e8  # a residual norm above this means the iteration diverges
DEFAULT_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}  # on ||I - S M||_F


def _alpha_spectral(S: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(S, ord=2).pow(-2)


def _alpha_frobenius(S: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(S @ S.mT).reciprocal()


def _alpha_half_spectral(S: Tensor) -> Tensor:
    return 2.0 / torch.linalg.matrix_norm(S @ S.mT, ord=2)


SCALINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "spectral": _alpha_spectral,
    "frobenius": _alpha_frobenius,
    "half_spectral": _alpha_half_spectral,
}


class Method(IntEnum):
    """How one system was finally solved."""

    NEWTON_SCHULZ = 0
    CHOLESKY = 1
    PSEUDOINVERSE = 2


@dataclass(frozen=True)
class NSState:
    """Result and warm-start state of one batched solve (all tensors have leading dim B).

    inverse: (B, p, p) approximation of S^-1 (pass as ``warm`` to the next solve).
    iterations: (B,) Newton–Schulz steps spent (warm + cold passes).
    method: (B,) :class:`Method` codes; non-zero = fell back.
    residual: (B,) bound on ||I - S inverse||_F (for NS: the squared residual before the last step).
    """

    inverse: Tensor
    iterations: Tensor
    method: Tensor
    residual: Tensor

    @property
    def n_fallback(self) -> int:
        return int((self.method != Method.NEWTON_SCHULZ).sum())


def cold_start(S: Tensor, scaling: str = "frobenius") -> Tensor:
    """Initial inverse ``alpha S'`` for S (B, p, p) with a scaling named in :data:`SCALINGS`."""
    if scaling not in SCALINGS:
        raise ConfigError(f"solver scaling={scaling!r} is unknown; expected one of {sorted(SCALINGS)}")
    return SCALINGS[scaling](S)[:, None, None] * S.mT


def newton_schulz(
    S: Tensor, M0: Tensor, *, tol: float, max_iter: int, require_contraction: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Iterate ``M <- M (2I - S M)`` per system until ``||I - S M||_F <= tol``.

    S, M0: (B, p, p). A system whose residual r satisfies tol < r <= sqrt(tol) takes one last step without a check
    (the new residual is <= r^2 <= tol). Converged systems leave the active batch. With ``require_contraction`` a
    system with ||I - S M0||_F >= 1 fails at once (used for warm starts).
    Returns (M (B, p, p), residual bound (B,), iterations (B,) long, failed (B,) bool).
    """
    B, p, _ = S.shape
    eye = torch.eye(p, dtype=S.dtype, device=S.device)
    out = M0.clone()
    residual = torch.full((B,), math.inf, dtype=S.dtype, device=S.device)
    iterations = torch.zeros(B, dtype=torch.long, device=S.device)
    failed = torch.zeros(B, dtype=torch.bool, device=S.device)
    idx, S_a, M_a = torch.arange(B, device=S.device), S, M0
    sqrt_tol = math.sqrt(tol)
    for k in range(max_iter + 1):
        SM = S_a @ M_a
        r = torch.linalg.matrix_norm(eye - SM)
        M_next = torch.baddbmm(M_a, M_a, SM, beta=2.0, alpha=-1.0)  # M (2I - S M)
        limit = 1.0 if require_contraction and k == 0 else _BLOWUP
        done = (r <= sqrt_tol) | ~(r < limit) | (k == max_iter)  # ~(r < limit) also catches nan
        if not bool(done.any()):  # the common case: nothing to record, nothing leaves the batch
            M_a = M_next
            continue
        ok = r <= tol
        near = (r <= sqrt_tol) & ~ok & (k < max_iter)
        fin = torch.where(near[:, None, None], M_next, M_a)
        rec = (fin, torch.where(near, r * r, r), k + near.long(), ~(ok | near))
        if bool(done.all()):
            out[idx], residual[idx], iterations[idx], failed[idx] = rec
            break
        d_idx = idx[done]
        out[d_idx], residual[d_idx], iterations[d_idx], failed[d_idx] = (t[done] for t in rec)
        idx, S_a, M_a = idx[~done], S_a[~done], M_next[~done]
    return out, residual, iterations, failed


def cholesky_solve_batched(S: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Solve S w = b for S (B, p, p) SPD, b (B, p) by batched Cholesky; returns (w (B, p), info (B,) int, 0 = ok)."""
    L, info = torch.linalg.cholesky_ex(S)
    return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1), info


@dataclass(frozen=True)
class NewtonSchulzSolver:
    """Batched least-squares solver; holds only its settings (the warm-start state is passed in and returned).

    tol: bound on ||I - S M||_F for accepting a Newton–Schulz inverse (None: :data:`DEFAULT_TOL` by dtype).
    max_iter: Newton–Schulz steps per pass (cold starts of badly conditioned S need ~2 log2(cond) + 5).
    scaling: cold-start scaling (:data:`SCALINGS`). ridge: added to the diagonal of X'X (units of X'X).
    """

    tol: float | None = None
    max_iter: int = 60
    scaling: str = "frobenius"
    ridge: float = 0.0

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ConfigError(f"solver scaling={self.scaling!r} is unknown; expected one of {sorted(SCALINGS)}")
        if self.max_iter < 1:
            raise ConfigError(f"solver max_iter={self.max_iter} must be >= 1")
        if self.ridge < 0:
            raise ConfigError(f"solver ridge={self.ridge} must be >= 0")

    def solve(self, X: Tensor, y: Tensor, *, warm: NSState | None = None) -> tuple[Tensor, NSState]:
        """Least squares for X (B, M, p), y (B, M) -> (w (B, p), state). ``warm``: the previous state."""
        if X.ndim != 3 or y.shape != X.shape[:2]:
            raise InputError(f"expected X (B, M, p) and y (B, M); got {tuple(X.shape)} and {tuple(y.shape)}")
        S = X.mT @ X
        if self.ridge:
            S = S + self.ridge * torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
        return self.solve_normal(S, (X.mT @ y.unsqueeze(-1)).squeeze(-1), warm=warm)

    def solve_normal(self, S: Tensor, b: Tensor, *, warm: NSState | None = None) -> tuple[Tensor, NSState]:
        """Solve S w = b for symmetric S (B, p, p), b (B, p) -> (w (B, p), state)."""
        tol = self.tol if self.tol is not None else DEFAULT_TOL.get(S.dtype, 1e-4)
        if warm is not None and warm.inverse.shape != S.shape:
            raise InputError(f"warm-start inverse has shape {tuple(warm.inverse.shape)}, systems {tuple(S.shape)}")
        if warm is None:
            M, res, its, failed = newton_schulz(S, cold_start(S, self.scaling), tol=tol, max_iter=self.max_iter)
        else:
            M, res, its, failed = newton_schulz(S, warm.inverse, tol=tol, max_iter=self.max_iter,
                                                require_contraction=True)
            if bool(failed.any()):
                M2, res2, its2, failed2 = newton_schulz(
                    S[failed], cold_start(S[failed], self.scaling), tol=tol, max_iter=self.max_iter)
                M[failed], res[failed], its[failed] = M2, res2, its[failed] + its2
                failed[failed.clone()] = failed2
        method = torch.full_like(its, int(Method.NEWTON_SCHULZ), dtype=torch.int8)
        w = (M @ b.unsqueeze(-1)).squeeze(-1)
        if bool(failed.any()):
            self._fallback(S, b, failed, w=w, M=M, method=method, residual=res)
        return w, NSState(inverse=M, iterations=its, method=method, residual=res)

    @staticmethod
    def _fallback(S: Tensor, b: Tensor, failed: Tensor, *, w: Tensor, M: Tensor, method: Tensor,
                  residual: Tensor) -> None:
        """Cholesky for the failed systems, pseudo-inverse where S is not positive definite (fills in place)."""
        idx = failed.nonzero().squeeze(-1)
        L, info = torch.linalg.cholesky_ex(S[idx])
        chol, pinv = idx[info == 0], idx[info != 0]
        if chol.numel():
            Lc = L[info == 0]
            w[chol] = torch.cholesky_solve(b[chol].unsqueeze(-1), Lc).squeeze(-1)
            M[chol] = torch.cholesky_inverse(Lc)
            method[chol] = Method.CHOLESKY
        if pinv.numel():
            M[pinv] = torch.linalg.pinv(S[pinv], hermitian=True)
            w[pinv] = (M[pinv] @ b[pinv].unsqueeze(-1)).squeeze(-1)
            method[pinv] = Method.PSEUDOINVERSE
        eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
        residual[idx] = torch.linalg.matrix_norm(eye - S[idx] @ M[idx])
        log.debug("Newton-Schulz fallback: %d Cholesky, %d pseudo-inverse", chol.numel(), pinv.numel())
