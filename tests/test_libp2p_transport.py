"""The libp2p transport on real hosts over loopback: discovery, delivery, limits, binding, failure detection.

Skipped when the optional extra is not installed (``pip install -e '.[libp2p]'``; CI installs it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("libp2p", reason="the libp2p extra is not installed (pip install -e '.[libp2p]')")

import trio  # noqa: E402

from fednode.gossip.transports import framing  # noqa: E402
from fednode.gossip.transports.framing import Kind  # noqa: E402
from fednode.gossip.transports.libp2p_streams import MEMBER_PROTOCOL, list_status  # noqa: E402
from fednode.gossip.transports.libp2p_transport import Libp2pSettings, Libp2pTransport, TransportError  # noqa: E402
from fednode.node.status import StatusVerifier, seal_status  # noqa: E402
from fednode.security.envelope import MsgType, seal  # noqa: E402
from fednode.security.identity import AllowList, Identity  # noqa: E402
from test_zenoh_transport import Recorder, free_port, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LEASE_MS = 1000


def envelope(sender: Identity, recipient: bytes = b"", size: int = 0) -> bytes:
    """A signed envelope from ``sender``; ``size`` bytes of float32 payload make it model-sized."""
    arrays = {"w": np.ones(size // 4, dtype="<f4")} if size else None
    return seal(sender, msg_type=MsgType.CONTRIBUTE, recipient=recipient, federation="fed", round=0,
                arrays=arrays, now_ms=int(time.time() * 1000))


def addr_of(t: Libp2pTransport) -> str:
    return f"{t.addrs[0]}/p2p/{t.libp2p_id}"


@pytest.fixture
def net():
    """Identities on one allow-list and a factory of started transports; closes them all."""
    class Net:
        def __init__(self) -> None:
            self.idents = [Identity.generate() for _ in range(4)]
            self.allow = AllowList()
            for i in self.idents:
                self.allow.add(i.public_key_bytes)
            self.made: list[Libp2pTransport] = []

        def make(self, k: int, *, bootstrap: list[str] = (), allow: AllowList | None = None,
                 start: bool = True, identity: Identity | None = None, **kw):
            rec = Recorder()
            extra = {key: kw.pop(key) for key in ("on_status", "model_provider") if key in kw}
            if extra.get("on_status") is True:
                extra["on_status"] = rec.on_status
            kw.setdefault("listen", ["/ip4/127.0.0.1/tcp/0"])
            settings = Libp2pSettings("fed", identity or self.idents[k], allow or self.allow,
                                      bootstrap=list(bootstrap), lease_ms=LEASE_MS, **kw)
            t = Libp2pTransport(settings, **rec.callbacks(), **extra)
            self.made.append(t)
            if start:
                t.start()
            return t, rec

    n = Net()
    try:
        yield n
    finally:
        for t in n.made:
            t.close()


def test_one_bootstrap_address_finds_everyone_and_delivers_exactly(net):
    a, ra = net.make(0)
    b, rb = net.make(1, bootstrap=[addr_of(a)])
    c, rc = net.make(2, bootstrap=[addr_of(a)])  # c never hears of b except by peer exchange
    ids = [i.peer_id for i in net.idents[:3]]
    assert wait_until(lambda: all(t.live_peers() == set(ids) - {t.me} for t in (a, b, c)), timeout=15)
    m1, m2 = envelope(net.idents[1], ids[2]), envelope(net.idents[1])
    b.send(ids[2], m1)
    b.broadcast(m2)
    assert wait_until(lambda: len(rc.messages) == 2 and len(ra.messages) == 1, timeout=5)
    assert sorted(rc.messages) == sorted([m1, m2]) and ra.messages == [m2] and rb.messages == []
    assert b.messages_sent == 3 and b.bytes_sent == len(m1) + 2 * len(m2)
    assert c.bytes_received == len(m1) + len(m2) and sorted(rc.joined) == sorted([ids[0], ids[1]])
    big = envelope(net.idents[0], ids[1], size=5 << 20)  # a model-sized payload on a direct stream
    a.send(ids[1], big)
    assert wait_until(lambda: big in rb.messages, timeout=20)


def test_forged_sender_on_an_admitted_connection_is_refused(net):
    a, ra = net.make(0)
    b, _ = net.make(1, bootstrap=[addr_of(a)])
    assert wait_until(lambda: a.live_peers() == {b.me}, timeout=10)
    forged = envelope(net.idents[2], a.me)  # signed by node 2, sent over node 1's connection
    b.send(a.me, forged)
    own = envelope(net.idents[1], a.me)
    b.send(a.me, own)
    assert wait_until(lambda: ra.messages == [own], timeout=5)
    assert a.refused.get("sender_mismatch") == 1 and forged not in ra.messages


def test_a_key_not_on_the_allow_list_is_refused(net):
    a, ra = net.make(0)
    stranger = Identity.generate()
    own_allow = AllowList()  # the stranger admits a; a does not admit the stranger
    own_allow.add(net.idents[0].public_key_bytes)
    own_allow.add(stranger.public_key_bytes)
    s, rs = net.make(-1, identity=stranger, allow=own_allow, bootstrap=[addr_of(a)])
    assert wait_until(lambda: a.refused.get("unknown_peer", 0) >= 1, timeout=10)
    time.sleep(0.5)
    assert a.live_peers() == set() and s.live_peers() == set() and ra.joined == []


def test_a_host_cannot_answer_for_another_nodes_peer_id(net):
    """Noise proves the key behind the dialled peer id: an address whose host holds another key is
    never joined, although that host would admit us."""
    a, _ = net.make(0)
    impostor, _ = net.make(2)
    forged_addr = f"{impostor.addrs[0]}/p2p/{a.libp2p_id}"  # a's peer id at the impostor's address
    b, rb = net.make(1, bootstrap=[forged_addr])
    time.sleep(2.0)
    assert b.live_peers() == set() and rb.joined == [] and impostor.live_peers() == set()


def test_oversize_and_truncated_frames_are_refused(net):
    a, ra = net.make(0, max_message_bytes=4096)
    b, _ = net.make(1, bootstrap=[addr_of(a)], max_message_bytes=1 << 20)
    assert wait_until(lambda: a.live_peers() == {b.me}, timeout=10)
    b.send(a.me, envelope(net.idents[1], a.me, size=8000))  # over a's limit: the stream is reset
    assert wait_until(lambda: a.refused.get("oversize") == 1, timeout=5)
    assert ra.messages == []
    b.send(a.me, envelope(net.idents[1], a.me, size=9 << 20))  # over b's own limit: never sent
    assert b.send_errors == 1

    async def truncated(host, lp_id: str) -> None:
        from libp2p.peer.id import ID
        stream = await host.new_stream(ID.from_base58(lp_id), [MEMBER_PROTOCOL])
        join = framing.pack_control({"f": "fed", "a": [], "s": False})
        await stream.write(framing.encode(Kind.JOIN, join, 1 << 20))
        await stream.write(framing.HEAD.pack(int(Kind.MSG), 100) + b"x" * 40)  # 40 of 100 bytes
        await trio.sleep(0.2)
        await stream.close()

    assert wait_until(lambda: a.live_peers() == {b.me}, timeout=10)  # b re-dialled after the reset
    b._call(truncated, b._host, a.libp2p_id)
    assert wait_until(lambda: a.refused.get("truncated") == 1, timeout=5)
    assert ra.messages == []


def test_status_and_model_queries(net):
    model = os.urandom(300_000)
    a, _ = net.make(0, model_provider=lambda: model)
    b, rb = net.make(1, bootstrap=[addr_of(a)], on_status=True)
    c, _ = net.make(2, bootstrap=[addr_of(a)])
    assert wait_until(lambda: len(a.live_peers()) == 2 and len(c.live_peers()) == 2, timeout=15)
    assert b.fetch_model(a.me, timeout_s=5) == [model] and c.fetch_model(timeout_s=5) == [model]
    statuses = {t.me: seal_status(net.idents[k], "fed", 4, {"round": 4, "short": str(k)})
                for k, t in enumerate((a, b, c))}
    for t in (a, b, c):
        t.publish_status(statuses[t.me])
    assert wait_until(lambda: {p for p, _ in rb.status} == {a.me, c.me}, timeout=5)  # b asked for statuses
    got = list_status([addr_of(a)], timeout_s=5)
    assert got == statuses
    verifier = StatusVerifier("fed", net.allow)
    assert all(verifier.verify(data).meta["round"] == 4 for data in got.values())


def test_port_in_use_is_one_clear_error_and_close_is_idempotent(net):
    port = free_port()
    a, _ = net.make(0, listen=[f"/ip4/127.0.0.1/tcp/{port}"])
    threads = {t.name for t in __import__("threading").enumerate()}
    b, _ = net.make(1, listen=[f"/ip4/127.0.0.1/tcp/{port}"], start=False)
    with pytest.raises(TransportError, match="in use"):
        b.settings.preflight()
    with pytest.raises(TransportError, match="in use"):
        b.start()
    assert {t.name for t in __import__("threading").enumerate()} <= threads  # its thread ended
    a.close()
    a.close()
    a.send(b.me, b"after close")  # a no-op
    assert a.closed and not a._thread.is_alive()


_CHILD = r"""
import select, sys
from fednode.gossip.transports.libp2p_transport import Libp2pSettings, Libp2pTransport
from fednode.security.identity import AllowList, Identity
ident, allow = Identity.load(sys.argv[1]), AllowList.from_file(sys.argv[2])
settings = Libp2pSettings("fed", ident, allow, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[sys.argv[3]],
                          lease_ms=int(sys.argv[4]))
