"""Overlay exclusion: proven liars and neighbours the validation filter keeps dropping."""

from __future__ import annotations

import pytest

from fednode.gossip.config import RoundConfig
from fednode.gossip.exclusion import Exclusions
from fednode.gossip.state import NodeStats

A, B = b"a" * 32, b"b" * 32


def _ex(**kw) -> Exclusions:
    return Exclusions(RoundConfig(federation="t", **kw), NodeStats())


def test_three_drops_inside_the_window_exclude_for_exclude_rounds():
    ex = _ex(exclude_rounds=5, filter_exclude_after=3, filter_window=10)
    for r in (1, 4):
        ex.suspected([A], r, "filtered")
        assert ex.view({A, B}, r + 1) == {A, B}
    ex.suspected([A], 9, "filtered")
    assert ex.view({A, B}, 10) == {B} and ex.view({A, B}, 14) == {B}
    assert ex.view({A, B}, 15) == {A, B}
    assert ex.stats.exclusions[A] == 1 and ex.stats.exclusion_reasons["filtered"] == 1


def test_drops_spread_wider_than_the_window_never_exclude():
    ex = _ex(filter_exclude_after=3, filter_window=10)
    for r in range(0, 100, 5):  # one drop every 5 rounds: at most 2 inside any 10
        ex.suspected([A], r, "filtered")
    assert ex.view({A}, 100) == {A} and not ex.stats.exclusions


def test_a_proof_excludes_at_once_and_extends_not_shortens():
    ex = _ex(exclude_rounds=20)
    ex.proven(A, 10)
    ex.proven(A, 3)  # a late-arriving older proof does not shorten it
    assert ex.until[A] == 30 and ex.stats.exclusions[A] == 1
    ex.proven(A, 12)
    assert ex.until[A] == 32 and ex.stats.exclusions[A] == 1


@pytest.mark.parametrize("kw", [dict(exclude_rounds=0), dict(filter_exclude_after=0)])
def test_zero_turns_the_filter_exclusion_off(kw):
    ex = _ex(**kw)
    for r in range(10):
        ex.suspected([A], r, "filtered")
    assert ex.view({A}, 10) == {A}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="filter_window"):
        RoundConfig(federation="t", filter_window=0)
    with pytest.raises(ValueError, match="exclude_rounds"):
        RoundConfig(federation="t", exclude_rounds=-1)


def test_far_drops_count_in_the_same_window_and_are_reported_as_far():
    ex = _ex(exclude_rounds=5, filter_exclude_after=3, filter_window=10)
    ex.suspected([A], 1, "far")
    ex.suspected([A], 2, "filtered")  # a filter drop and far ones share the window
    ex.suspected([A], 3, "far")
    assert ex.view({A, B}, 4) == {B}
    assert dict(ex.stats.exclusion_reasons) == {"far": 1}


def test_far_neighbours_are_those_beyond_ratio_times_tau():
    from fednode.aggregation import far_neighbours
    d = {B: 1.0, A: 2.5, b"c" * 32: 2.0}
    assert far_neighbours(d, 1.0, 2.0) == [A]             # 2.0 itself is not beyond
    assert far_neighbours(d, 0.0, 2.0) == []              # tau 0: everyone outside is clipped to nothing already
    assert far_neighbours(d, float("inf"), 2.0) == []


def test_mix_neighbours_reports_far_neighbours_only_for_the_clipped_rule():
    import numpy as np

    from fednode.gossip.mix import mix_neighbours
    own = {"w": np.zeros(4)}
    near = {bytes([i]) * 32: {"w": np.full(4, 0.1 * (1 + i % 2))} for i in range(3)}
    liar = b"z" * 32
    neighbours = {**near, liar: {"w": np.full(4, 5.0)}}
    weights = {p: 0.2 for p in neighbours}
    seen: list = []
    clipped = RoundConfig(federation="t", aggregator="clipped")
    out = mix_neighbours(clipped, own, neighbours, weights, None, seen.append)
    assert seen == [[liar]]
    assert np.all(out["w"] < 0.2)  # still mixed, clipped to tau: the liar moved x by at most w * tau
    seen.clear()
    mix_neighbours(RoundConfig(federation="t", aggregator="clipped", far_ratio=None), own, neighbours, weights, None,
                   seen.append)
    mix_neighbours(RoundConfig(federation="t"), own, neighbours, weights, None, seen.append)
    assert seen == []


def test_a_far_attacker_is_excluded_by_the_honest_nodes_under_the_clipped_rule():
    """Node 7 adds large noise to every contribution; with the clipped rule each honest node that
    finds it beyond 2 tau in 3 of 10 rounds takes it out of its overlay view ("far"). The teeth:
    with ``far_ratio=None`` nobody excludes it."""
    import numpy as np

    from fednode.node.byzantine import ByzantineInterceptor
    from tests.test_round import T0, _drive, _nodes

    def run(far_ratio):
        cfg = RoundConfig(federation="t", max_rounds=20, degree=3, t_hello=1.0, t_agg=1.0, t_commit=1.0,
                          aggregator="clipped", far_ratio=far_ratio)
        ids, allow, spec, machines = _nodes(8, cfg, dim=50)
        rng = np.random.default_rng(0)
        for m in machines:  # honest models close together, as after a common initialisation
            m.model = {"w": rng.normal(0.0, 0.01, 50)}
        liar = ByzantineInterceptor("gaussian", ids[7], allow, spec, scale=0.05)
        res = _drive(machines, lambda m, data: liar.rewrite(data) if m is machines[7] else data, T0 + 400)
        assert all(len(res["ends"][m.me]) == 20 for m in machines)
        bad = machines[7].me
        return [m.stats.exclusions.get(bad, 0) for m in machines[:7]], machines[:7]

    excluded, honest = run(2.0)
    assert sum(1 for e in excluded if e) >= 5
    assert all(set(m.stats.exclusion_reasons) <= {"far"} for m in honest)
    excluded_off, honest_off = run(None)
    assert not any(excluded_off) and not any(m.stats.exclusions for m in honest_off)


def test_far_ratio_must_exceed_one():
    with pytest.raises(ValueError, match="far_ratio"):
        RoundConfig(federation="t", far_ratio=1.0)
    assert RoundConfig(federation="t", far_ratio=None).far_ratio is None
