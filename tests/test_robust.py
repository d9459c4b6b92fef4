"""PROTOCOL section 6 items 24-25 (ClippedGossip, trimmed mean) and item 20 (update clipping)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.aggregation import (clipped_gossip, coordinate_median, metropolis_hastings_weights, mix,
                                 trimmed_mean)
from fednode.security.clipping import clip_by_global_norm, l2_norm
from tests.strategies import connected_graphs, node_values

S = settings(derandomize=True, deadline=None, max_examples=60)


def _node_round(A, X, tau):
    W = metropolis_hastings_weights(A)
    out = []
    for i in range(len(A)):
        nb = [j for j in range(len(A)) if A[i, j]]
        out.append(clipped_gossip({"x": X[i]}, {j: {"x": X[j]} for j in nb}, {j: W[i, j] for j in nb}, tau)["x"])
    return np.stack(out), W


@S
@given(A=connected_graphs(max_n=12), data=st.data())
def test_24_tau_inf_is_plain_gossip_exactly(A, data):
    X = data.draw(node_values(len(A), bound=1e3))
    Y, W = _node_round(A, X, float("inf"))
    for i in range(len(A)):
        nb = [j for j in range(len(A)) if A[i, j]]
        plain = mix({"x": X[i]}, {j: {"x": X[j]} for j in nb}, {j: W[i, j] for j in nb})["x"]
        assert np.array_equal(Y[i], plain)


@S
@given(A=connected_graphs(max_n=12), tau=st.floats(0.01, 100), data=st.data())
def test_24_common_tau_preserves_the_mean(A, tau, data):
    X = data.draw(node_values(len(A), bound=1e3))
    Y, _ = _node_round(A, X, tau)
    assert np.abs(Y.mean(0) - X.mean(0)).max() <= 1e-12 * (1 + np.abs(X).max())


@S
@given(k=st.integers(1, 6), tau=st.floats(0.01, 10), data=st.data())
def test_24_one_byzantine_neighbour_moves_x_by_at_most_2_w_tau(k, tau, data):
    X = data.draw(node_values(k + 1, d=4, bound=10))
    w = 1.0 / (k + 2)
    honest = {j: {"x": X[j + 1]} for j in range(k)}
    weights = {j: w for j in range(k)} | {"evil": w}
    evil = {"x": np.full(4, 1e30) * data.draw(st.sampled_from([1, -1]))}
    base = clipped_gossip({"x": X[0]}, honest | {"evil": {"x": X[0]}}, weights, tau)["x"]
    attacked = clipped_gossip({"x": X[0]}, honest | {"evil": evil}, weights, tau)["x"]
    assert np.linalg.norm(attacked - base) <= 2 * w * tau * (1 + 1e-9)
    moved = clipped_gossip({"x": X[0]}, honest | {"evil": evil}, weights, tau)["x"] - X[0]
    assert np.linalg.norm(moved) <= tau * (k + 1) * w * (1 + 1e-9)  # tau (1 - W_ii)


@S
@given(n_honest=st.integers(3, 9), b=st.integers(0, 3), data=st.data())
def test_25_trimmed_mean_stays_within_the_honest_range(n_honest, b, data):
    honest = data.draw(node_values(n_honest, d=5, bound=1e3))
    byz = data.draw(st.integers(0, b))
    attackers = np.full((byz, 5), 1e30) * np.where(np.arange(byz)[:, None] % 2, 1, -1) if byz else np.zeros((0, 5))
    models = [{"x": r} for r in np.vstack([honest, attackers])]
    if 2 * b >= len(models):
        return
    out = trimmed_mean(models, b)["x"]
    assert (out >= honest.min(0) - 1e-9).all() and (out <= honest.max(0) + 1e-9).all()
    med = coordinate_median(models)["x"]
    if byz < n_honest:
        assert np.isfinite(med).all() and np.abs(med).max() < 1e29


@S
@given(X=node_values(5, bound=1e3))
def test_25_trim_zero_is_the_mean(X):
    out = trimmed_mean([{"x": r} for r in X], 0)["x"]
    assert np.allclose(out, X.mean(0), rtol=1e-12, atol=1e-9)


@S
@given(delta=node_values(3, d=4, bound=1e6), C=st.floats(1e-3, 1e4))
def test_20_clipping(delta, C):
    update = {"a": delta[0], "b": delta[1:].reshape(2, 4)}
    clipped, norm = clip_by_global_norm(update, C)
    assert l2_norm(clipped) <= C * (1 + 1e-6)
    assert np.isclose(norm, l2_norm(update))
    if norm <= C:
        assert all(np.array_equal(clipped[k], update[k]) for k in update)
    elif norm > 0:
        u = np.concatenate([update["a"], update["b"].ravel()])
        v = np.concatenate([clipped["a"], clipped["b"].ravel()])
        assert u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) >= 1 - 1e-9
