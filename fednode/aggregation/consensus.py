"""Consensus measures: disagreement ||X - JX||_F and the spectral factor lambda = ||W - J||_2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def disagreement(X: np.ndarray) -> float:
    """||X - JX||_F for stacked node vectors X (n, d), J = 11^T / n."""
    X = np.asarray(X, dtype=np.float64)
    return float(np.linalg.norm(X - X.mean(axis=0, keepdims=True)))


def disagreement_models(models: Sequence[Mapping[str, np.ndarray]]) -> float:
    names = sorted(models[0])
    X = np.stack([np.concatenate([np.asarray(m[k], np.float64).ravel() for k in names]) for m in models])
    return disagreement(X)


def consensus_distance(X: np.ndarray) -> float:
    """Mean squared distance of the nodes to their average."""
    X = np.asarray(X, dtype=np.float64)
    return float(np.mean(np.sum((X - X.mean(axis=0)) ** 2, axis=1)))


def spectral_factor(W: np.ndarray) -> float:
    """lambda = ||W - J||_2: one gossip step contracts the disagreement by at least this factor."""
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[0]
    return float(np.linalg.norm(W - np.full((n, n), 1.0 / n), 2))
