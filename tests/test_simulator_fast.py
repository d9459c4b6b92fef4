"""The simulator's fast mode (unsigned envelope codec) runs the same round machine as signed mode.

By design a seeded run gives the same models in both modes: signatures are deterministic and
no timing or random draw depends on them. And fast mode still refuses, at the protocol level,
what the round machine refuses (round window, duplicates and replays, addressing, payloads).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fednode.gossip.config import RoundConfig
from fednode.gossip.events import MessageReceived, Rejected
from fednode.gossip.overlay import RandomRegularOverlay
from fednode.gossip.round import GossipNode
from fednode.security.arrays import ModelSpec
from fednode.security.codec import SIGNED, UNSIGNED
from fednode.security.envelope import (UNSIGNED_SIG, MsgType, VerifyContext, open_envelope, pack_envelope,
                                       seal)
from fednode.security.identity import AllowList
from fednode.security.replay import ReplayGuard
from fednode.testnet.simulator import NetworkConditions, Simulator, identity_from_seed

T0 = 1_800_000_000.0


def _run(signed: bool, **kw) -> Simulator:
    n, dim = 14, 6
    rng = np.random.default_rng(5)
    X0 = rng.normal(size=(n, dim))
    targets = rng.normal(size=(n, dim))
    cfg = RoundConfig(federation="fast", max_rounds=6, degree=4, t_hello=2.0, t_agg=1.0, t_commit=1.0,
                      **kw.pop("config_kw", {}))

    def step(i: int, model: dict) -> dict:
        return {k: v + 0.2 * (targets[i][: v.shape[0]] - v) for k, v in model.items()}

    sim = Simulator(n, config=cfg, initial_models=[{"w": X0[i].copy()} for i in range(n)], local_step=step,
                    conditions=NetworkConditions(loss=0.1, duplicate=0.05, reorder=0.1, jitter=0.02), seed=3,
                    train_time=0.1, crashes={4: 2.5}, late_joiners={13: 4.0}, signed=signed, **kw)
    sim.run(until=3600)
    return sim


def _digest(sim: Simulator) -> list[str]:
    return [f"{rec.machine.round}:{hashlib.sha256(rec.machine.model['w'].tobytes()).hexdigest()}"
            for rec in sim.nodes]


@pytest.mark.parametrize("config_kw", [{}, {"aggregator": "trimmed_mean"}])
def test_fast_mode_gives_the_signed_models_bit_for_bit(config_kw):
    signed, fast = _run(True, config_kw=dict(config_kw)), _run(False, config_kw=dict(config_kw))
    assert _digest(fast) == _digest(signed)
    assert [rec.round_ends for rec in fast.nodes] == [rec.round_ends for rec in signed.nodes]
    assert fast.messages_sent == signed.messages_sent and fast.messages_dropped == signed.messages_dropped
    # the lossy, duplicating network made the machines reject duplicates in both modes alike
    rejects = [dict(rec.machine.stats.rejects) for rec in signed.nodes]
    assert [dict(rec.machine.stats.rejects) for rec in fast.nodes] == rejects
    assert sum(r.get("duplicate", 0) + r.get("replay_nonce", 0) for r in rejects) > 0


def test_round_end_callback_sees_every_commit_without_keeping_models():
    seen: list[tuple[int, int, str]] = []
    sim = _run(False, keep_models=False, on_round_end=lambda r, i, label, m: seen.append((r, i, label)))
    assert not sim.models_by_round
    assert sorted(seen) == sorted((r, rec.index, label) for rec in sim.nodes for r, _, label in rec.round_ends)


def _pair(codec):
    ids = [identity_from_seed(bytes([i])) for i in range(2)]
    allow = AllowList()
    for ident in ids:
        allow.add(ident.public_key_bytes)
    spec = ModelSpec((("w", "<f8", (3,)),))
    cfg = RoundConfig(federation="t")
    a = GossipNode(ids[0], allow, spec, {"w": np.zeros(3)}, cfg, members=[ids[1].peer_id], codec=codec)
    a.start(T0)
    return ids, spec, a


def _contribution(ident, to: bytes, spec, *, round: int = 0, w=None, nonce: bytes | None = None, **kw) -> bytes:
    fields = dict(msg_type=MsgType.CONTRIBUTE, recipient=to, federation="t", round=round,
                  arrays={"w": np.full(3, 1.0) if w is None else w}, spec=spec, meta={"d": 1},
                  now_ms=int(T0 * 1000), nonce=nonce or bytes(16))
    fields.update(kw)
    return UNSIGNED.seal(ident, **fields)


def _reasons(machine: GossipNode, data: bytes) -> list[str]:
    return [x.reason for x in machine.handle(MessageReceived(data, T0 + 0.01)) if isinstance(x, Rejected)]


def test_fast_mode_still_rejects_what_the_round_machine_rejects():
    ids, spec, a = _pair(UNSIGNED)
    peer = ids[1]
    good = _contribution(peer, a.me, spec, nonce=b"\x01" * 16)
    assert _reasons(a, good) == []
    assert _reasons(a, good) == ["replay_nonce"]                      # the same bytes again
    assert _reasons(a, _contribution(peer, a.me, spec, nonce=b"\x02" * 16)) == ["duplicate"]
    assert _reasons(a, _contribution(peer, a.me, spec, round=7, nonce=b"\x03" * 16)) == ["future_round"]
    assert _reasons(a, _contribution(peer, b"\x09" * 32, spec, nonce=b"\x04" * 16)) == ["wrong_recipient"]
    assert _reasons(a, _contribution(peer, a.me, spec, federation="other", nonce=b"\x05" * 16)) == \
        ["wrong_federation"]
    assert _reasons(a, _contribution(peer, a.me, spec, attempt=1, w=np.array([np.nan, 0, 0]),
                                     nonce=b"\x06" * 16)) == ["non_finite"]
    assert _reasons(a, _contribution(peer, a.me, None, attempt=2, w=np.zeros(4), nonce=b"\x07" * 16)) == ["layout"]
    stranger = identity_from_seed(b"stranger")
    assert _reasons(a, _contribution(stranger, a.me, spec, nonce=b"\x08" * 16)) == ["unknown_sender"]
    assert _reasons(a, b"\x93\xc4") == ["malformed"]
    stale = _contribution(peer, a.me, spec, attempt=3, nonce=b"\x0a" * 16, now_ms=int((T0 + 3600) * 1000))
    assert _reasons(a, stale) == ["timestamp"]


def test_stale_round_is_rejected_in_fast_mode():
    ids, spec, a = _pair(UNSIGNED)
    a.round_number = 5  # as if the federation moved on: round 0 is now behind the window
    assert _reasons(a, _contribution(ids[1], a.me, spec, nonce=b"\x0b" * 16)) == ["stale_round"]


def test_unsigned_envelopes_never_pass_a_signed_receiver():
    ids, spec, a = _pair(SIGNED)
    raw = _contribution(ids[1], a.me, spec, nonce=b"\x0c" * 16)
    assert _reasons(a, raw) == ["bad_signature"]
    # and the unsigned form is the signed structure with a zero signature and zero payload hash
    signed = seal(ids[1], msg_type=MsgType.HELLO, recipient=b"", federation="t", round=0, meta={"d": 1},
                  now_ms=int(T0 * 1000), nonce=b"\x0d" * 16)
    unsigned = UNSIGNED.seal(ids[1], msg_type=MsgType.HELLO, recipient=b"", federation="t", round=0,
                             meta={"d": 1}, now_ms=int(T0 * 1000), nonce=b"\x0d" * 16)
    assert len(signed) == len(unsigned) and unsigned.endswith(UNSIGNED_SIG)
    ctx = VerifyContext(self_id=a.me, federation="t", allow_list=a.allow_list, current_round=0,
                        now_ms=int(T0 * 1000), replay=ReplayGuard())
    assert open_envelope(unsigned, ctx).reason == "bad_signature"


def test_envelope_join_is_msgpack_byte_for_byte():
    import msgpack
    for n in (0, 1, 255, 256, 65535, 65536, 80_000):
        payload = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
        for header in (b"", b"h" * 300):
            assert pack_envelope(header, payload, b"s" * 64) == msgpack.packb([header, payload, b"s" * 64],
                                                                               use_bin_type=True)


def test_unsigned_codec_refuses_secure_aggregation():
    ids, spec, _ = _pair(SIGNED)
    with pytest.raises(ValueError, match="secure aggregation"):
        GossipNode(ids[0], AllowList(), spec, {"w": np.zeros(3)}, RoundConfig(federation="t",
                   secure_aggregation="retry"), codec=UNSIGNED)


def _ring_definition(federation: str, degree: int, me: bytes, members, round: int) -> frozenset[bytes]:
    """The overlay as documented: each cycle sorts the view by SHA-256(key + id); neighbours on the ring."""
    view = set(members) | {me}
    if len(view) <= degree + 1:
        return frozenset(view - {me})
    out = set()
    for cycle in range(max(1, degree // 2)):
        key = hashlib.sha256(b"fednode/v1/overlay" + federation.encode() + round.to_bytes(8, "big")
                             + cycle.to_bytes(2, "big")).digest()
        ring = sorted(view, key=lambda m: hashlib.sha256(key + m).digest())
        pos = ring.index(me)
        out |= {ring[(pos + 1) % len(ring)], ring[(pos - 1) % len(ring)]}
    return frozenset(out - {me})


@pytest.mark.parametrize("degree", [2, 4, 5, 8])
def test_overlay_cache_matches_the_ring_definition_per_view(degree):
    ids = [identity_from_seed(bytes([i])).peer_id for i in range(40)]
    shared = RandomRegularOverlay("f", degree)
    rng = np.random.default_rng(degree)
    for _ in range(300):  # views that grow, shrink and differ per node, rounds out of order, me outside
        view = [p for p in ids if rng.random() < rng.random()]
        me = ids[int(rng.integers(len(ids)))]
        rnd = int(rng.integers(12))
        container = [set, frozenset, list][int(rng.integers(3))]
        assert shared.neighbours(me, container(view), rnd) == _ring_definition("f", degree, me, view, rnd)


def test_overlay_reused_views_match_the_ring_definition():
    """The machine's way: each node asks every round with the same frozen view until its membership
    changes (a new frozenset), views of newcomers grow the universe, and a mutable set changed in place
    between two asks is never taken for the view it was (only frozen views skip the subset check)."""
    ids = [identity_from_seed(bytes([i])).peer_id for i in range(30)]
    ov = RandomRegularOverlay("f", 4)
    rng = np.random.default_rng(7)
    views = {me: frozenset(ids[:12]) - {me} for me in ids[:12]}  # the first 12 know each other
    mutable = set(ids[:12])
    for rnd in range(40):
        if rnd % 5 == 4:  # someone learns of a newcomer, or forgets a peer: a new frozen view
            me = ids[int(rng.integers(12))]
            views[me] = views[me] ^ {ids[int(rng.integers(20))]} - {me}
        if rnd % 3 == 2:  # peers only this set ever holds
            mutable ^= {ids[int(rng.integers(20, 30))]}
        for me, view in views.items():
            assert ov.neighbours(me, view, rnd) == _ring_definition("f", 4, me, view, rnd), (rnd, me)
        for me in ids[12:15]:  # not in any view yet, and asking with one in place-mutated set
            assert ov.neighbours(me, mutable, rnd) == _ring_definition("f", 4, me, mutable, rnd), (rnd, me)


# ---------------------------------------------------------------- the in-process codec (LOCAL)

def _local_cases(peer, to: bytes):
    """Seal keywords covering the fast path (plain metas, arrays) and the general one (odd metas)."""
    ids = [identity_from_seed(bytes([50 + i])).peer_id for i in range(4)]
    two = ModelSpec((("b", "<f4", (2,)), ("w", "<f8", (3,))))
    base = dict(federation="t", round=4, now_ms=int(T0 * 1000))
    return [
        dict(base, msg_type=MsgType.HELLO, recipient=to, meta={"n": ids, "d": 4, "epk": b""}),
        dict(base, msg_type=MsgType.HELLO, recipient=b"", meta={"n": tuple(ids), "d": 4}),
        dict(base, msg_type=MsgType.COMMIT, recipient=to, attempt=2, meta={"u": ids, "d": 4, "w": []}),
        dict(base, msg_type=MsgType.CONTRIBUTE, recipient=to, arrays={"w": np.arange(3.0), "b": np.ones(2)},
             spec=two, meta={"d": 3}),
        dict(base, msg_type=MsgType.MODEL_REPLY, recipient=to, arrays={"w": np.zeros(0)},
             spec=ModelSpec((("w", "<f8", (0,)),)), meta={"r": 4}),
        dict(base, msg_type=MsgType.RETRY, recipient=to, meta={"u": set(ids), "d": np.int64(2), "x": "s",
                                                                   "nest": {"a": [1, [2.5, None]]}}),
        dict(base, msg_type=int(MsgType.STATUS), recipient=b"", meta=None),
    ]


def test_local_envelopes_are_what_unsigned_bytes_open_to():
    import msgpack

    from fednode.security.arrays import decode_arrays
    from fednode.security.codec import LOCAL, LocalEnvelope
    from fednode.security.header import _parse_header
    ids = [identity_from_seed(bytes([i])) for i in range(2)]
    for i, case in enumerate(_local_cases(ids[1], ids[0].peer_id)):
        nonce = bytes([i + 1]) * 16
        local = LOCAL.seal(ids[1], nonce=nonce, **case)
        raw = UNSIGNED.seal(ids[1], nonce=nonce, **case)
        assert isinstance(local, LocalEnvelope) and len(local) == len(raw)
        header_bytes, payload, _ = msgpack.unpackb(raw)
        assert local.header_bytes == header_bytes
        assert local.header == _parse_header(header_bytes)
        if case.get("arrays") is None:
            assert local.payload is None and payload == b""
        else:
            want = decode_arrays(payload, local.header.layout)
            got = local.payload.arrays
            assert list(got) == list(want) and local.payload.nbytes == len(payload)
            for k in want:
                assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
                assert got[k].tobytes() == want[k].tobytes() and not got[k].flags.writeable


def test_local_codec_rejects_what_unsigned_rejects():
    from fednode.security.codec import LOCAL
    outcomes = {}
    for codec in (UNSIGNED, LOCAL):
        ids, spec, a = _pair(codec)
        peer = ids[1]

        def c(**kw):
            return _reasons(a, codec.seal(peer, **dict(dict(
                msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=0, arrays={"w": np.full(3, 1.0)},
                spec=spec, meta={"d": 1}, now_ms=int(T0 * 1000)), **kw)))
        outcomes[codec] = [
            c(nonce=b"\x01" * 16), c(nonce=b"\x01" * 16), c(nonce=b"\x02" * 16), c(round=7, nonce=b"\x03" * 16),
            c(recipient=b"\x09" * 32, nonce=b"\x04" * 16), c(federation="o", nonce=b"\x05" * 16),
            c(attempt=1, arrays={"w": np.array([np.nan, 0, 0])}, nonce=b"\x06" * 16),
            c(attempt=1, arrays={"w": np.array([0, -np.inf, 0])}, nonce=b"\x0b" * 16),
            c(attempt=1, arrays={"w": np.array([0, 2.0**21, 0])}, nonce=b"\x0c" * 16),
            c(attempt=2, arrays={"w": np.zeros(4)}, spec=None, nonce=b"\x07" * 16),
            c(attempt=3, msg_type=MsgType.COMMIT, arrays={"w": np.zeros(3)}, nonce=b"\x0d" * 16),
            c(attempt=3, nonce=b"\x0a" * 16, now_ms=int((T0 + 3600) * 1000)),
            _reasons(a, codec.seal(identity_from_seed(b"stranger"), msg_type=MsgType.CONTRIBUTE, recipient=a.me,
                                   federation="t", round=0, arrays={"w": np.ones(3)}, spec=spec, meta={"d": 1},
                                   now_ms=int(T0 * 1000), nonce=b"\x08" * 16)),
        ]
    assert outcomes[LOCAL] == outcomes[UNSIGNED]
    assert outcomes[LOCAL] == [[], ["replay_nonce"], ["duplicate"], ["future_round"], ["wrong_recipient"],
                               ["wrong_federation"], ["non_finite"], ["non_finite"], ["magnitude"], ["layout"],
                               ["unexpected_payload"], ["timestamp"], ["unknown_sender"]]


def test_local_payload_is_shared_only_within_one_millisecond():
    from fednode.security.codec import LocalCodec
    codec, (a, b) = LocalCodec(), [identity_from_seed(bytes([i])) for i in range(2)]
    spec, half = ModelSpec((("w", "<f8", (3,)),)), {"w": np.arange(3.0)}

    def seal(now_ms: int, nonce: int, arrays=half):
        return codec.seal(a, msg_type=MsgType.CONTRIBUTE, recipient=b.peer_id, federation="t", round=0,
                          arrays=arrays, spec=spec, meta={"d": 1}, now_ms=now_ms, nonce=bytes([nonce]) * 16)
    first, second, later = seal(5, 1), seal(5, 2), seal(6, 3)
    assert first.payload is second.payload and later.payload is not first.payload
    assert seal(6, 4, {"w": half["w"].copy()}).payload is not later.payload   # other arrays: encoded anew
