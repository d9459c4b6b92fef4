"""Real Zenoh sessions on loopback: discovery, delivery, isolation, liveliness, router, models, errors.

Network rule: every session here scouts on ``lo`` only (a random multicast port per test keeps
concurrent test runs and testnets apart) and listens on 127.0.0.1, or disables multicast and
connects to a 127.0.0.1 endpoint. Every session is closed in a fixture's finally.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

zenoh = pytest.importorskip("zenoh")

from fednode.gossip.transports import keyexpr  # noqa: E402
from fednode.gossip.transports.zenoh_transport import (  # noqa: E402
    TransportError,
    ZenohObserver,
    ZenohSettings,
    ZenohTransport,
    list_status,
)

pytestmark = pytest.mark.zenoh

ROOT = Path(__file__).resolve().parent.parent


def pid() -> bytes:
    return secrets.token_bytes(32)


def wait_until(pred, timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """Thread-safe record of one transport's callbacks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[bytes] = []
        self.joined: list[bytes] = []
        self.left: list[bytes] = []
        self.status: list[tuple[bytes, bytes]] = []

    def callbacks(self) -> dict:
        return {"on_message": self._msg, "on_peer_joined": self._joined, "on_peer_left": self._left}

    def _msg(self, data: bytes) -> None:
        with self.lock:
            self.messages.append(data)

    def _joined(self, peer: bytes) -> None:
        with self.lock:
            self.joined.append(peer)

    def _left(self, peer: bytes) -> None:
        with self.lock:
            self.left.append(peer)

    def on_status(self, peer: bytes, data: bytes) -> None:
        with self.lock:
            self.status.append((peer, data))


@pytest.fixture
def group() -> str:
    """A multicast group/port of this test's own, so parallel runs and testnets never cross-talk."""
    return f"224.0.0.224:{20000 + secrets.randbelow(40000)}"


@pytest.fixture
def fed() -> str:
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def make(group, fed):
    """Factory of started transports (loopback, this test's multicast group); closes them all."""
    made: list = []

    def _make(federation: str | None = None, *, start: bool = True, settings: ZenohSettings | None = None,
              **kw):
        rec = Recorder()
        if settings is None:
            settings = ZenohSettings.loopback(federation or fed, pid(), multicast_address=group, lease_ms=1000)
        extra = {k: kw.pop(k) for k in ("on_status", "model_provider") if k in kw}
        if extra.get("on_status") is True:
            extra["on_status"] = rec.on_status
        t = ZenohTransport(settings, **rec.callbacks(), **extra)
        made.append(t)
        if start:
            t.start()
        return t, rec

    try:
        yield _make
    finally:
        for t in made:
            t.close()


def discovered(pairs) -> bool:
    return all(t.live_peers() == {o.me for o in others} for t, others in pairs)


# ---------------------------------------------------------------------------- key expressions


def test_keyexpr_layout_and_validation():
    a = bytes(range(32))
    h = a.hex()
    assert keyexpr.alive("fed-1", a) == f"fednode/fed-1/alive/{h}"
    assert keyexpr.alive("fed-1") == "fednode/fed-1/alive/*"
    assert keyexpr.inbox("fed-1", a) == f"fednode/fed-1/msg/{h}"
    assert keyexpr.bcast("fed-1") == "fednode/fed-1/bcast"
    assert keyexpr.status("fed-1", a) == f"fednode/fed-1/status/{h}"
    assert keyexpr.model("f.x_y", a) == f"fednode/f.x_y/model/{h}"
    assert keyexpr.peer_from_key(keyexpr.status("f", a)) == a
    assert keyexpr.peer_from_key("fednode/f/status/" + h.upper()) is None
    assert keyexpr.peer_from_key("fednode/f/status/abc") is None
    for bad in ["", "a/b", "*", "**", "a*", "$x", "a?b", "a#b", "x" * 65, "é", None]:
        with pytest.raises(ValueError):
            keyexpr.root(bad)
    with pytest.raises(ValueError):
        keyexpr.inbox("f", b"short")
    # every key built from an accepted federation id is a valid Zenoh key expression
    for f in ["a", "A.b-c_d", ".", "..", "-", "x" * 64]:
        for k in [keyexpr.alive(f, a), keyexpr.alive(f), keyexpr.inbox(f, a), keyexpr.bcast(f),
                  keyexpr.status(f), keyexpr.model(f, a)]:
            zenoh.KeyExpr(k)


