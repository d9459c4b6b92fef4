"""Zenoh transport: peer-mode sessions, scouting, liveliness membership, per-recipient delivery.

With the rest of ``gossip/transports/`` this is the only part of fednode that imports zenoh. It
moves opaque bytes: every payload is a signed envelope that the state machine verifies. The key
layout is documented in :mod:`fednode.gossip.transports.keyexpr`.

Discovery
    Multicast scouting on a configurable interface and group (``interface="lo"`` keeps it on this
    machine, which every test and the testnet do; a distinct ``multicast_address`` per testnet or
    test keeps runs apart) plus gossip scouting, which gives a full mesh (Zenoh 1.x peers do not
    relay for each other). ``connect`` endpoints reach peers or a Zenoh router beyond one LAN;
    ``mode="client"`` joins through a router only.

Membership
    Each node declares a liveliness token ``alive/<peer>`` once it is ready to receive. The others
    see it appear (``on_peer_joined``) and disappear (``on_peer_left``): a closed or killed process
    within milliseconds (its TCP links close), a hung one or a cut link after ``lease_ms``. Zenoh
    aggregates tokens per key, so a node restarted under the same id while its old session still
    lingers is not reported as left. The own peer is never reported.

Status and models
    ``publish_status`` puts the signed status on ``status/<me>`` and keeps it; a queryable on the
    same key answers it, so :func:`list_status` (one-shot ``fednode status``) gets every live
    peer's last status with one query, and :class:`ZenohObserver` (dashboards) subscribes without
    a liveliness token of its own. With a ``model_provider``, a queryable on ``model/<me>`` serves
    the current signed model (late joiners call :meth:`ZenohTransport.fetch_model`).

Threads
    Callbacks run on Zenoh's threads: they hand bytes to the caller's callbacks (which the node
    runtime turns into queue puts), never raise (errors are logged and counted in
    ``callback_errors``) and must not block for long; ``model_provider`` must return cached bytes.
    Never call ``close()`` from inside a callback. ``send`` uses blocking congestion control: a
    hung receiver can hold a sender until its lease expires.

Every session is closed on every path: ``close()`` is idempotent, ``start()`` closes what it
opened when it fails, and both classes are context managers.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zenoh

from fednode.gossip.transports import keyexpr

log = logging.getLogger("fednode.transport")

_MODES = ("peer", "client", "router")
_IP_PROTOCOLS = ("tcp", "udp", "tls", "quic", "ws")
_OTHER_PROTOCOLS = ("unixsock-stream", "unixpipe", "vsock", "serial")
_ENDPOINT = re.compile(r"(?P<proto>[a-z0-9-]+)/(?P<addr>[^?#]+)(?P<rest>[?#].*)?")
_ZENOH_LOCATION = re.compile(r"\s+at\s+\S+\.rs:\d+\.?")


class TransportError(Exception):
    """The transport cannot start (bad settings or endpoint, port in use, no router): one-line message."""


# ---------------------------------------------------------------------------- settings


def _check_endpoint(ep: object, what: str) -> None:
    m = _ENDPOINT.fullmatch(ep) if isinstance(ep, str) else None
    if m is None or m["proto"] not in _IP_PROTOCOLS + _OTHER_PROTOCOLS:
        raise TransportError(f"malformed {what} endpoint {ep!r} (expected e.g. tcp/127.0.0.1:7447)")
    if m["proto"] in _IP_PROTOCOLS:
        host, sep, port = m["addr"].rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise TransportError(f"malformed {what} endpoint {ep!r}: expected {m['proto']}/<host>:<port> "
                                 f"with a port of 0-65535")


def _check_multicast_address(addr: object) -> None:
    host, sep, port = addr.rpartition(":") if isinstance(addr, str) else ("", "", "")
    try:
        first = int(host.split(".")[0]) if sep else 0
        socket.inet_aton(host)
    except (ValueError, OSError):
        first = 0
    if not (224 <= first <= 239 and port.isdigit() and 0 < int(port) <= 65535):
        raise TransportError(f"multicast address {addr!r} must be an IPv4 multicast group and port, "
                             f"e.g. 224.0.0.224:7446")


@dataclass
class ZenohSettings:
    """How one node joins the Zenoh network of its federation.

    The product default listens on every interface and scouts on the LAN (``multicast_interface
    ="auto"``); :meth:`loopback` keeps everything on this machine (tests, testnet).
    """

    federation: str
    peer_id: bytes
    mode: str = "peer"  # "client" joins through a router given in ``connect``
    listen: list[str] = field(default_factory=lambda: ["tcp/0.0.0.0:0"])
    connect: list[str] = field(default_factory=list)
    multicast_scouting: bool = True
    multicast_interface: str = "auto"
    multicast_address: str = "224.0.0.224:7446"
    gossip_scouting: bool = True
    lease_ms: int = 3000
    # Zenoh's own default is on. Off here: it does nothing between hosts, a one-host testnet then
    # exercises the real TCP path, and SIGKILLed peers can leave segments in /dev/shm. Between two
    # processes on one host it cuts a 1 MB message from ~2.5 ms to ~0.25 ms one-way (10 MB: ~25 to ~11 ms).
    shared_memory: bool = False

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def loopback(cls, federation: str, peer_id: bytes, **kw) -> "ZenohSettings":
        """Everything on this machine: multicast scouting on ``lo`` only, listening on 127.0.0.1."""
        kw.setdefault("listen", ["tcp/127.0.0.1:0"])
        kw.setdefault("multicast_interface", "lo")
        return cls(federation=federation, peer_id=peer_id, **kw)

    def check(self) -> None:
        """Raise TransportError with one clear line for any invalid field."""
        try:
            keyexpr.check_federation(self.federation)
            keyexpr.peer_hex(self.peer_id)
        except ValueError as exc:
            raise TransportError(str(exc)) from None
        if self.mode not in _MODES:
            raise TransportError(f"zenoh mode must be one of {', '.join(_MODES)}, not {self.mode!r}")
        if isinstance(self.listen, str) or isinstance(self.connect, str):
            raise TransportError("listen and connect are lists of endpoints, not single strings")
        for ep in self.listen:
            _check_endpoint(ep, "listen")
        for ep in self.connect:
            _check_endpoint(ep, "connect")
        if self.mode == "client" and not self.connect and not self.multicast_scouting:
            raise TransportError("client mode needs a router: give a connect endpoint or enable multicast scouting")
        if self.multicast_scouting:
            _check_multicast_address(self.multicast_address)
            if self.multicast_interface != "auto":
                names = [name for _, name in socket.if_nameindex()]
                if self.multicast_interface not in names:
                    raise TransportError(f"multicast interface {self.multicast_interface!r} does not exist here "
                                         f"(interfaces: {', '.join(names)}; or 'auto')")
        if not isinstance(self.lease_ms, int) or not 100 <= self.lease_ms <= 600_000:
            raise TransportError(f"lease_ms must be an integer of 100-600000, not {self.lease_ms!r}")

    def preflight(self) -> None:
        """check(), then make sure every fixed TCP listen port is free, without opening Zenoh.

        For callers that want the port-in-use error before slow work (the CLI before the trainer's
        warm-up); ``start()`` reports the same error anyway. The probe socket sets SO_REUSEADDR,
        as Zenoh's listener does, so a port that only has closing connections is not refused.
        """
        self.check()
        if self.mode == "client":
            return
        for ep in self.listen:
            m = _ENDPOINT.fullmatch(ep)
            host, _, port = m["addr"].rpartition(":")
            host = host.strip("[]")
            if m["proto"] != "tcp" or int(port) == 0:
                continue
            try:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                socket.inet_pton(family, host)
            except OSError:
                continue  # a host name: leave it to Zenoh
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, int(port)))
                except OSError as exc:
                    raise TransportError(_explain(exc, self, endpoint=ep)) from None

    def to_zenoh_config(self) -> "zenoh.Config":
        self.check()
        conf = zenoh.Config()

        def put(key: str, value: object) -> None:
            conf.insert_json5(key, json.dumps(value))

        put("mode", self.mode)
        put("listen/endpoints", list(self.listen) if self.mode != "client" else [])
        put("connect/endpoints", list(self.connect))
        put("scouting/multicast/enabled", bool(self.multicast_scouting))
        if self.multicast_scouting:
            put("scouting/multicast/interface", self.multicast_interface)
            put("scouting/multicast/address", self.multicast_address)
        put("scouting/gossip/enabled", bool(self.gossip_scouting))
        put("transport/link/tx/lease", int(self.lease_ms))
        put("transport/shared_memory/enabled", bool(self.shared_memory))
        return conf


def _explain(exc: BaseException, settings: ZenohSettings, endpoint: str | None = None) -> str:
    """One line for a Zenoh (or socket) error; Zenoh's errors name Rust source locations and little else."""
    msg = _ZENOH_LOCATION.sub("", str(exc)).strip()
    m = re.search(r"bound to (\S+?):\s*\[", msg)
    ep = endpoint or (m[1] if m else ", ".join(settings.listen))
    if "Address already in use" in msg:
        return f"cannot listen on {ep}: the port is already in use (another node or program has it; " \
               f"choose another port, or port 0 for any free one)"
    if "Cannot assign requested address" in msg:
        return f"cannot listen on {ep}: that address is not one of this machine's"
    if "Unable to connect to any of" in msg:
        return f"cannot reach any of the connect endpoints {', '.join(settings.connect)} (is the router up?)"
    if settings.mode == "client" and msg.startswith("timeout"):
        return "client mode: no Zenoh router found by multicast scouting (give a connect endpoint)"
    if "invalid socket address" in msg or "invalid port" in msg or "lookup address" in msg \
            or "Endpoints must be" in msg:
        return f"malformed or unresolvable endpoint in listen {settings.listen} / connect {settings.connect}: {msg}"
    return f"cannot open a Zenoh session (mode {settings.mode}, listen {settings.listen}, " \
           f"connect {settings.connect}): {msg}"


