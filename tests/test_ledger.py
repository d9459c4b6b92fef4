"""The privacy ledger: durable appends, reload, torn-record recovery, corruption refusal, budgets."""

from __future__ import annotations

import json

import pytest

from fednode.security.accountant import epsilon_of_releases
from fednode.security.ledger import LedgerError, PrivacyLedger, Release


def _rel(r: int, z: float = 1.1, q: float = 0.05, steps: int = 20) -> Release:
    return Release(round=r, mechanism="dpsgd", noise_multiplier=z, sampling_rate=q, steps=steps, time=1.0 + r)


def test_append_reload_and_epsilon_never_decreases(tmp_path):
    path = tmp_path / "privacy_ledger.jsonl"
    led = PrivacyLedger(path, 1e-5)
    assert led.epsilon() == 0.0
    seen = []
    for r in range(5):
        led.append(_rel(r))
        seen.append(led.epsilon())
        again = PrivacyLedger(path, 1e-5)  # a restart at any point reads exactly what was written
        assert again.releases == led.releases and again.epsilon() == seen[-1]
    assert seen == sorted(seen) and seen[0] > 0
    assert led.epsilon() == pytest.approx(epsilon_of_releases([(1.1, 0.05, 100)], 1e-5))
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_torn_last_record_counts_as_a_release(tmp_path):
    path = tmp_path / "l.jsonl"
    led = PrivacyLedger(path, 1e-5)
    for r in range(3):
        led.append(_rel(r))
    before = led.epsilon()
    with open(path, "ab") as fh:
        fh.write(b'{"v": 1, "round": 3, "mech')  # the crash hit mid-write
    again = PrivacyLedger(path, 1e-5)
    assert again.recovered_torn_record and len(again.releases) == 4
    assert again.epsilon() > before
    assert PrivacyLedger(path, 1e-5).releases == again.releases  # the recovery itself is durable


def test_a_tampered_record_in_the_middle_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    led = PrivacyLedger(path, 1e-5)
    for r in range(3):
        led.append(_rel(r))
    lines = path.read_bytes().split(b"\n")
    body = json.loads(lines[1])
    body["steps"] = 1  # someone tries to make the past cheaper
    lines[1] = json.dumps(body).encode()
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger(path, 1e-5)


def test_budget_check_is_exact_about_the_next_release(tmp_path):
    led = PrivacyLedger(tmp_path / "l.jsonl", 1e-5)
    budget = epsilon_of_releases([(1.1, 0.05, 20)] * 4, 1e-5) + 1e-9  # room for exactly four
    released = 0
    for r in range(10):
        nxt = _rel(r)
        if led.would_exceed(budget, nxt):
            break
        led.append(nxt)
        released += 1
    assert released == 4 and led.epsilon() <= budget
    assert led.epsilon(_rel(99)) > budget


def test_release_validation():
    with pytest.raises(ValueError):
        Release(0, "local", 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        Release(0, "bogus", 1.0, 1.0, 1)