def test_settings_to_config_pins_loopback():
    s = ZenohSettings.loopback("fed", pid(), multicast_address="224.0.0.224:31111", lease_ms=1500)
    conf = s.to_zenoh_config()
    assert conf.get_json("scouting/multicast/interface") == '"lo"'
    assert json.loads(conf.get_json("listen/endpoints")) == ["tcp/127.0.0.1:0"]
    assert conf.get_json("scouting/multicast/address") == '"224.0.0.224:31111"'
    assert conf.get_json("transport/link/tx/lease") == "1500"
    assert conf.get_json("mode") == '"peer"'
    product = ZenohSettings("fed", pid())
    assert product.listen == ["tcp/0.0.0.0:0"] and product.multicast_interface == "auto"


@pytest.mark.parametrize("kw, match", [
    ({"federation": "a/b"}, "federation id"),
    ({"federation": "*"}, "federation id"),
    ({"peer_id": b"x"}, "peer id"),
    ({"mode": "relay"}, "mode"),
    ({"listen": ["bogus"]}, "malformed listen endpoint 'bogus'"),
    ({"listen": ["tcp/127.0.0.1"]}, "malformed listen endpoint"),
    ({"listen": ["tcp/127.0.0.1:99999"]}, "port of 0-65535"),
    ({"connect": ["127.0.0.1:7447"]}, "malformed connect endpoint"),
    ({"listen": "tcp/127.0.0.1:0"}, "lists of endpoints"),
    ({"multicast_address": "10.0.0.1:7446"}, "multicast group"),
    ({"multicast_address": "224.0.0.224"}, "multicast group"),
    ({"multicast_interface": "nosuchif0"}, "does not exist"),
    ({"lease_ms": 5}, "lease_ms"),
    ({"mode": "client", "multicast_scouting": False}, "needs a router"),
])
def test_settings_reject_bad_values_in_one_line(kw, match):
    args = {"federation": "fed", "peer_id": pid(), **kw}
    with pytest.raises(TransportError, match=match) as info:
        ZenohSettings.loopback(**args)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- discovery and delivery


def test_three_peers_discover_by_multicast_on_lo_and_deliver_exactly(make):
    t0 = time.monotonic()
    (a, ra), (b, rb), (c, rc) = make(), make(), make()
    assert wait_until(lambda: discovered([(a, [b, c]), (b, [a, c]), (c, [a, b])]), timeout=5.0)
    took = time.monotonic() - t0
    assert took < 5.0
    for t, rec in [(a, ra), (b, rb), (c, rc)]:
        assert wait_until(lambda rec=rec: len(rec.joined) == 2, timeout=2.0)
        assert set(rec.joined) == t.live_peers() and t.me not in rec.joined
    # unicast: to B only
    a.send(b.me, b"a->b")
    c.send(a.me, b"c->a")
    assert wait_until(lambda: rb.messages == [b"a->b"] and ra.messages == [b"c->a"], timeout=3.0)
    # broadcast: to every other peer, never back to the sender
    b.broadcast(b"hello from b")
    assert wait_until(lambda: b"hello from b" in ra.messages and b"hello from b" in rc.messages, timeout=3.0)
    a.send(c.me, b"marker")  # ordered after everything above on the a->c link
    assert wait_until(lambda: b"marker" in rc.messages, timeout=3.0)
    time.sleep(0.2)
    assert rb.messages == [b"a->b"], "B received its own broadcast or a message for someone else"
    assert b"a->b" not in rc.messages and b"c->a" not in rb.messages
    assert sorted(rc.messages) == sorted([b"hello from b", b"marker"])
    assert a.messages_sent == 2 and a.bytes_sent == len(b"a->b") + len(b"marker")
    assert b.messages_received == 1 and b.bytes_received == len(b"a->b")
    assert a.callback_errors == b.callback_errors == c.callback_errors == 0