with Libp2pTransport(settings, on_message=lambda d: None, on_peer_joined=lambda p: None,
                     on_peer_left=lambda p: None):
    print("ready", flush=True)
    select.select([sys.stdin], [], [], 60)  # until the test closes stdin, at most 60 s
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_killed_or_hung_peer_is_reported_left_within_the_lease(net, tmp_path, sig):
    """SIGKILL: the kernel closes the connection, noticed at once. SIGSTOP (hung): the heartbeats
    stop and the lease (1 s here) notices. Same lease, same bounds as the Zenoh path's test."""
    a, ra = net.make(0)
    child_ident = net.idents[3]
    child_ident.save(tmp_path / "id.pem")
    net.allow.to_file(tmp_path / "allow.txt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "id.pem"), str(tmp_path / "allow.txt"),
                             addr_of(a), str(LEASE_MS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"ready", proc.stderr.read().decode(errors="replace")[-2000:]
        peer = child_ident.peer_id
        assert wait_until(lambda: peer in a.live_peers(), timeout=10)
        a.send(peer, envelope(net.idents[0], peer))
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        assert wait_until(lambda: ra.left == [peer], timeout=LEASE_MS / 1000 + 3)
        took = time.monotonic() - t0
        bound = 0.9 if sig == signal.SIGKILL else 3.0  # the bounds test_zenoh_transport holds Zenoh to
        print(f"{signal.Signals(sig).name}: peer left reported after {took:.3f} s (lease {LEASE_MS} ms)")
        assert took < bound, f"peer left reported after {took:.2f} s"
        assert peer not in a.live_peers()
    finally:
        if proc.poll() is None:
            proc.kill()  # this child's PID only
        proc.wait(timeout=10)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
