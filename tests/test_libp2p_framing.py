"""The libp2p transport's pure parts: frames and their limits, the key binding, the membership view.

None of these need the optional libp2p extra (one test compares the peer-id derivation with
libp2p's own and skips without it).
"""

from __future__ import annotations

import os
import time

import pytest

from fednode.gossip.transports import binding, framing
from fednode.gossip.transports.framing import FrameDecoder, FrameError, Kind
from fednode.gossip.transports.libp2p_settings import Libp2pSettings, TransportError
from fednode.gossip.transports.membership import Membership
from fednode.security.envelope import MsgType, seal
from fednode.security.identity import AllowList, Identity


def drive(coro):
    """Run a coroutine that never suspends (reads from memory) to completion."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("coroutine suspended")


def memory_reader(data: bytes, step: int = 7):
    pos = 0

    async def read(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos:pos + min(n, step)]
        pos += len(chunk)
        return chunk
    return read


# ---------------------------------------------------------------------------- frames


def test_frames_round_trip_whole_and_byte_by_byte():
    frames = [(Kind.JOIN, framing.pack_control({"f": "fed", "a": []})), (Kind.MSG, os.urandom(1000)),
              (Kind.PING, b""), (Kind.MSG, b"x" * 70000)]
    wire = b"".join(framing.encode(k, p, 1 << 20) for k, p in frames)
    assert [(f.kind, f.payload) for f in FrameDecoder(1 << 20).feed(wire)] == frames
    dec, out = FrameDecoder(1 << 20), []
    for i in range(len(wire)):
        out += dec.feed(wire[i:i + 1])
    dec.finish()
    assert [(f.kind, f.payload) for f in out] == frames
    read = memory_reader(wire, step=4096)
    got = [drive(framing.read_frame(read, 1 << 20)) for _ in frames]
    assert [(f.kind, f.payload) for f in got] == frames
    assert drive(framing.read_frame(read, 1 << 20)) is None  # clean end between frames


def test_oversize_frame_is_refused_from_its_head_before_any_payload():
    head = framing.HEAD.pack(int(Kind.MSG), 1001)
    with pytest.raises(FrameError) as err:
        FrameDecoder(1000).feed(head)  # no payload fed at all: refused on the 5-byte head
    assert err.value.reason == "oversize"
    with pytest.raises(FrameError, match="oversize"):
        drive(framing.read_frame(memory_reader(head + b"x" * 1001), 1000))
    with pytest.raises(ValueError):
        framing.encode(Kind.MSG, b"x" * 1001, 1000)  # the sender never puts one on the wire
    assert len(framing.encode(Kind.MSG, b"x" * 1000, 1000)) == 1005  # the limit itself is fine
    # control frames have their own small bound whatever the message limit
    with pytest.raises(FrameError, match="oversize"):
        FrameDecoder(1 << 30).feed(framing.HEAD.pack(int(Kind.PEERS), framing.CONTROL_MAX_BYTES + 1))


def test_truncated_stream_is_refused_and_delivers_nothing():
    wire = framing.encode(Kind.MSG, b"a" * 100, 1000)
    dec = FrameDecoder(1000)
    assert dec.feed(wire[:60]) == [] and dec.pending == 60
    with pytest.raises(FrameError) as err:
        dec.finish()
    assert err.value.reason == "truncated"
    for cut in (3, 5, 60, len(wire) - 1):  # inside the head, right after it, inside the payload
        with pytest.raises(FrameError, match="truncated"):
            drive(framing.read_frame(memory_reader(wire[:cut]), 1000))


def test_unknown_kind_and_malformed_control_payloads_are_refused():
    with pytest.raises(FrameError, match="unknown_kind"):
        FrameDecoder(1000).feed(bytes([99, 0, 0, 0, 0]))
    for bad in (b"\xc1", b"\x93\x01\x02\x03", b"\xd4\x01\x00"):  # reserved byte, a list, an ext type
        with pytest.raises(FrameError, match="malformed"):
            framing.unpack_control(bad)
    with pytest.raises(FrameError, match="malformed"):
        framing.str_list(["a", 1])
    with pytest.raises(FrameError, match="malformed"):
        framing.str_list(["a"] * 65)


# ---------------------------------------------------------------------------- binding


def test_peer_ids_are_functions_of_the_public_key_and_map_back():
    ident, other = Identity.generate(), Identity.generate()
    lp = binding.libp2p_peer_id(ident.public_key_bytes)
    assert lp.startswith("12D3KooW") and lp == binding.libp2p_peer_id(ident.public_key_bytes)
    assert binding.public_key_of(lp) == ident.public_key_bytes
    allow = AllowList()
    allow.add(ident.public_key_bytes)
    assert binding.fednode_id_of(lp, allow) == ident.peer_id
    assert binding.fednode_id_of(binding.libp2p_peer_id(other.public_key_bytes), allow) is None  # not admitted
    assert binding.fednode_id_of(binding.libp2p_peer_id(other.public_key_bytes)) == other.peer_id
    for bad in ("", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", lp[:-1]):
        assert binding.public_key_of(bad) is None and binding.fednode_id_of(bad) is None


def test_peer_id_derivation_matches_libp2p():
    pytest.importorskip("libp2p", reason="the libp2p extra is not installed")
    from libp2p.peer.id import ID
    ident = Identity.generate()
    kp = binding.libp2p_key_pair(ident)
    assert kp.public_key.to_bytes() == ident.public_key_bytes
    assert ID.from_pubkey(kp.public_key).to_base58() == binding.libp2p_peer_id(ident.public_key_bytes)
    assert binding.public_key_of(ID.from_pubkey(kp.public_key).to_bytes()) == ident.public_key_bytes


def test_envelope_sender_is_read_without_trusting_anything():
    a, b = Identity.generate(), Identity.generate()
    env = seal(a, msg_type=MsgType.HELLO, recipient=b.peer_id, federation="fed", round=3,
               now_ms=int(time.time() * 1000))
    assert binding.envelope_sender(env) == a.peer_id
    for bad in (b"", b"\x90", env[:10], b"\x93\xc4\x01x\xc4\x00\xc4\x00", os.urandom(200)):
        assert binding.envelope_sender(bad) is None


def test_settings_reject_bad_addresses_and_unadmitted_bootstrap_in_one_line():
    ident, stranger = Identity.generate(), Identity.generate()
    allow = AllowList()
    allow.add(ident.public_key_bytes)
    ok = Libp2pSettings("fed", ident, allow, listen=["/ip4/127.0.0.1/tcp/0"])
    assert ok.lease_ms == 3000
    stranger_addr = f"/ip4/127.0.0.1/tcp/4001/p2p/{binding.libp2p_peer_id(stranger.public_key_bytes)}"
    for kw, match in [({"listen": ["tcp/127.0.0.1:0"]}, "malformed listen"),
                      ({"bootstrap": ["/ip4/127.0.0.1/tcp/4001"]}, "malformed bootstrap"),
                      ({"bootstrap": [stranger_addr]}, "not an Ed25519 key on the allow-list"),
                      ({"listen": "/ip4/127.0.0.1/tcp/0"}, "not a single string"),
                      ({"lease_ms": 5}, "lease_ms"), ({"federation": "a/b"}, "federation")]:
        args = {"federation": "fed", "identity": ident, "allow_list": allow, **kw}
        with pytest.raises(TransportError, match=match):
            Libp2pSettings(**args)


# ---------------------------------------------------------------------------- membership


def test_membership_needs_both_directions_and_ends_with_either():
    me, a, b = b"m" * 32, b"a" * 32, b"b" * 32
    m = Membership(me)
    assert m.learn(a, "lpA", ["/ip4/127.0.0.1/tcp/1"]) and not m.learn(a, "lpA", ["/ip4/127.0.0.1/tcp/1"])
    assert not m.learn(me, "lpM", ["/ip4/127.0.0.1/tcp/9"])  # never itself
    assert m.inbound_up(a) == [] and m.live() == set()
    assert m.outbound_up(a) == [("joined", a)] and m.live() == {a}
    assert m.inbound_up(a) == []  # a second inbound stream (two connections) changes nothing
    assert m.inbound_down(a) == [] and m.live() == {a}
    assert m.inbound_down(a) == [("left", a)] and m.live() == set()
    assert m.inbound_up(a) == [("joined", a)]
    assert m.outbound_down(a, now=0.0) == [("left", a)]
    assert m.inbound_up(b) == []  # unknown peers are not tracked until learned


def test_dial_backoff_grows_and_resets_on_success():
    m = Membership(b"m" * 32)
    a = b"a" * 32
    m.learn(a, "lpA", ["/ip4/127.0.0.1/tcp/1"])
    assert [p for p, _ in m.due_dials(0.0)] == [a]
    assert m.due_dials(0.0) == []  # being dialled
    delays = []
    now = 0.0
    for _ in range(6):
        m.dial_failed(a, now)
        delays.append(m.entry(a).next_dial - now)
        assert m.due_dials(now) == []
        now = m.entry(a).next_dial
        assert [p for p, _ in m.due_dials(now)] == [a]
    assert delays == sorted(delays) and delays[0] == 0.25 and delays[-1] == 4.0
    m.inbound_up(a)
    m.outbound_up(a)
    assert m.entry(a).backoff == 0.25 and m.exchange() == [("lpA", ["/ip4/127.0.0.1/tcp/1"])]