def test_two_federations_on_one_machine_never_deliver_to_each_other(make, fed):
    other = fed + "-other"
    (a1, r_a1), (b1, r_b1) = make(fed), make(fed)
    (a2, r_a2), (b2, r_b2) = make(other), make(other)
    assert wait_until(lambda: discovered([(a1, [b1]), (b1, [a1]), (a2, [b2]), (b2, [a2])]), timeout=5.0)
    # same multicast group: the four sessions do see each other at the Zenoh level
    assert wait_until(lambda: len(a1._session.info.peers_zid()) == 3, timeout=3.0)
    a1.broadcast(b"fed1 hello")
    a2.broadcast(b"fed2 hello")
    a1.send(b2.me, b"fed1 to b2's id")  # b2's id in the wrong federation: nobody subscribes
    a2.send(b1.me, b"fed2 to b1's id")
    a1.send(b1.me, b"fed1 unicast")
    a2.send(b2.me, b"fed2 unicast")
    assert wait_until(lambda: len(r_b1.messages) == 2 and len(r_b2.messages) == 2, timeout=3.0)
    time.sleep(0.3)
    assert sorted(r_b1.messages) == [b"fed1 hello", b"fed1 unicast"]
    assert sorted(r_b2.messages) == [b"fed2 hello", b"fed2 unicast"]
    assert r_a1.messages == [] and r_a2.messages == []
    assert set(r_a1.joined) == {b1.me} and set(r_a2.joined) == {b2.me}


def test_ten_megabyte_message_arrives_intact(make):
    (a, _), (b, rb) = make(), make()
    assert wait_until(lambda: discovered([(a, [b]), (b, [a])]), timeout=5.0)
    big = secrets.token_bytes(10 * 1024 * 1024)
    a.send(b.me, big)
    assert wait_until(lambda: len(rb.messages) == 1, timeout=10.0)
    assert rb.messages[0] == big and b.bytes_received == len(big)


def test_raising_callback_is_counted_and_delivery_goes_on(make):
    (a, _), (b, _) = make(), make()
    calls = []

    def flaky(data: bytes) -> None:
        calls.append(data)
        if data == b"boom":
            raise RuntimeError("callback bug")

    b._on_message = flaky
    assert wait_until(lambda: discovered([(a, [b]), (b, [a])]), timeout=5.0)
    a.send(b.me, b"boom")
    a.send(b.me, b"after")
    assert wait_until(lambda: calls == [b"boom", b"after"], timeout=3.0)
    assert b.callback_errors == 1


# ---------------------------------------------------------------------------- liveliness


def test_closing_a_transport_reports_peer_left_quickly(make):
    (a, ra), (b, rb), (c, _) = make(), make(), make()
    assert wait_until(lambda: discovered([(a, [b, c]), (b, [a, c]), (c, [a, b])]), timeout=5.0)
    t0 = time.monotonic()
    c.close()
    assert wait_until(lambda: ra.left == [c.me] and rb.left == [c.me], timeout=2.0)
    assert time.monotonic() - t0 < 1.0
    assert a.live_peers() == {b.me} and b.live_peers() == {a.me}
    c.close()  # idempotent
    c.send(a.me, b"after close")  # a no-op, not an error
    with pytest.raises(TransportError, match="closed"):
        c.start()


_CHILD = r"""
import select, sys
from fednode.gossip.transports.zenoh_transport import ZenohSettings, ZenohTransport
fed, group, peer = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
settings = ZenohSettings.loopback(fed, peer, multicast_address=group, lease_ms=1000)
with ZenohTransport(settings, on_message=lambda d: None, on_peer_joined=lambda p: None,
                    on_peer_left=lambda p: None):
    print("ready", flush=True)
    select.select([sys.stdin], [], [], 60)  # until the test closes stdin, at most 60 s
"""


