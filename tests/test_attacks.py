"""Each attack against each aggregation rule: how far b Byzantine of k neighbours move node i (issue 12).

Node i holds x_i, has k neighbours at MH weight W = 1/(k+1), b of them Byzantine. The honest
spread is D = max over honest j of ||x_j - x_i|| (per coordinate: the honest range). Bounds,
whatever the attack and its scale (the attack's values are scaled by up to 1e4 on top):

- gossip: no bound: the attackers move x_i by exactly W * sum_a (x_a - x_i);
- clipped (adaptive ClippedGossip radius): for b <= floor(k/2), ||out - ref|| <= b W D, ref being the
  same rule without the attackers: the deviation per neighbour weight is at most the fraction b/k times D;
- median: for b <= floor(k/2) (a minority of the k+1 values), every coordinate stays within the honest range;
- trimmed mean with trim >= b: the same; with trim < b it can be pushed anywhere;
- validation filter on a quadratic loss L(x) = ||x - c||^2: each kept attacker moves x_i by at most
  ||x_i - c|| + sqrt(L_0 + t), whatever it sent;
- nan / inf / oversize never reach an aggregator: the envelope verification refuses them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.aggregation import clipped_gossip, coordinate_median, mix, trimmed_mean
from fednode.aggregation.robust import adaptive_tau
from fednode.aggregation.validation import tolerance, validation_weights
from fednode.node.attacks import ATTACKS, WIRE_REJECTED, apply_attack
from fednode.security.envelope import MsgType, VerifyContext, open_envelope, seal
from fednode.security.identity import AllowList, Identity
from fednode.security.replay import ReplayGuard

S = settings(derandomize=True, deadline=None, max_examples=40)
MODEL_ATTACKS = [a for a in ATTACKS if a not in WIRE_REJECTED]


@st.composite
def neighbourhoods(draw, max_k: int = 8):
    """(own, honest neighbours, attackers' models, k, b) for one attack."""
    k = draw(st.integers(2, max_k))
    b = draw(st.integers(0, k // 2))
    d = draw(st.integers(2, 8))
    attack = draw(st.sampled_from(MODEL_ATTACKS))
    amp = draw(st.sampled_from([1.0, 10.0, 1e4]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    own = {"x": rng.normal(size=d)}
    honest = [{"x": own["x"] + rng.normal(scale=0.5, size=d)} for _ in range(k - b)]
    half = {"x": own["x"] + rng.normal(scale=0.1, size=d)}
    attackers = []
    for _ in range(b):
        bad = apply_attack(attack, base=own, half=half, observed=honest, history=[{"x": np.zeros(d)}], rng=rng)
        attackers.append({"x": own["x"] + amp * (bad["x"] - own["x"])})
    return own, honest, attackers, k, b


def _ids(honest, attackers):
    nb = {f"h{j}": m for j, m in enumerate(honest)} | {f"a{j}": m for j, m in enumerate(attackers)}
    return nb, [p for p in nb if p.startswith("h")]


@S
@given(case=neighbourhoods())
def test_gossip_has_no_bound(case):
    own, honest, attackers, k, b = case
    nb, hon = _ids(honest, attackers)
    w = 1.0 / (k + 1)
    out = mix(own, nb, {p: w for p in nb})["x"]
    ref = mix(own, {p: nb[p] for p in hon}, {p: w for p in hon})["x"]
    pull = w * sum(a["x"] - own["x"] for a in attackers) if attackers else 0.0
    assert np.allclose(out - ref, pull, atol=1e-9 * (1 + np.abs(pull).max() if b else 1))


@S
@given(case=neighbourhoods())
def test_clipped_gossip_deviation_is_at_most_fraction_times_spread(case):
    own, honest, attackers, k, b = case
    nb, hon = _ids(honest, attackers)
    w = 1.0 / (k + 1)
    weights = {p: w for p in nb}
    tau = adaptive_tau(own, nb, weights)
    spread = max(float(np.linalg.norm(m["x"] - own["x"])) for m in honest)
    assert tau <= spread * (1 + 1e-12)  # a Byzantine minority never widens the radius past the honest spread
    out = clipped_gossip(own, nb, weights, None)["x"]
    ref = clipped_gossip(own, {p: nb[p] for p in hon}, {p: w for p in hon}, tau)["x"]
    deviation = float(np.linalg.norm(out - ref))
    assert deviation <= b * w * spread * (1 + 1e-9) + 1e-12
    assert deviation / (k * w * spread + 1e-300) <= b / k + 1e-9  # as a function of the attacker fraction


@S
@given(case=neighbourhoods())
def test_median_stays_in_the_honest_range(case):
    own, honest, attackers, k, b = case
    out = coordinate_median([own, *honest, *attackers])["x"]
    stack = np.stack([own["x"], *(m["x"] for m in honest)])
    assert np.all(out >= stack.min(0) - 1e-12) and np.all(out <= stack.max(0) + 1e-12)


@S
@given(case=neighbourhoods())
def test_trimmed_mean_with_trim_at_least_b_stays_in_the_honest_range(case):
    own, honest, attackers, k, b = case
    out = trimmed_mean([own, *honest, *attackers], max(b, 0))["x"]
    stack = np.stack([own["x"], *(m["x"] for m in honest)])
    assert np.all(out >= stack.min(0) - 1e-9) and np.all(out <= stack.max(0) + 1e-9)


def test_trimmed_mean_with_trim_below_b_is_unbounded():
    own, honest = {"x": np.zeros(3)}, [{"x": np.ones(3) * s} for s in (-0.1, 0.1)]
    far = [{"x": np.full(3, 1e6)}, {"x": np.full(3, 1e6)}]
    assert trimmed_mean([own, *honest, *far], 1)["x"].min() > 1e5


@S
@given(case=neighbourhoods())
def test_validation_filter_bounds_each_kept_attacker(case):
    own, honest, attackers, k, b = case
    nb, hon = _ids(honest, attackers)
    c = np.mean([m["x"] for m in honest], axis=0)  # the loss's optimum: where the honest models point

    def loss(m):
        return float(np.sum((m["x"] - c) ** 2))

    w = 1.0 / (k + 1)
    weights = {p: w for p in nb}
    l0 = loss(own)
    mixed = {p: loss({"x": own["x"] + w * (nb[p]["x"] - own["x"])}) for p in nb}
    kept = validation_weights(l0, mixed, weights)
    assert set(kept) <= set(nb) and all(0 < kept[p] <= weights[p] for p in kept)
    out = mix(own, {p: nb[p] for p in kept}, kept)["x"]
    ref = mix(own, {p: nb[p] for p in kept if p in hon}, {p: kept[p] for p in kept if p in hon})["x"]
    per = float(np.linalg.norm(own["x"] - c)) + math.sqrt(l0 + tolerance(l0))
    kept_attackers = sum(1 for p in kept if p.startswith("a"))
    assert float(np.linalg.norm(out - ref)) <= kept_attackers * per * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("attack", sorted(WIRE_REJECTED))
def test_wire_attacks_are_refused_by_verification(attack):
    """nan, inf and oversize contributions are signed correctly and still never accepted."""
    alice, bob = Identity.generate(), Identity.generate()
    allow = AllowList()
    allow.add(alice.public_key_bytes)
    allow.add(bob.public_key_bytes)
    rng = np.random.default_rng(1)
    half = {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    bad = apply_attack(attack, base=half, half=half, rng=rng)
    raw = seal(alice, msg_type=MsgType.CONTRIBUTE, recipient=bob.peer_id, federation="f", round=3, arrays=bad,
               meta={"d": 4}, now_ms=1_000_000)
    from fednode.security.arrays import ModelSpec
    ctx = VerifyContext(self_id=bob.peer_id, federation="f", allow_list=allow, current_round=3, now_ms=1_000_000,
                        replay=ReplayGuard(), model_spec=ModelSpec.of(half))
    got = open_envelope(raw, ctx)
    assert getattr(got, "reason", None) == ("magnitude" if attack == "oversize" else "non_finite")


def test_attacks_are_deterministic_and_leave_inputs_alone():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    base = {"x": np.arange(6, dtype=np.float32)}
    half = {"x": base["x"] + 0.5}
    obs = [{"x": base["x"] + 1.0}, {"x": base["x"] - 1.0}]
    for attack in ATTACKS:
        a = apply_attack(attack, base=base, half=half, observed=obs, history=[base], rng=rng_a)
        b = apply_attack(attack, base=base, half=half, observed=obs, history=[base], rng=rng_b)
        assert np.array_equal(a["x"], b["x"], equal_nan=True) and a["x"].dtype == np.float32
    assert np.array_equal(half["x"], base["x"] + 0.5)
    signflip = apply_attack("signflip", base=base, half=half, rng=rng_a)["x"]
    assert np.allclose(signflip, base["x"] - 4 * 0.5)
    alie = apply_attack("alie", base=base, half=half, observed=obs, rng=rng_a)["x"]
    assert np.allclose(alie, base["x"] - 1.5 * 1.0)  # mean of the observed minus z standard deviations
    with pytest.raises(ValueError):
        apply_attack("bogus", base=base, half=half, rng=rng_a)


def test_testnet_picks_attackers_deterministically_and_refuses_bad_options():
    import subprocess
    import sys

    from fednode.node.config import ConfigError, NodeConfig
    from fednode.testnet.adversary import byzantine_indices
    a = byzantine_indices(10, 2, seed=0)
    assert a == byzantine_indices(10, 2, seed=0) and len(a) == 2 and a <= set(range(10))
    with pytest.raises(ValueError):
        byzantine_indices(3, 3, seed=0)
    with pytest.raises(ConfigError):
        NodeConfig(attack="bogus").validate()
    assert NodeConfig(attack="alie").validate().attack == "alie"
    for args in (["--nodes", "2", "--byzantine", "5"], ["--nodes", "3", "--validation-filter",
                                                         "--secure-aggregation", "retry"]):
        r = subprocess.run([sys.executable, "-m", "fednode", "testnet", *args], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("fednode: error:"), r.stderr