def open_session(settings: ZenohSettings) -> "zenoh.Session":
    """A Zenoh session for ``settings``, or TransportError with one clear line."""
    conf = settings.to_zenoh_config()
    try:
        return zenoh.open(conf)
    except Exception as exc:  # zenoh raises a generic ZError
        raise TransportError(_explain(exc, settings)) from None


def _close_all(declared: list, session) -> None:
    for d in reversed(declared):
        try:
            d.undeclare()
        except Exception:  # noqa: BLE001 - closing must go on whatever one entity says
            log.debug("undeclare failed", exc_info=True)
    if session is not None:
        try:
            session.close()
        except Exception:  # noqa: BLE001
            log.debug("session close failed", exc_info=True)


def _replies(session, key: str, timeout_s: float, *, remote_only: bool) -> list[tuple[str, bytes]]:
    """(key, payload) of every ok reply to a query on ``key`` within ``timeout_s``."""
    kw = {"allowed_destination": zenoh.Locality.REMOTE} if remote_only else {}
    out = []
    handler = session.get(key, target=zenoh.QueryTarget.ALL, consolidation=zenoh.ConsolidationMode.NONE,
                          timeout=max(0.05, timeout_s), **kw)
    for reply in handler:  # ends when every queryable answered, or at the timeout
        ok = reply.ok
        if ok is not None:
            out.append((str(ok.key_expr), ok.payload.to_bytes()))
    return out


