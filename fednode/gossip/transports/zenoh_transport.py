"""Zenoh transport: peer-mode sessions, scouting, liveliness membership, per-recipient delivery.

The only module of fednode (with the rest of ``gossip/transports/``) that imports zenoh. It
moves opaque bytes: every payload is a signed envelope verified by the state machine. The key
layout is in :mod:`fednode.gossip.transports.keyexpr`.

Discovery: multicast scouting on a configurable interface (``"lo"`` keeps it on this machine,
which every test and the testnet do) plus gossip scouting; ``connect`` endpoints reach peers or a
Zenoh router beyond one LAN (``mode="client"``). Membership: each node declares a liveliness
token ``alive/<peer>``; the others see it appear and disappear (a killed process within
milliseconds as its TCP links close; a hung one after the lease, default 3 s).

Callbacks run on Zenoh's threads: they only hand bytes to the caller's callbacks (which the node
runtime turns into queue puts), never raise, and never block for long. Every session is closed on
every path (``close()`` is idempotent; use the context manager).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zenoh

from fednode.gossip.transports import keyexpr

log = logging.getLogger("fednode.transport")


class TransportError(Exception):
    """The transport cannot start (bad endpoint, port in use, ...): one-line message."""


def _json5(value: object) -> str:
    return json.dumps(value)


@dataclass
class ZenohSettings:
    federation: str
    peer_id: bytes
    mode: str = "peer"
    listen: list[str] = field(default_factory=lambda: ["tcp/0.0.0.0:0"])
    connect: list[str] = field(default_factory=list)
    multicast_scouting: bool = True
    multicast_interface: str = "auto"
    multicast_address: str = "224.0.0.224:7446"
    gossip_scouting: bool = True
    lease_ms: int = 3000
    shared_memory: bool = False

    @classmethod
    def loopback(cls, federation: str, peer_id: bytes, **kw) -> "ZenohSettings":
        """Everything on this machine: scouting on ``lo``, listening on 127.0.0.1 only."""
        kw.setdefault("listen", ["tcp/127.0.0.1:0"])
        kw.setdefault("multicast_interface", "lo")
        return cls(federation=federation, peer_id=peer_id, **kw)

    def check(self) -> None:
        keyexpr.check_federation(self.federation)
        if self.mode not in ("peer", "client", "router"):
            raise TransportError(f"zenoh mode must be peer, client or router, not {self.mode!r}")
        for ep in [*self.listen, *self.connect]:
            if "/" not in ep or ":" not in ep.split("/", 1)[1]:
                raise TransportError(f"malformed endpoint {ep!r} (expected e.g. tcp/127.0.0.1:7447)")
        for ep in self.listen:
            proto, addr = ep.split("/", 1)
            host, _, port = addr.rpartition(":")
            host = host.strip("[]")
            if proto == "tcp" and port.isdigit() and int(port) != 0:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(fam, socket.SOCK_STREAM) as s:
                    try:
                        s.bind((host, int(port)))
                    except OSError as exc:
                        raise TransportError(f"cannot listen on {ep}: {exc.strerror or exc}") from None

    def to_zenoh_config(self) -> "zenoh.Config":
        conf = zenoh.Config()
        conf.insert_json5("mode", _json5(self.mode))
        conf.insert_json5("listen/endpoints", _json5(list(self.listen)))
        conf.insert_json5("connect/endpoints", _json5(list(self.connect)))
        conf.insert_json5("scouting/multicast/enabled", _json5(bool(self.multicast_scouting)))
        conf.insert_json5("scouting/multicast/interface", _json5(self.multicast_interface))
        conf.insert_json5("scouting/multicast/address", _json5(self.multicast_address))
        conf.insert_json5("scouting/gossip/enabled", _json5(bool(self.gossip_scouting)))
        conf.insert_json5("transport/link/tx/lease", _json5(int(self.lease_ms)))
        conf.insert_json5("transport/shared_memory/enabled", _json5(bool(self.shared_memory)))
        return conf


def open_session(settings: ZenohSettings) -> "zenoh.Session":
    settings.check()
    try:
        return zenoh.open(settings.to_zenoh_config())
    except Exception as exc:  # zenoh raises a generic ZError: make it one clear line
        raise TransportError(f"cannot open a Zenoh session ({settings.mode}, listen {settings.listen}, "
                             f"connect {settings.connect}): {exc}") from None


class ZenohTransport:
    """One node's link to its federation."""

    def __init__(self, settings: ZenohSettings, *, on_message: Callable[[bytes], None],
                 on_peer_joined: Callable[[bytes], None], on_peer_left: Callable[[bytes], None],
                 on_status: Callable[[bytes, bytes], None] | None = None,
                 model_provider: Callable[[], bytes | None] | None = None) -> None:
        self.settings = settings
        self.me = settings.peer_id
        self._on_message = on_message
        self._on_joined = on_peer_joined
        self._on_left = on_peer_left
        self._on_status = on_status
        self._lock = threading.Lock()
        self._live: set[bytes] = set()
        self._session = None
        self._declared: list = []
        self._last_status: bytes | None = None
        self._closed = False
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = 0
        self.callback_errors = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        fed = self.settings.federation
        self._session = open_session(self.settings)
        try:
            s = self._session
            self._declared.append(s.declare_subscriber(keyexpr.inbox(fed, self.me), self._message_cb))
            self._declared.append(s.declare_subscriber(keyexpr.bcast(fed), self._message_cb))
            self._declared.append(s.liveliness().declare_subscriber(keyexpr.alive(fed), self._alive_cb,
                                                                    history=True))
            if self._on_status is not None:
                self._declared.append(s.declare_subscriber(keyexpr.status(fed), self._status_cb))
            self._declared.append(s.declare_queryable(keyexpr.status(fed, self.me), self._status_query))
            self._declared.append(s.liveliness().declare_token(keyexpr.alive(fed, self.me)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            declared, self._declared = self._declared, []
            session, self._session = self._session, None
        for d in reversed(declared):
            try:
                d.undeclare()
            except Exception:
                pass
        if session is not None:
            try:
                session.close()
            except Exception:
                pass

    def __enter__(self) -> "ZenohTransport":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def _put(self, key: str, data: bytes) -> None:
        s = self._session
        if s is None:
            return
        s.put(key, data, congestion_control=zenoh.CongestionControl.BLOCK)
        with self._lock:
            self.bytes_sent += len(data)
            self.messages_sent += 1

    def send(self, peer_id: bytes, data: bytes) -> None:
        self._put(keyexpr.inbox(self.settings.federation, peer_id), data)

    def broadcast(self, data: bytes) -> None:
        self._put(keyexpr.bcast(self.settings.federation), data)

    def publish_status(self, data: bytes) -> None:
        self._last_status = data
        self._put(keyexpr.status(self.settings.federation, self.me), data)

    def fetch_model(self, peer_id: bytes | None = None, timeout_s: float = 3.0) -> list[bytes]:
        """Models travel as MODEL_REQUEST/MODEL_REPLY envelopes through the inboxes; kept for API parity."""
        return []

    def live_peers(self) -> set[bytes]:
        with self._lock:
            return set(self._live)

    # ------------------------------------------------------------------ callbacks (Zenoh threads)

    def _message_cb(self, sample) -> None:
        try:
            data = sample.payload.to_bytes()
            with self._lock:
                self.bytes_received += len(data)
                self.messages_received += 1
            self._on_message(data)
        except Exception:
            self.callback_errors += 1
            log.exception("message callback failed")

    def _alive_cb(self, sample) -> None:
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None or peer == self.me:
                return
            if sample.kind == zenoh.SampleKind.PUT:
                with self._lock:
                    new = peer not in self._live
                    self._live.add(peer)
                if new:
                    self._on_joined(peer)
            else:
                with self._lock:
                    gone = peer in self._live
                    self._live.discard(peer)
                if gone:
                    self._on_left(peer)
        except Exception:
            self.callback_errors += 1
            log.exception("liveliness callback failed")

    def _status_cb(self, sample) -> None:
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is not None and self._on_status is not None:
                self._on_status(peer, sample.payload.to_bytes())
        except Exception:
            self.callback_errors += 1
            log.exception("status callback failed")

    def _status_query(self, query) -> None:
        try:
            data = self._last_status
            if data is not None:
                query.reply(keyexpr.status(self.settings.federation, self.me), data)
        except Exception:
            self.callback_errors += 1


class ZenohObserver:
    """Read-only view of a federation (dashboards): status and liveliness, no token of its own."""

    def __init__(self, settings: ZenohSettings, *, on_status: Callable[[bytes, bytes], None],
                 on_peer_joined: Callable[[bytes], None], on_peer_left: Callable[[bytes], None]) -> None:
        self.settings = settings
        self._on_status, self._on_joined, self._on_left = on_status, on_peer_joined, on_peer_left
        self._session = None
        self._declared: list = []

    def start(self) -> None:
        fed = self.settings.federation
        self._session = open_session(self.settings)
        try:
            s = self._session
            self._declared.append(s.declare_subscriber(keyexpr.status(fed), self._status_cb))
            self._declared.append(s.liveliness().declare_subscriber(keyexpr.alive(fed), self._alive_cb,
                                                                    history=True))
        except BaseException:
            self.close()
            raise

    def snapshot(self, timeout_s: float = 2.0) -> dict[bytes, bytes]:
        """Ask every live peer for its last status (queryables)."""
        out: dict[bytes, bytes] = {}
        if self._session is None:
            return out
        for reply in self._session.get(keyexpr.status(self.settings.federation), timeout=timeout_s):
            try:
                ok = reply.ok
            except Exception:
                continue
            if ok is None:
                continue
            peer = keyexpr.peer_from_key(str(ok.key_expr))
            if peer is not None:
                out[peer] = ok.payload.to_bytes()
        return out

    def _status_cb(self, sample) -> None:
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is not None:
                self._on_status(peer, sample.payload.to_bytes())
        except Exception:
            log.exception("status callback failed")

    def _alive_cb(self, sample) -> None:
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None:
                return
            (self._on_joined if sample.kind == zenoh.SampleKind.PUT else self._on_left)(peer)
        except Exception:
            log.exception("liveliness callback failed")

    def close(self) -> None:
        declared, self._declared = self._declared, []
        for d in reversed(declared):
            try:
                d.undeclare()
            except Exception:
                pass
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception:
                pass

    def __enter__(self) -> "ZenohObserver":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_status(settings: ZenohSettings, timeout_s: float = 3.0) -> dict[bytes, bytes]:
    """One-shot `fednode status`: wait briefly for discovery, then query every live peer's last status."""
    obs = ZenohObserver(settings, on_status=lambda p, d: None, on_peer_joined=lambda p: None,
                        on_peer_left=lambda p: None)
    with obs:
        time.sleep(min(1.0, timeout_s / 3))  # let scouting find the peers
        return obs.snapshot(timeout_s=max(0.5, timeout_s * 2 / 3))
