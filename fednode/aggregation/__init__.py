"""Interim aggregation functions (replaced by the full modules)."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

Model = dict


def mh_weight(degree_i: int, degree_j: int) -> float:
    return 1.0 / (1.0 + max(degree_i, degree_j))


def metropolis_hastings_weights(adjacency, degrees=None):
    A = np.asarray(adjacency, dtype=bool)
    d = A.sum(1) if degrees is None else np.asarray(degrees)
    n = A.shape[0]
    W = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if A[i, j] and i != j:
                W[i, j] = 1.0 / (1.0 + max(d[i], d[j]))
        W[i, i] = 1.0 - W[i].sum()
    return W


def spectral_factor(W) -> float:
    n = W.shape[0]
    return float(np.linalg.norm(W - np.ones((n, n)) / n, 2))


def mix(own, neighbours, weights):
    total = sum(weights.values())
    out = {}
    for k, v in own.items():
        acc = (1.0 - total) * v.astype(np.float64)
        for p, w in weights.items():
            acc = acc + w * neighbours[p][k].astype(np.float64)
        out[k] = acc.astype(v.dtype)
    return out


def clipped_gossip(own, neighbours, weights, tau):
    raise NotImplementedError


def trimmed_mean(models, trim):
    raise NotImplementedError


def coordinate_median(models):
    raise NotImplementedError
