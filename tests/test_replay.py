"""ReplayGuard TTL/LRU semantics and OffenderTracker bans."""

from __future__ import annotations

import pytest

from fednode.security.replay import OffenderTracker, ReplayGuard

A, B = b"a" * 32, b"b" * 32
N1, N2, N3 = b"1" * 16, b"2" * 16, b"3" * 16
K1, K2, K3 = (2, 5, 0, A), (2, 5, 1, A), (2, 6, 0, A)


def test_seen_does_not_record() -> None:
    g = ReplayGuard()
    assert g.seen(A, N1, K1, 0.0) is None
    assert g.seen(A, N1, K1, 0.0) is None
    assert len(g) == 0


def test_nonce_and_key() -> None:
    g = ReplayGuard(nonce_ttl_s=120.0)
    g.record(A, N1, K1, 10.0)
    assert g.seen(A, N1, K1, 10.0) == "replay_nonce"
    assert g.seen(A, N1, K2, 10.0) == "replay_nonce"  # same nonce, other key
    assert g.seen(A, N2, K1, 10.0) == "duplicate"  # fresh nonce, same (type, round, attempt, recipient)
    assert g.seen(A, N2, K2, 10.0) is None
    assert g.seen(B, N1, K1, 10.0) is None  # scoped per sender


def test_ttl_expiry() -> None:
    g = ReplayGuard(nonce_ttl_s=120.0)
    g.record(A, N1, K1, 0.0)
    assert g.seen(A, N1, K1, 119.999) == "replay_nonce"
    assert g.seen(A, N1, K1, 120.0) is None
    g.record(A, N2, K2, 500.0)  # recording prunes expired entries
    assert len(g) == 1


def test_rerecord_refreshes() -> None:
    g = ReplayGuard(nonce_ttl_s=10.0)
    g.record(A, N1, K1, 0.0)
    g.record(A, N1, K1, 8.0)
    assert g.seen(A, N1, K1, 15.0) == "replay_nonce"
    assert g.seen(A, N1, K1, 18.0) is None


def test_lru_bound_evicts_oldest() -> None:
    g = ReplayGuard(nonce_ttl_s=1000.0, max_entries=2)
    g.record(A, N1, K1, 0.0)
    g.record(A, N2, K2, 1.0)
    g.record(A, N3, K3, 2.0)
    assert len(g) == 2
    assert g.seen(A, N1, K1, 3.0) is None  # oldest evicted, from both caches
    assert g.seen(A, N2, (9,), 3.0) == "replay_nonce"
    assert g.seen(A, N3, (9,), 3.0) == "replay_nonce"
    assert g.seen(A, b"x" * 16, K2, 3.0) == "duplicate"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(nonce_ttl_s=0)
    with pytest.raises(ValueError):
        ReplayGuard(max_entries=0)
    with pytest.raises(ValueError):
        OffenderTracker(threshold=0)


def test_offender_ban_and_expiry() -> None:
    t = OffenderTracker(threshold=3, window_s=60.0, ban_s=300.0)
    assert not t.note(A, 0.0) and not t.note(A, 1.0)
    assert not t.is_banned(A, 1.0)
    assert t.note(A, 2.0)
    assert t.is_banned(A, 2.0) and t.is_banned(A, 301.9)
    assert not t.is_banned(B, 2.0)
    assert not t.is_banned(A, 302.0)


def test_offender_window_slides() -> None:
    t = OffenderTracker(threshold=3, window_s=60.0)
    t.note(A, 0.0)
    t.note(A, 30.0)
    assert not t.note(A, 61.0)  # the first one left the window
    assert t.offences(A, 61.0) == 2
    assert t.note(A, 62.0)


def test_offender_token_counts_once_per_window() -> None:
    t = OffenderTracker(threshold=3, window_s=60.0)
    for i in range(10):  # one bad message replayed many times
        assert not t.note(A, float(i), token=b"same")
    assert t.offences(A, 10.0) == 1 and not t.is_banned(A, 10.0)
    t.note(A, 11.0, token=b"other")
    assert t.note(A, 12.0, token=b"third")
    assert t.is_banned(A, 12.0)


def test_default_parameters() -> None:
    g, t = ReplayGuard(), OffenderTracker()
    assert (g.nonce_ttl_s, g.max_entries) == (120.0, 100_000)
    assert (t.threshold, t.window_s, t.ban_s) == (20, 60.0, 300.0)
