"""DP mechanisms (PROTOCOL §6 items 20, 21, 23) and epsilon monotonicity, as property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.security.accountant import epsilon_of_releases
from fednode.security.clipping import l2_norm
from fednode.security.noise import add_gaussian, distributed_sigma, make_rng, privatize_update

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(vals=st.lists(finite, min_size=1, max_size=64), clip=st.floats(0.01, 100.0))
def test_clip_bound_identity_and_direction(vals, clip):
    from fednode.security.clipping import clip_by_global_norm
    delta = {"a": np.array(vals)}
    out, norm = clip_by_global_norm(delta, clip)
    assert l2_norm(out) <= clip * (1 + 1e-6)
    if norm <= clip:
        assert np.array_equal(out["a"], delta["a"])
    elif norm > 0:
        cos = float(np.dot(out["a"], delta["a"]) / (l2_norm(out) * norm))
        assert cos >= 1 - 1e-9


@settings(max_examples=8, deadline=None)
@given(z=st.floats(0.3, 5.0), clip=st.floats(0.05, 10.0))
def test_noise_std_over_a_million_draws_is_z_times_c(z, clip):
    rng = make_rng()
    noised, _ = privatize_update({"w": np.zeros(1_000_000)}, clip=clip, noise_multiplier=z, rng=rng)
    std = float(np.std(noised["w"]))
    assert abs(std - z * clip) <= 0.006 * z * clip


def test_privatized_update_is_clipped_before_noise():
    rng = np.random.default_rng(0)
    big = {"w": np.full(10_000, 100.0)}
    noised, norm = privatize_update(big, clip=1.0, noise_multiplier=1e-9, rng=rng)
    assert norm == pytest.approx(1e4) and l2_norm(noised) == pytest.approx(1.0, rel=1e-6)


def test_generators_are_seeded_from_the_os_never_equal():
    a, b = make_rng().random(4), make_rng().random(4)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("contributors,colluders", [(3, 0), (5, 1), (8, 2), (12, 0)])
def test_distributed_shares_sum_to_the_central_noise(contributors, colluders):
    """Item 23: the honest shares in S_i = sum W x have variance z^2 W^2 C^2 (within 1 %)."""
    z, clip, weight = 1.3, 0.7, 1.0 / (contributors + 1)
    sigma = distributed_sigma(z, clip, contributors, colluders)
    rng = np.random.default_rng(1)
    honest = contributors - colluders
    total = np.zeros(1_000_000)
    for _ in range(honest):
        total += weight * add_gaussian({"w": np.zeros(1_000_000)}, sigma, rng)["w"]
    assert float(np.var(total)) == pytest.approx((z * weight * clip) ** 2, rel=0.01)


def test_distributed_sigma_refuses_an_all_colluding_set():
    with pytest.raises(ValueError):
        distributed_sigma(1.0, 1.0, 3, 3)


@settings(max_examples=25, deadline=None)
@given(z=st.floats(0.6, 6.0), q=st.floats(0.001, 1.0), steps=st.integers(1, 2000), dz=st.floats(0.05, 2.0),
       dq=st.floats(0.0, 0.5), dt=st.integers(1, 2000))
def test_epsilon_is_monotone(z, q, steps, dz, dq, dt):
    eps = epsilon_of_releases([(z, q, steps)], 1e-5)
    assert math.isfinite(eps) and eps > 0
    assert epsilon_of_releases([(z, q, steps + dt)], 1e-5) >= eps - 1e-9
    assert epsilon_of_releases([(z, min(1.0, q + dq), steps)], 1e-5) >= eps - 1e-9
    assert epsilon_of_releases([(z + dz, q, steps)], 1e-5) <= eps + 1e-9
    # composing releases one by one is the same as one self-composed event
    split = [(z, q, steps // 2), (z, q, steps - steps // 2)] if steps > 1 else [(z, q, 1)]
    assert epsilon_of_releases(split, 1e-5) == pytest.approx(eps, rel=1e-9)
