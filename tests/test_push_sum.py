"""PROTOCOL section 6 item 8: push-sum invariants under arbitrary loss."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.aggregation.push_sum import in_flight, init_state, step
from tests.strategies import connected_graphs, node_values

S = settings(derandomize=True, deadline=None, max_examples=30)


@S
@given(A=connected_graphs(max_n=20), steps=st.integers(1, 40), loss=st.floats(0, 0.6), data=st.data())
def test_running_sums_conserve_mass_with_in_flight_and_stay_in_the_hull(A, steps, loss, data):
    n = len(A)
    X0 = data.draw(node_values(n, d=2, bound=1e3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    st_ = init_state(X0)
    for _ in range(steps):
        st_ = step(st_, A, rng.random((n, n)) < loss, mode="running")
        num, den = in_flight(st_, A)
        scale = 1 + np.abs(X0).sum()
        assert np.allclose(st_.s.sum(0) + num, X0.sum(0), atol=1e-9 * scale)
        assert np.isclose(st_.w.sum() + den, n, atol=1e-9 * n)
        z = st_.estimate
        assert (z >= X0.min(0) - 1e-9 * scale).all() and (z <= X0.max(0) + 1e-9 * scale).all()


@S
@given(A=connected_graphs(max_n=20), loss=st.floats(0, 0.6), data=st.data())
def test_readd_mode_conserves_mass_exactly(A, loss, data):
    n = len(A)
    X0 = data.draw(node_values(n, d=2, bound=1e3))
    rng = np.random.default_rng(1)
    st_ = init_state(X0)
    for _ in range(20):
        st_ = step(st_, A, rng.random((n, n)) < loss, mode="readd")
        assert np.allclose(st_.s.sum(0), X0.sum(0), atol=1e-9 * (1 + np.abs(X0).sum()))
        assert np.isclose(st_.w.sum(), n, atol=1e-9 * n)


@settings(derandomize=True, deadline=None, max_examples=10)
@given(A=connected_graphs(max_n=20), data=st.data())
def test_robust_mode_reaches_the_average_within_500_rounds_after_losses_stop(A, data):
    n = len(A)
    X0 = data.draw(node_values(n, d=2, bound=1e3))
    rng = np.random.default_rng(2)
    st_ = init_state(X0)
    for _ in range(30):
        st_ = step(st_, A, rng.random((n, n)) < 0.2, mode="running")
    for _ in range(500):
        st_ = step(st_, A, np.zeros((n, n), dtype=bool), mode="running")
    err = np.abs(st_.estimate - X0.mean(0)).max()
    assert err <= 1e-6 * (1 + np.abs(X0).max())


def test_plain_push_sum_loses_mass_under_loss():
    A = np.ones((10, 10)) - np.eye(10)
    st_ = init_state(np.arange(10.0)[:, None])
    rng = np.random.default_rng(0)
    for _ in range(100):
        st_ = step(st_, A, rng.random((10, 10)) < 0.2, mode="plain")
    assert st_.w.sum() < 0.5  # the documented failure mode the robust modes fix
