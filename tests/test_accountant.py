"""Accountant oracles (PROTOCOL section 6 item 22) and the `fednode privacy` calculator."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.security.accountant import epsilon, epsilon_rdp, noise_for_epsilon
from fednode.security.rdp_oracle import compute_rdp, epsilon_classic


def test_abadi_example_with_the_independent_oracle():
    # Abadi et al. section 3.1: q = 0.01, sigma = 4, T = 10^4, delta = 1e-5, integer orders 2-256
    assert abs(epsilon_classic(0.01, 4.0, 10_000, 1e-5) - 1.2586) <= 1e-3


def test_tf_privacy_rdp_values():
    assert math.isclose(compute_rdp(0.1, 2.0, 10, [5])[0], 0.07737, rel_tol=1e-3)
    a, b = compute_rdp(0.01, 2.5, 50, [5, 50])
    assert math.isclose(a, 0.00218075, rel_tol=1e-3) and math.isclose(b, 0.023846, rel_tol=1e-3)
    assert abs(epsilon_classic(256 / 60000, 1.12, 14062, 1e-5) - 2.92) <= 5e-3


@pytest.mark.parametrize("z, rdp_eps, pld_eps", [(4.0, 1.0355, 0.947), (1.1, 5.632, 5.193)])
def test_dp_accounting_matches_published_values_within_1_percent(z, rdp_eps, pld_eps):
    out = epsilon(z, 0.01, 10_000, 1e-5)
    assert math.isclose(out["epsilon_rdp"], rdp_eps, rel_tol=0.01)
    assert math.isclose(out["epsilon_pld"], pld_eps, rel_tol=0.01)


def test_tutorial_case_rdp():
    assert math.isclose(epsilon_rdp(1.12, 256 / 60000, 14062, 1e-5), 2.519, rel_tol=0.01)


def _analytic_gaussian_eps(z: float, steps: int, delta: float) -> float:
    """Balle & Wang's exact (eps, delta) of a Gaussian with mu = sqrt(T)/z, inverted by bisection."""
    mu = math.sqrt(steps) / z

    def delta_of(eps: float) -> float:
        phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("z, steps, exact", [(1.0, 1, 4.3772), (5.0, 100, 9.9973)])
def test_pld_equals_the_analytic_gaussian_and_rdp_is_an_upper_bound(z, steps, exact):
    assert abs(_analytic_gaussian_eps(z, steps, 1e-5) - exact) <= 1e-3
    out = epsilon(z, 1.0, steps, 1e-5)
    assert abs(out["epsilon_pld"] - exact) <= 1e-3
    assert out["epsilon_rdp"] >= exact


@settings(derandomize=True, deadline=None, max_examples=15)
@given(z=st.floats(0.8, 8), q=st.floats(0.001, 0.2), t=st.integers(10, 2000))
def test_epsilon_is_monotone(z, q, t):
    e = epsilon_rdp(z, q, t, 1e-5)
    assert epsilon_rdp(z, q, 2 * t, 1e-5) >= e - 1e-9
    assert epsilon_rdp(z, min(1.0, 2 * q), t, 1e-5) >= e - 1e-9
    assert epsilon_rdp(z * 1.5, q, t, 1e-5) <= e + 1e-9


def test_noise_for_epsilon_round_trips():
    z = noise_for_epsilon(1.0, 0.01, 10_000, 1e-5)
    assert epsilon_rdp(z, 0.01, 10_000, 1e-5) <= 1.0 < epsilon_rdp(z * 0.999, 0.01, 10_000, 1e-5)


def _privacy(*args):
    return subprocess.run([sys.executable, "-m", "fednode", "privacy", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_prints_json_with_both_accountants():
    out = _privacy("--noise-multiplier", "4", "--sampling-rate", "0.01", "--steps", "10000", "--delta", "1e-5")
    data = json.loads(out.stdout)
    assert {"epsilon_rdp", "epsilon_pld", "delta", "noise_multiplier"} <= set(data)
    assert math.isclose(data["epsilon_rdp"], 1.0355, rel_tol=0.01) and math.isclose(data["epsilon_pld"], 0.947,
                                                                                    rel_tol=0.01)
    target = json.loads(_privacy("--target-epsilon", "1.0355", "--sampling-rate", "0.01", "--steps", "10000",
                                 "--delta", "1e-5").stdout)
    assert math.isclose(target["noise_multiplier"], 4.0, rel_tol=2e-3)
    bad = _privacy("--steps", "10")
    assert bad.returncode == 2 and bad.stderr.startswith("fednode: error:")
