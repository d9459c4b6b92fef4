"""PROTOCOL section 6, items 1-7 and 9: Metropolis-Hastings mixing properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.aggregation import (apply_usage, asymmetric_drift, disagreement, drop_edges,
                                 metropolis_hastings_weights, mix, mix_matrix, spectral_factor)
from tests.strategies import connected_graphs, node_values

S = settings(derandomize=True, deadline=None, max_examples=60)


@S
@given(A=connected_graphs(), data=st.data())
def test_1_mh_symmetric_nonnegative_doubly_stochastic_also_after_edge_drops(A, data):
    W = metropolis_hastings_weights(A)
    for M in (W, drop_edges(W, [(i, j) for i, j in zip(*np.nonzero(np.triu(A))) if data.draw(st.booleans())])):
        assert np.array_equal(M, M.T) and (M >= 0).all()
        assert np.allclose(M.sum(0), 1, atol=1e-12) and np.allclose(M.sum(1), 1, atol=1e-12)
    # announced degrees above the realised ones keep all of it
    extra = data.draw(st.lists(st.integers(0, 3), min_size=len(A), max_size=len(A)))
    W2 = metropolis_hastings_weights(A, degrees=A.sum(1) + np.array(extra))
    assert np.array_equal(W2, W2.T) and (W2 >= 0).all() and np.allclose(W2.sum(1), 1, atol=1e-12)


@S
@given(A=connected_graphs(), data=st.data())
def test_2_and_3_mass_and_contraction(A, data):
    n = len(A)
    X = data.draw(node_values(n))
    W = metropolis_hastings_weights(A)
    Y = mix_matrix(W, X)
    assert np.abs(Y.mean(0) - X.mean(0)).max() <= 1e-12 * (1 + np.abs(X).max())
    lam = spectral_factor(W)
    assert lam < 1
    assert disagreement(Y) <= lam * disagreement(X) + 1e-9 * (1 + np.abs(X).max())


@S
@given(A=connected_graphs(max_n=16), t=st.integers(1, 30), data=st.data())
def test_4_disagreement_after_t_rounds(A, t, data):
    X = data.draw(node_values(len(A), bound=1e3))
    W = metropolis_hastings_weights(A)
    lam = spectral_factor(W)
    Y = X
    for _ in range(t):
        Y = mix_matrix(W, Y)
    assert disagreement(Y) <= lam ** t * disagreement(X) + 1e-9 * (1 + np.abs(X).max())


@S
@given(X=node_values(2, d=5))
def test_5_pairwise_energy_identity(X):
    # pairwise gossip on (i, j) with weight 1/2: ||x' - xbar||^2 = ||x - xbar||^2 - ||x_i - x_j||^2 / 2
    Y = np.vstack([X, np.zeros((3, 5))])
    W = drop_edges(metropolis_hastings_weights(np.ones((5, 5)) - np.eye(5)),
                   [(i, j) for i in range(5) for j in range(i + 1, 5) if (i, j) != (0, 1)])
    W[0, 0] = W[1, 1] = W[0, 1] = W[1, 0] = 0.5
    Z = mix_matrix(W, Y)
    before = np.sum((Y - Y.mean(0)) ** 2)
    after = np.sum((Z - Z.mean(0)) ** 2)
    expected = before - np.sum((Y[0] - Y[1]) ** 2) / 2
    assert np.isclose(after, expected, rtol=1e-9, atol=1e-9 * (1 + before))


@S
@given(c=st.floats(-1e6, 1e6), k=st.integers(1, 10), w=st.floats(0.01, 0.09))
def test_6_idempotence(c, k, w):
    own = {"a": np.full(4, c), "b": np.full((2, 2), c)}
    nbrs = {j: {"a": np.full(4, c), "b": np.full((2, 2), c)} for j in range(k)}
    out = mix(own, nbrs, {j: w for j in range(k)})
    for v in out.values():
        assert np.abs(v - c).max() <= 1e-12 * abs(c)


@S
@given(X=node_values(6), perm=st.permutations(list(range(5))))
def test_7_aggregate_is_permutation_invariant(X, perm):
    own = {"w": X[0]}
    nbrs = {j: {"w": X[j + 1]} for j in range(5)}
    weights = {j: 0.1 + 0.02 * j for j in range(5)}
    a = mix(own, nbrs, weights)
    b = mix(own, {perm[j]: nbrs[j] for j in range(5)}, {perm[j]: weights[j] for j in range(5)})
    # floats: equal up to summation-order rounding (bit-exactness is the ring encoding's property)
    assert np.allclose(a["w"], b["w"], rtol=0, atol=1e-12 * (1 + np.abs(X).max()))


@S
@given(A=connected_graphs(max_n=12), data=st.data())
def test_9_asymmetric_use_shifts_the_mean_by_exactly_the_drift(A, data):
    n = len(A)
    X = data.draw(node_values(n, bound=1e3))
    W = metropolis_hastings_weights(A)
    used = A.astype(bool) & np.array([[data.draw(st.booleans()) for _ in range(n)] for _ in range(n)])
    Y = apply_usage(W, X, used)
    drift = asymmetric_drift(W, X, used)
    assert np.allclose(Y.mean(0) - X.mean(0), drift / n, atol=1e-12 * (1 + np.abs(X).max()))
    sym = used & used.T
    assert np.abs(apply_usage(W, X, sym).mean(0) - X.mean(0)).max() <= 1e-12 * (1 + np.abs(X).max())
