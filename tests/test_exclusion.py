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
        ex.dropped([A], r)
        assert ex.view({A, B}, r + 1) == {A, B}
    ex.dropped([A], 9)
    assert ex.view({A, B}, 10) == {B} and ex.view({A, B}, 14) == {B}
    assert ex.view({A, B}, 15) == {A, B}
    assert ex.stats.exclusions[A] == 1 and ex.stats.exclusion_reasons["filtered"] == 1


def test_drops_spread_wider_than_the_window_never_exclude():
    ex = _ex(filter_exclude_after=3, filter_window=10)
    for r in range(0, 100, 5):  # one drop every 5 rounds: at most 2 inside any 10
        ex.dropped([A], r)
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
        ex.dropped([A], r)
    assert ex.view({A}, 10) == {A}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="filter_window"):
        RoundConfig(federation="t", filter_window=0)
    with pytest.raises(ValueError, match="exclude_rounds"):
        RoundConfig(federation="t", exclude_rounds=-1)
