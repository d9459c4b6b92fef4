"""Zenoh settings, their checks, and opening a session with errors a user can act on.

Part of the Zenoh transport (:mod:`fednode.gossip.transports.zenoh_transport`): endpoints, scouting
interface and multicast group are validated before a session opens, and a failure to open is turned
into one line that names the setting to change.
"""

from __future__ import annotations

import json
import logging
import re
import socket
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


def _close_once(owner) -> None:
    """Close what ``owner`` (``_lock``, ``_closed``, ``_declared``, ``_session``) opened, exactly once.

    Shared by :class:`ZenohTransport` and the passive clients: the first caller takes the
    declarations and the session under the lock, later callers find ``_closed`` set."""
    with owner._lock:
        if owner._closed:
            return
        owner._closed = True
        declared, owner._declared = owner._declared, []
        session, owner._session = owner._session, None
    _close_all(declared, session)


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
