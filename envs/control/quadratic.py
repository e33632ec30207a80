"""Quadratic value bases: x kron x (the IntRL authors') and the upper-triangular monomials."""

from __future__ import annotations

import numpy as np


def kron_phi(x: np.ndarray) -> np.ndarray:
    """phi(x) = x kron x: (n,) -> (n^2,). V = w' phi = x' W x with W = w.reshape(n, n)."""
    return np.kron(x, x)


def kron_grad(x: np.ndarray) -> np.ndarray:
    """d(x kron x)/dx: (n,) -> (n^2, n); row i*n+j is x_j e_i + x_i e_j."""
    n = x.shape[0]
    eye = np.eye(n)
    return np.kron(eye, x[:, None]) + np.kron(x[:, None], eye)


def triu_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n)


def triu_phi(x: np.ndarray) -> np.ndarray:
    """Upper-triangular monomials [x_i x_j]_{i<=j}: (n,) -> (n(n+1)/2,) (x1^2, x1 x2, ..., xn^2)."""
    i, j = triu_indices(x.shape[0])
    return x[i] * x[j]


def triu_grad(x: np.ndarray) -> np.ndarray:
    """Jacobian of :func:`triu_phi`: (n,) -> (n(n+1)/2, n)."""
    n = x.shape[0]
    i, j = triu_indices(n)
    out = np.zeros((i.shape[0], n))
    rows = np.arange(i.shape[0])
    np.add.at(out, (rows, i), x[j])
    np.add.at(out, (rows, j), x[i])
    return out


def matrix_to_weights(P: np.ndarray, basis: str) -> np.ndarray:
    """Weights w with w' phi(x) = x' P x for a symmetric P (n, n)."""
    if basis == "kron":
        return P.reshape(-1).copy()
    i, j = triu_indices(P.shape[0])
    return np.where(i == j, 1.0, 2.0) * P[i, j]


def weights_to_matrix(w: np.ndarray, n: int, basis: str) -> np.ndarray:
    """Symmetric P (n, n) with x' P x = w' phi(x)."""
    if basis == "kron":
        W = w.reshape(n, n)
        return 0.5 * (W + W.T)
    i, j = triu_indices(n)
    P = np.zeros((n, n))
    P[i, j] = np.where(i == j, 1.0, 0.5) * w
    return P + np.triu(P, 1).T