@pytest.fixture
def child(fed, group):
    """Start a peer in a subprocess (the venv's python); killed by its PID on every path."""
    procs: list[subprocess.Popen] = []

    def _start(peer: bytes) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen([sys.executable, "-c", _CHILD, fed, group, peer.hex()], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
        procs.append(p)
        return p

    try:
        yield _start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL to this child's PID only
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()  # the child prints "ready" or dies (and the pipe closes)
    assert line.strip() == b"ready", proc.stderr.read().decode(errors="replace")[-2000:]


@pytest.mark.parametrize("sig, bound_s", [(signal.SIGKILL, 0.9), (signal.SIGSTOP, 3.0)], ids=["SIGKILL", "SIGSTOP"])
def test_killed_or_hung_subprocess_peer_is_reported_left_within_the_lease(make, child, sig, bound_s):
    """SIGKILL: the kernel closes the TCP links, so the token goes at once. SIGSTOP (hung process):
    only the lease (1 s here) notices."""
    (a, ra) = make()
    peer = pid()
    proc = child(peer)
    _wait_ready(proc)
    assert wait_until(lambda: peer in a.live_peers(), timeout=5.0)
    a.send(peer, b"x")  # the link is up and used
    t0 = time.monotonic()
    os.kill(proc.pid, sig)
    assert wait_until(lambda: ra.left == [peer], timeout=bound_s + 2.0)
    took = time.monotonic() - t0
    assert took < bound_s, f"peer left reported after {took:.2f} s"
    assert peer not in a.live_peers()


def test_a_hung_peer_does_not_hold_the_senders_other_messages(make, child):
    """A put to a peer that takes nothing blocks (Zenoh's blocking congestion control, up to its
    5 s wait_before_close); it must hold only that peer's queue, never the caller or other peers
    (a partition once stalled a group 15.7 s, one such put per neighbour across the cut)."""
    (a, _), (c, rc) = make(), make()
    peer = pid()
    proc = child(peer)
    _wait_ready(proc)
    assert wait_until(lambda: {peer, c.me} <= a.live_peers(), timeout=5.0)
    a.send(peer, b"x")
    os.kill(proc.pid, signal.SIGSTOP)
    big = bytes(100_000)
    worst = 0.0
    for _ in range(200):  # 20 MB: far more than the socket buffers and Zenoh's queue take
        t = time.monotonic()
        a.send(peer, big)
        worst = max(worst, time.monotonic() - t)
    t0 = time.monotonic()
    a.send(c.me, b"after")
    assert wait_until(lambda: b"after" in rc.messages, timeout=2.0)
    assert time.monotonic() - t0 < 1.0 and worst < 0.2, (time.monotonic() - t0, worst)


# ---------------------------------------------------------------------------- router


@pytest.mark.parametrize("mode", ["client", "peer"])
def test_join_through_a_router_without_multicast(make, fed, mode):
    port = free_port()
    ep = f"tcp/127.0.0.1:{port}"
    conf = zenoh.Config()
    conf.insert_json5("mode", '"router"')
    conf.insert_json5("listen/endpoints", json.dumps([ep]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    router = zenoh.open(conf)
    try:
        def settings() -> ZenohSettings:
            return ZenohSettings(fed, pid(), mode=mode, listen=["tcp/127.0.0.1:0"], connect=[ep],
                                 multicast_scouting=False, lease_ms=1000)

        (a, ra), (b, rb) = make(settings=settings()), make(settings=settings())
        assert wait_until(lambda: discovered([(a, [b]), (b, [a])]), timeout=5.0)
        a.send(b.me, b"via router")
        b.broadcast(b"bcast via router")
        assert wait_until(lambda: rb.messages == [b"via router"] and ra.messages == [b"bcast via router"],
                          timeout=3.0)
        b.close()
        assert wait_until(lambda: ra.left == [b.me], timeout=3.0)
    finally:
        router.close()


# ---------------------------------------------------------------------------- models and status


def test_fetch_model_returns_the_providers_bytes(make):
    model = secrets.token_bytes(1024 * 1024)
    (a, _) = make(model_provider=lambda: model)
    (b, _) = make()
    (c, _) = make(model_provider=lambda: None)  # no model yet: answers nothing
    assert wait_until(lambda: discovered([(a, [b, c]), (b, [a, c]), (c, [a, b])]), timeout=5.0)
    assert wait_until(lambda: b.fetch_model(a.me, timeout_s=1.0) == [model], timeout=3.0)
    t0 = time.monotonic()
    assert b.fetch_model(timeout_s=3.0) == [model]
    assert time.monotonic() - t0 < 2.0, "the query should end once every queryable answered"
    assert a.fetch_model() == []  # never its own model
    assert b.fetch_model(c.me, timeout_s=1.0) == []
    assert b.fetch_model(pid(), timeout_s=1.0) == []
    assert b.bytes_received >= 2 * len(model) and a.bytes_sent >= 2 * len(model)


def test_status_published_queried_and_observed(make, group, fed):
    (a, ra), (b, rb) = make(on_status=True), make(on_status=True)
    (c, _) = make()  # never publishes a status
    assert wait_until(lambda: discovered([(a, [b, c]), (b, [a, c])]), timeout=5.0)
    seen: list[tuple[bytes, bytes]] = []
    joined: list[bytes] = []
    obs_settings = ZenohSettings.loopback(fed, b"\0" * 32, multicast_address=group)
    with ZenohObserver(obs_settings, on_status=lambda p, d: seen.append((p, d)),
                       on_peer_joined=joined.append) as obs:
        assert wait_until(lambda: obs.live_peers() == {a.me, b.me, c.me}, timeout=3.0)
        a.publish_status(b"status a1")
        b.publish_status(b"status b1")
        assert wait_until(lambda: {(a.me, b"status a1"), (b.me, b"status b1")} <= set(seen), timeout=3.0)
        assert wait_until(lambda: (a.me, b"status a1") in rb.status and (b.me, b"status b1") in ra.status,
                          timeout=3.0)
        assert all(p != a.me for p, _ in ra.status)  # never its own status
        assert obs.snapshot(timeout_s=2.0) == {a.me: b"status a1", b.me: b"status b1"}
        # the observer holds no liveliness token: nodes never count it as a peer
        assert a.live_peers() == {b.me, c.me}
    a.publish_status(b"status a2")
    got = list_status(ZenohSettings.loopback(fed, b"\0" * 32, multicast_address=group), timeout_s=2.0)
    assert got == {a.me: b"status a2", b.me: b"status b1"}


# ---------------------------------------------------------------------------- errors


def test_port_in_use_is_one_clear_transport_error(make, fed, group):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        settings = ZenohSettings.loopback(fed, pid(), multicast_address=group, listen=[f"tcp/127.0.0.1:{port}"])
        with pytest.raises(TransportError, match=f"cannot listen on tcp/127.0.0.1:{port}: .*already in use"):
            settings.preflight()  # the same error without opening Zenoh
        t, _ = make(settings=settings, start=False)
        with pytest.raises(TransportError) as info:
            t.start()
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "already in use" in msg and "\n" not in msg and ".rs:" not in msg
    assert t.closed and t._session is None


def test_fixed_port_is_reusable_right_after_a_restart(make, fed, group):
    """A node restarted on its fixed port must not be refused because of its old, closing connections."""
    port = free_port()
    ep = f"tcp/127.0.0.1:{port}"
    first, _ = make(settings=ZenohSettings.loopback(fed, pid(), multicast_address=group, listen=[ep]))
    (other, r_other) = make()
    assert wait_until(lambda: first.me in other.live_peers(), timeout=5.0)
    first.close()
    assert wait_until(lambda: r_other.left == [first.me], timeout=3.0)
    again = ZenohSettings.loopback(fed, pid(), multicast_address=group, listen=[ep])
    again.preflight()
    second, _ = make(settings=again)
    assert wait_until(lambda: second.me in other.live_peers(), timeout=5.0)


def test_unreachable_router_and_unresolvable_host_are_transport_errors(make, fed):
    dead = f"tcp/127.0.0.1:{free_port()}"
    t, _ = make(settings=ZenohSettings(fed, pid(), mode="client", connect=[dead], multicast_scouting=False),
                start=False)
    with pytest.raises(TransportError, match="cannot reach any of the connect endpoints"):
        t.start()
    t2, _ = make(settings=ZenohSettings(fed, pid(), listen=["tcp/no-such-host.invalid:0"],
                                        multicast_scouting=False), start=False)
    with pytest.raises(TransportError, match="unresolvable endpoint"):
        t2.start()
