"""Metropolis-Hastings mixing weights: symmetric, doubly stochastic, computable by each node alone."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mh_weight(degree_i: int, degree_j: int) -> float:
    """W_ij = 1 / (1 + max(d_i, d_j)); both ends compute the same value from the signed HELLOs."""
    return 1.0 / (1.0 + max(int(degree_i), int(degree_j)))


def metropolis_hastings_weights(adjacency: np.ndarray, degrees: np.ndarray | None = None) -> np.ndarray:
    """W for a symmetric adjacency; ``degrees`` (announced d_hat >= realised degree) may override the degree.

    Off-diagonal W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij. Nonnegative whenever every
    announced degree is at least the realised one.
    """
    A = np.asarray(adjacency) != 0
    if A.ndim != 2 or A.shape[0] != A.shape[1] or not (A == A.T).all():
        raise ValueError("adjacency must be a square symmetric matrix")
    np.fill_diagonal(A, False)
    d = A.sum(axis=1) if degrees is None else np.asarray(degrees, dtype=float)
    dmax = np.maximum.outer(d, d)
    W = np.where(A, 1.0 / (1.0 + dmax), 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def drop_edges(W: np.ndarray, edges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Drop edges symmetrically: W_ij moves onto W_ii and W_jj, so W stays doubly stochastic."""
    out = np.array(W, dtype=float, copy=True)
    for i, j in edges:
        if i == j:
            continue
        w = out[i, j]
        out[i, j] = out[j, i] = 0.0
        out[i, i] += w
        out[j, j] += w
    return out
