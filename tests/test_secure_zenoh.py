"""Secure aggregation on real loopback Zenoh federations, seen by a passive eavesdropper.

A :class:`ZenohTap` subscribes to everything under ``fednode/<federation>/**`` and keeps every
envelope. From that capture the tests (1) decode every masked contribution and show it is uniform
on the ring and uncorrelated with its sender's model, and (2) recompute each aggregator's unmasked
ring sum from the captured contributions and revealed self-mask seeds of the attempt it used, and
compare its SHA-256 with the digest the aggregator logged: bit-exact agreement, also when a
contributor is SIGKILLed right after sending its first masked contribution of a round.

(2) also shows the limit PROTOCOL §2 states: whoever captures every link into an aggregator learns
its sum S_i (never a single model); run Zenoh over TLS on real networks.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict

import msgpack
import numpy as np
import pytest
from scipy.stats import chisquare

from fednode.gossip.config import RoundConfig
from fednode.gossip.secagg import ring_digest
from fednode.gossip.transports.zenoh_transport import ZenohSettings, ZenohTap
from fednode.node.checkpoint import load_checkpoint
from fednode.security.envelope import MsgType
from fednode.security.identity import Identity
from fednode.gossip.secagg import reconstruct_secret
from fednode.security.kdf import EpochKeys, mask_seed
from fednode.security.masking import apply_prg_terms, mask_partners, mask_sign
from fednode.security.shamir import threshold as shamir_threshold
from fednode.security.ring import decode
from tests.test_integration_zenoh import Federation

pytestmark = pytest.mark.zenoh

_DIGEST = re.compile(r"round (\d+): masked sum over (\S+) in attempt (\d+), ring digest ([0-9a-f]{64})")


class Capture:
    """Every envelope the tap saw, parsed without keys (what an eavesdropper can read)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict] = []

    def __call__(self, key: str, data: bytes) -> None:
        try:
            header_bytes, payload, _sig = msgpack.unpackb(data, raw=False)
            h = msgpack.unpackb(header_bytes, raw=False)
        except Exception:  # noqa: BLE001 - statuses and odd samples are not envelopes we study
            return
        item = {"type": h[1], "sender": h[2], "recipient": h[3], "round": h[5], "attempt": h[6], "meta": h[11],
                "payload": payload}
        with self.lock:
            self.items.append(item)

    def of(self, msg_type: MsgType) -> list[dict]:
        with self.lock:
            return [i for i in self.items if i["type"] == int(msg_type)]


def _run(tmp_path, name: str, n: int, rounds: int, *, secure: str, victim_env: dict | None = None):
    fed = Federation(tmp_path, name, n, rounds, secure_aggregation=secure, t_agg=2.0, max_retries=2)
    cap = Capture()
    tap = ZenohTap(ZenohSettings.loopback(fed.federation, b"\x07" * 32), cap)
    tap.start()
    try:
        time.sleep(0.3)
        for k in range(n):
            fed.start(k, **(victim_env if victim_env and k == n - 1 else {}))
        ok = fed.wait(lambda: all(fed.procs[k].poll() is not None for k in range(n)), 240)
        assert ok, fed.log(0)
    finally:
        fed.stop_all()
        tap.close()
    return fed, cap


def _digests(fed: Federation, k: int) -> dict[int, tuple[list[str], int, str]]:
    out = {}
    for m in _DIGEST.finditer((fed.dirs[k] / "node.log").read_text(errors="replace")):
        out[int(m.group(1))] = (m.group(2).split(","), int(m.group(3)), m.group(4))
    return out


def _recompute(cap: Capture, aggregator: bytes, rnd: int, attempt: int, federation: str = "",
               used: list[str] | None = None) -> tuple[np.ndarray, list[bytes]]:
    """The aggregator's unmasked ring sum, rebuilt from the wire alone (mode A: revealed self-mask
    seeds; mode B: self-mask seeds and dropped contributors' keys from t revealed Shamir shares)."""
    def here(c):
        return c["recipient"] == aggregator and c["round"] == rnd and c["attempt"] == attempt

    ys = {c["sender"]: np.frombuffer(c["payload"], dtype="<u8") for c in cap.of(MsgType.CONTRIBUTE) if here(c)}
    reveals = [r for r in cap.of(MsgType.REVEAL) if here(r)]
    if used is not None:  # the contributors the aggregator reports (a dropped one's y may be on the wire too)
        ys = {p: y for p, y in ys.items() if p.hex()[:len(used[0])] in used}
    total = np.zeros_like(next(iter(ys.values())))
    for y in ys.values():
        total = total + y  # uint64 wraps: ring addition
    terms = []
    if reveals and "b" in reveals[0]["meta"]:
        seeds = {r["sender"]: r["meta"]["b"] for r in reveals}
        assert set(ys) == set(seeds), "every contributor of the used attempt revealed its self-mask"
        terms = [(-1, s) for s in seeds.values()]
    else:
        relay = [m for m in cap.of(MsgType.RELAY) if m["sender"] == aggregator and m["round"] == rnd]
        u1 = relay[0]["meta"]["u1"]
        t = shamir_threshold(len([h for h in cap.of(MsgType.SETUP) if h["sender"] == aggregator
                                  and h["round"] == rnd][0]["meta"]["u"]))
        epk = {h["sender"]: h["meta"]["epk"] for h in cap.of(MsgType.HELLO)
               if h["recipient"] == aggregator and h["round"] == rnd}
        for j in sorted(ys):
            terms.append((-1, reconstruct_secret([{p: s for p, s in r["meta"]["bs"]}[j] for r in reveals], t)))
        for j in sorted(set(u1) - set(ys)):
            keys = EpochKeys.from_private_bytes(reconstruct_secret(
                [{p: s for p, s in r["meta"]["ks"]}[j] for r in reveals], t))
            for k in mask_partners(j, u1):
                if k in ys:
                    seed = mask_seed(keys.shared_secret(epk[k]), federation_id=federation, round=rnd, attempt=0,
                                     aggregator_id=aggregator, id_j=j, id_k=k)
                    terms.append((-mask_sign(k, j), seed))
    return apply_prg_terms(total, terms), sorted(ys)