# ---------------------------------------------------------------------------- transport


class ZenohTransport:
    """One node's link to its federation (the surface of ``MemoryTransport``)."""

    def __init__(self, settings: ZenohSettings, *, on_message: Callable[[bytes], None],
                 on_peer_joined: Callable[[bytes], None], on_peer_left: Callable[[bytes], None],
                 on_status: Callable[[bytes, bytes], None] | None = None,
                 model_provider: Callable[[], bytes | None] | None = None) -> None:
        settings.check()
        self.settings = settings
        self.me = bytes(settings.peer_id)
        self._fed = settings.federation
        self._on_message = on_message
        self._on_joined = on_peer_joined
        self._on_left = on_peer_left
        self._on_status = on_status
        self._model_provider = model_provider
        self._lock = threading.Lock()
        self._live: set[bytes] = set()
        self._session = None
        self._declared: list = []
        self._last_status: bytes | None = None
        self._started = False
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.send_errors = 0
        self.callback_errors = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the session; subscribe (own inbox, broadcast, liveliness with history, status);
        declare the status and model queryables; declare the liveliness token last, once ready."""
        with self._lock:
            if self._closed:
                raise TransportError("this transport was closed; create a new one")
            if self._started:
                return
            self._started = True
        try:
            session = open_session(self.settings)
        except BaseException:
            self.close()
            raise
        with self._lock:
            closed_meanwhile = self._closed
            if not closed_meanwhile:
                self._session = session
        if closed_meanwhile:  # close() ran while the session was opening
            _close_all([], session)
            raise TransportError("the transport was closed while starting")
        fed, me = self._fed, self.me
        try:
            declare = self._declared.append
            declare(session.declare_subscriber(keyexpr.inbox(fed, me), self._message_cb))
            declare(session.declare_subscriber(keyexpr.bcast(fed), self._message_cb,
                                               allowed_origin=zenoh.Locality.REMOTE))
            if self._on_status is not None:
                declare(session.declare_subscriber(keyexpr.status(fed), self._status_cb,
                                                   allowed_origin=zenoh.Locality.REMOTE))
            declare(session.declare_queryable(keyexpr.status(fed, me), self._status_query))
            if self._model_provider is not None:
                declare(session.declare_queryable(keyexpr.model(fed, me), self._model_query))
            declare(session.liveliness().declare_subscriber(keyexpr.alive(fed), self._alive_cb, history=True))
            declare(session.liveliness().declare_token(keyexpr.alive(fed, me)))
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and not isinstance(exc, TransportError):
                raise TransportError(_explain(exc, self.settings)) from None
            raise

    def close(self) -> None:
        """Undeclare everything (the token first: the others see this node leave) and close the session."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            declared, self._declared = self._declared, []
            session, self._session = self._session, None
        _close_all(declared, session)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ZenohTransport":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def _count_out(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
            self.messages_sent += 1

    def _count_in(self, n: int) -> None:
        with self._lock:
            self.bytes_received += n
            self.messages_received += 1

    def _put(self, key: str, data: bytes, **kw) -> None:
        session = self._session
        if session is None or self._closed:
            log.debug("put on %s dropped: transport not running", key)
            return
        try:
            session.put(key, data, **kw)
        except Exception as exc:  # noqa: BLE001 - a closing session: the protocol tolerates loss
            with self._lock:
                self.send_errors += 1
            log.warning("put on %s failed: %s", key, _ZENOH_LOCATION.sub("", str(exc)))
            return
        self._count_out(len(data))

    def send(self, peer_id: bytes, data: bytes) -> None:
        """Deliver ``data`` to ``peer_id`` only (its inbox key); blocks while the link is congested."""
        self._put(keyexpr.inbox(self._fed, peer_id), bytes(data),
                  congestion_control=zenoh.CongestionControl.BLOCK)

    def broadcast(self, data: bytes) -> None:
        """Deliver ``data`` to every other peer of the federation (not to this one)."""
        self._put(keyexpr.bcast(self._fed), bytes(data), congestion_control=zenoh.CongestionControl.BLOCK,
                  allowed_destination=zenoh.Locality.REMOTE)

    def publish_status(self, data: bytes) -> None:
        """Publish the signed status and keep it for the status queryable (best effort: never blocks)."""
        data = bytes(data)
        self._last_status = data
        self._put(keyexpr.status(self._fed, self.me), data, congestion_control=zenoh.CongestionControl.DROP,
                  priority=zenoh.Priority.DATA_LOW, allowed_destination=zenoh.Locality.REMOTE)

    def fetch_model(self, peer_id: bytes | None = None, timeout_s: float = 3.0) -> list[bytes]:
        """The models that ``peer_id`` (or every other live peer, when None) serve, within ``timeout_s``.

        Returns as soon as every matching queryable has answered; peers without a model answer
        nothing. Blocks the calling thread: never call it from a transport callback.
        """
        session = self._session
        if session is None or self._closed:
            return []
        key = keyexpr.model(self._fed, peer_id)
        try:
            replies = _replies(session, key, timeout_s, remote_only=peer_id is None)
        except Exception as exc:  # noqa: BLE001
            log.warning("model query on %s failed: %s", key, _ZENOH_LOCATION.sub("", str(exc)))
            return []
        out = []
        for rkey, data in replies:
            peer = keyexpr.peer_from_key(rkey)
            if peer is None or (peer_id is None and peer == self.me):
                continue
            self._count_in(len(data))
            out.append(data)
        return out

    def live_peers(self) -> set[bytes]:
        """Peers whose liveliness token is visible now (never this node)."""
        with self._lock:
            return set(self._live)

    # ------------------------------------------------------------------ callbacks (Zenoh threads)

    def _message_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            data = sample.payload.to_bytes()
            self._count_in(len(data))
            self._on_message(data)
        except Exception:  # noqa: BLE001 - never raise into Zenoh
            self.callback_errors += 1
            log.exception("message callback failed")

    def _alive_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None or peer == self.me:
                return
            joined = sample.kind == zenoh.SampleKind.PUT
            with self._lock:
                changed = (peer not in self._live) if joined else (peer in self._live)
                if joined:
                    self._live.add(peer)
                else:
                    self._live.discard(peer)
            if changed:
                (self._on_joined if joined else self._on_left)(peer)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("liveliness callback failed")

    def _status_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is not None and peer != self.me and self._on_status is not None:
                data = sample.payload.to_bytes()
                self._count_in(len(data))
                self._on_status(peer, data)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("status callback failed")

    def _status_query(self, query) -> None:
        try:
            data = self._last_status
            if data is not None and not self._closed:
                query.reply(keyexpr.status(self._fed, self.me), data)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("status query failed")

    def _model_query(self, query) -> None:
        try:
            data = self._model_provider() if self._model_provider is not None and not self._closed else None
            if data is not None:
                data = bytes(data)
                query.reply(keyexpr.model(self._fed, self.me), data)
                self._count_out(len(data))
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("model query failed")


