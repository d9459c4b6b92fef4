"""Differential privacy on real loopback federations: the ledger survives SIGKILL, budgets stop releases.

A passive :class:`ZenohTap` records every CONTRIBUTE on the wire; each one must be covered by a
record in its sender's privacy ledger (the ledger is fsynced before the release leaves).
"""

from __future__ import annotations

import signal
import time

import pytest

from fednode.gossip.transports.zenoh_transport import ZenohSettings, ZenohTap
from fednode.node.config import NodeConfig
from fednode.security.accountant import epsilon_of_releases
from fednode.security.envelope import MsgType
from fednode.security.identity import Identity
from fednode.security.ledger import PrivacyLedger
from tests.test_integration_zenoh import Federation
from tests.test_secure_zenoh import Capture

pytestmark = pytest.mark.zenoh


def _ledger(fed: Federation, k: int) -> PrivacyLedger:
    return PrivacyLedger(fed.dirs[k] / "privacy_ledger.jsonl", 1e-5)


def _set(fed: Federation, k: int, **kw) -> None:
    path = fed.dirs[k] / "config.toml"
    cfg = NodeConfig.from_sources(path, {})
    for key, value in kw.items():
        setattr(cfg, key, value)
    path.write_text(cfg.validate().to_toml())


def _released_rounds(cap: Capture, sender: bytes) -> set[int]:
    return {c["round"] for c in cap.of(MsgType.CONTRIBUTE) if c["sender"] == sender}


def _uncovered(wire_rounds: set[int], ledger_rounds: set[int], reuse: int = 2) -> set[int]:
    """Wire rounds with no ledger record at that round or up to ``reuse`` rounds before it.

    A node that falls up to rounds_ahead (2) rounds behind skips ahead and sends the noised update it
    already made (and recorded) for the round it left: the same release again, no new one.
    """
    return {r for r in wire_rounds if not any(r - k in ledger_rounds for k in range(reuse + 1))}


def test_sigkill_and_restart_never_lowers_epsilon_and_every_release_is_in_the_ledger(tmp_path):
    name = "dp-crash"
    fed = Federation(tmp_path, name, 3, rounds=60, dp="local", dp_noise_multiplier=2.0, dp_clip=1.0)
    cap = Capture()
    tap = ZenohTap(ZenohSettings.loopback(fed.federation, b"\x05" * 32), cap)
    tap.start()
    victim = 2
    eps_seen: list[float] = []
    try:
        for k in range(3):
            fed.start(k)

        def sample() -> float:
            e = fed.status(victim).get("epsilon")
            if e is not None:
                eps_seen.append(float(e))
            return eps_seen[-1] if eps_seen else 0.0

        assert fed.wait(lambda: sample() > 0 and fed.status(victim).get("round", 0) >= 4, 120), fed.log(victim)
        before_kill = _ledger(fed, victim).epsilon()
        fed.procs[victim].send_signal(signal.SIGKILL)
        fed.procs[victim].wait(timeout=10)
        after_kill = _ledger(fed, victim)  # what a restart will load
        assert after_kill.epsilon() >= before_kill
        time.sleep(1.0)
        fed.start(victim)
        assert fed.wait(lambda: (sample() or True) and all(fed.procs[k].poll() is not None for k in range(3)),
                        240), fed.log(victim)
        sample()
    finally:
        fed.stop_all()
        tap.close()
    assert "resuming from checkpoint" in (fed.dirs[victim] / "node.log").read_text()
    assert eps_seen == sorted(eps_seen), "epsilon went down"
    ledger = _ledger(fed, victim)
    assert ledger.epsilon() >= eps_seen[-1] >= before_kill
    log = (fed.dirs[victim] / "node.log").read_text()
    # after the restart it either trained on (new releases) or adopted a peer's model (the others were done)
    assert ledger.epsilon() > before_kill or "adopted the model" in log, log[-2000:]
    victim_id = Identity.load(fed.dirs[victim] / "identity.pem").peer_id
    assert _released_rounds(cap, victim_id)
    for k in range(3):  # every release any node made is in its ledger
        pid = Identity.load(fed.dirs[k] / "identity.pem").peer_id
        missing = _uncovered(_released_rounds(cap, pid), {r.round for r in _ledger(fed, k).releases})
        assert not missing, (k, sorted(missing))


def test_a_node_stops_releasing_exactly_when_the_next_release_would_exceed_its_budget(tmp_path):
    name = "dp-budget"
    z, allowed = 2.0, 3
    budget = epsilon_of_releases([(z, 1.0, 1)] * allowed, 1e-5) * (1 + 1e-6)
    fed = Federation(tmp_path, name, 4, rounds=8, dp="local", dp_noise_multiplier=z, dp_clip=1.0)
    frugal = 3
    _set(fed, frugal, dp_epsilon=budget)
    cap = Capture()
    tap = ZenohTap(ZenohSettings.loopback(fed.federation, b"\x06" * 32), cap)
    tap.start()
    try:
        for k in range(4):
            fed.start(k)
        assert fed.wait(lambda: all(fed.procs[k].poll() is not None for k in range(3)), 180), fed.log(0)
        assert fed.wait(lambda: fed.status(frugal).get("state") == "budget_exhausted", 30), fed.log(frugal)
    finally:
        fed.stop_all()
        tap.close()
    ledger = _ledger(fed, frugal)
    assert len(ledger.releases) == allowed
    assert ledger.epsilon() <= budget < ledger.epsilon(ledger.releases[-1])
    st = fed.status(frugal)
    assert st["state"] == "budget_exhausted" and st["epsilon"] == pytest.approx(ledger.epsilon())
    log = (fed.dirs[frugal] / "node.log").read_text()
    assert "privacy budget" in log and "stops sharing" in log
    frugal_id = Identity.load(fed.dirs[frugal] / "identity.pem").peer_id
    wire = _released_rounds(cap, frugal_id)
    assert wire and not _uncovered(wire, {r.round for r in ledger.releases})  # nothing beyond the 3 releases
    assert allowed - 1 <= max(wire) <= allowed + 1
    for k in range(3):  # the others went on to the end without it
        assert fed.status(k)["rounds_completed"] == 8