def test_eavesdropper_sees_only_uniform_contributions_and_sums_match_bit_for_bit(tmp_path):
    n, rounds = 4, 4
    fed, cap = _run(tmp_path, "sa-eaves", n, rounds, secure="retry")
    contributions = cap.of(MsgType.CONTRIBUTE)
    assert len(contributions) >= n * (n - 1) * (rounds - 1)
    finals = {Identity.load(d / "identity.pem").peer_id: load_checkpoint(d / "checkpoint.fnck").model
              for d in fed.dirs}
    spec_names = sorted(next(iter(finals.values())))
    worst_p, worst_corr = 1.0, 0.0
    for c in contributions:
        y = np.frombuffer(c["payload"], dtype="<u8")
        counts = np.bincount((y >> np.uint64(56)).astype(np.int64), minlength=256)
        worst_p = min(worst_p, chisquare(counts).pvalue)
        model = np.concatenate([finals[c["sender"]][k].astype(np.float64).ravel() for k in spec_names])
        corr = abs(float(np.corrcoef(decode(y), model)[0, 1]))
        worst_corr = max(worst_corr, corr)
    assert worst_p > 1e-6, worst_p
    assert worst_corr < 0.05, worst_corr   # the sender's true model explains nothing of what is on the wire
    # no model in the clear anywhere on the wire
    assert not cap.of(MsgType.MODEL_REPLY) or all(not m["payload"] for m in cap.of(MsgType.MODEL_REPLY))
    checked = 0
    for d in fed.dirs:
        me = Identity.load(d / "identity.pem").peer_id
        for rnd, (_, attempt, digest) in _digests(fed, fed.dirs.index(d)).items():
            ring, _ = _recompute(cap, me, rnd, attempt)
            assert ring_digest(ring) == digest
            s = decode(ring)
            assert np.abs(s).max() <= RoundConfig(federation="x").max_abs  # masks cancelled exactly
            checked += 1
    assert checked >= n * (rounds - 1)


@pytest.mark.parametrize("mode", ["retry", "secagg+"])
def test_a_contributor_killed_after_masking_neither_stalls_nor_corrupts_the_round(tmp_path, mode):
    n, rounds, kill_round = 5 if mode == "retry" else 6, 5, 2
    name = f"sa-dropout-{mode.replace('+', 'p')}"
    fed, cap = _run(tmp_path, name, n, rounds, secure=mode,
                    victim_env={"FEDNODE_FAULT_KILL_AFTER_CONTRIBUTE": str(kill_round)})
    victim = Identity.load(fed.dirs[n - 1] / "identity.pem")
    assert "fault injection: SIGKILL" in fed.log(n - 1)
    victim_sent = [c for c in cap.of(MsgType.CONTRIBUTE) if c["sender"] == victim.peer_id and c["round"] == kill_round]
    assert len(victim_sent) >= 1  # it did mask and send before dying
    t_agg, a_max = 2.0, 2
    excluded = 0
    for k in range(n - 1):
        assert fed.procs[k].returncode == 0, fed.log(k)
        assert load_checkpoint(fed.dirs[k] / "checkpoint.fnck").round == rounds
        me = Identity.load(fed.dirs[k] / "identity.pem").peer_id
        digests = _digests(fed, k)
        assert kill_round in digests, fed.log(k)
        used, attempt, digest = digests[kill_round]
        if mode == "retry":  # its contribution is dangling everywhere: retried over the survivors
            assert victim.short_id not in used and len(used) == n - 2
        else:  # no retry: where its input arrived it counts (self-mask from shares), elsewhere its masks
            assert attempt == 0  # are cancelled with its key rebuilt from shares
            assert len(used) == n - 2 + (victim.short_id in used)
            excluded += victim.short_id not in used
        ring, contributors = _recompute(cap, me, kill_round, attempt, fed.federation, used)
        assert ring_digest(ring) == digest and (victim.peer_id in contributors) == (victim.short_id in used)
        assert np.abs(decode(ring)).max() <= RoundConfig(federation="x").max_abs
        hist = {h["round"]: h for h in fed.status(k)["history"]}
        assert hist[kill_round]["outcome"] == "commit"
    assert mode == "retry" or excluded >= 1
    # the round's aggregation phase stayed within (A_max + 1) * T_agg at every survivor
    aggregate_times = defaultdict(list)
    for k in range(n - 1):
        for m in re.finditer(r"round (\d+): averaged .* aggregate ([0-9.]+) commit",
                             (fed.dirs[k] / "node.log").read_text(errors="replace")):
            aggregate_times[int(m.group(1))].append(float(m.group(2)))
    assert aggregate_times[kill_round] and max(aggregate_times[kill_round]) <= (a_max + 1) * t_agg