# ---------------------------------------------------------------------------- observers


class _PassiveSession:
    """Lifecycle shared by the read-only clients: open one session, declare, close everything once."""

    def __init__(self, settings: ZenohSettings) -> None:
        settings.check()
        self.settings = settings
        self._lock = threading.Lock()
        self._session = None
        self._declared: list = []
        self._closed = False

    def _open(self, declare: Callable[[object], list]) -> None:
        """Open the session and declare what ``declare(session)`` returns; on any failure close all."""
        if self._closed:
            raise TransportError(f"this {type(self).__name__} was closed; create a new one")
        if self._session is not None:
            return
        try:
            session = self._session = open_session(self.settings)
            self._declared.extend(declare(session))
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
        _close_all(declared, session)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class ZenohObserver(_PassiveSession):
    """Read-only view of a federation (dashboards, ``fednode status``).

    Subscribes to status and liveliness and can query every live peer's last status; declares no
    liveliness token, so nodes never count it as a peer. ``settings.peer_id`` is not used on the
    wire (any 32 bytes do).
    """

    def __init__(self, settings: ZenohSettings, *, on_status: Callable[[bytes, bytes], None] | None = None,
                 on_peer_joined: Callable[[bytes], None] | None = None,
                 on_peer_left: Callable[[bytes], None] | None = None) -> None:
        super().__init__(settings)
        self._fed = settings.federation
        self._on_status, self._on_joined, self._on_left = on_status, on_peer_joined, on_peer_left
        self._live: set[bytes] = set()
        self._statuses: dict[bytes, bytes] = {}

    def start(self) -> None:
        self._open(lambda session: [
            session.declare_subscriber(keyexpr.status(self._fed), self._status_cb),
            session.liveliness().declare_subscriber(keyexpr.alive(self._fed), self._alive_cb, history=True)])

    def live_peers(self) -> set[bytes]:
        with self._lock:
            return set(self._live)

    def statuses(self) -> dict[bytes, bytes]:
        """The last status bytes seen from each peer (published or queried)."""
        with self._lock:
            return dict(self._statuses)

    def snapshot(self, timeout_s: float = 2.0) -> dict[bytes, bytes]:
        """Ask every live peer for its last status now (status queryables); also kept for statuses()."""
        session = self._session
        if session is None or self._closed:
            return {}
        out: dict[bytes, bytes] = {}
        for key, data in _replies(session, keyexpr.status(self._fed), timeout_s, remote_only=False):
            peer = keyexpr.peer_from_key(key)
            if peer is not None:
                out[peer] = data
        with self._lock:
            self._statuses.update(out)
        return out

    def _status_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None:
                return
            data = sample.payload.to_bytes()
            with self._lock:
                self._statuses[peer] = data
            if self._on_status is not None:
                self._on_status(peer, data)
        except Exception:  # noqa: BLE001
            log.exception("status callback failed")

    def _alive_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None:
                return
            joined = sample.kind == zenoh.SampleKind.PUT
            with self._lock:
                changed = (peer not in self._live) if joined else (peer in self._live)
                if joined:
                    self._live.add(peer)
                else:
                    self._live.discard(peer)
                    self._statuses.pop(peer, None)
            callback = self._on_joined if joined else self._on_left
            if changed and callback is not None:
                callback(peer)
        except Exception:  # noqa: BLE001
            log.exception("liveliness callback failed")


class ZenohTap(_PassiveSession):
    """A passive listener on everything under ``fednode/<federation>/**`` (tests, audits).

    This is what an eavesdropper on the federation's Zenoh traffic sees: it hands each sample's key
    and raw bytes to ``on_sample`` and never publishes, queries or declares liveliness. The tests use
    it to show that masked contributions look uniform on the wire and that every release a node
    made is in its privacy ledger.
    """

    def __init__(self, settings: ZenohSettings, on_sample: Callable[[str, bytes], None]) -> None:
        super().__init__(settings)
        self._on_sample = on_sample
        self.samples = 0

    def start(self) -> None:
        self._open(lambda session: [
            session.declare_subscriber(f"{keyexpr.root(self.settings.federation)}/**", self._cb)])

    def _cb(self, sample) -> None:
        if self._closed:
            return
        try:
            self.samples += 1
            self._on_sample(str(sample.key_expr), sample.payload.to_bytes())
        except Exception:  # noqa: BLE001 - a callback must never raise into zenoh
            log.exception("tap callback failed")


def list_status(settings: ZenohSettings, timeout_s: float = 3.0) -> dict[bytes, bytes]:
    """One-shot ``fednode status``: every live peer's last signed status (unverified bytes).

    Opens an observer, then queries ``status/*`` until every live peer (liveliness) has answered
    or ``timeout_s`` has passed, and returns what it has. Peers that never published a status yet
    are missing from the result.
    """
    deadline = time.monotonic() + max(0.1, timeout_s)
    with ZenohObserver(settings) as obs:
        got: dict[bytes, bytes] = {}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got.update(obs.snapshot(timeout_s=min(1.0, left)))
            got.update(obs.statuses())
            live = obs.live_peers()
            if live and live <= got.keys():
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return got
