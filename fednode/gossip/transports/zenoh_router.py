"""A real Zenoh router (zenoh-python session in ``mode:"router"``) with a readable connection log.

Used by ``fednode router`` and by ``fednode testnet --sites``: nodes of a site connect to their
site's router, routers connect to each other, and Zenoh's router-to-router link-state routing
carries data, queries and liveliness tokens between sites. The router has no fednode identity: it
forwards signed envelopes it cannot forge, so admission stays end to end (allow-lists).

TLS: give ``tls_certificate`` and ``tls_private_key`` (PEM files) and ``tls/host:port`` listen
endpoints; ``tls_root_ca`` is the CA that this router trusts when it connects to other TLS routers.

Every link change is logged on one line (``link up: router 1a2b... tcp/198.19.0.2:7447`` /
``link down: ...``) from Zenoh's transport-events listener; a listen endpoint already in use is a
:class:`~fednode.gossip.transports.zenoh_transport.TransportError` with one line.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zenoh

from fednode.gossip.transports.zenoh_transport import _ENDPOINT, TransportError, _check_endpoint, \
    _check_multicast_address

__all__ = ["RouterSettings", "ZenohRouter"]

log = logging.getLogger("fednode.router")


@dataclass
class RouterSettings:
    listen: list[str] = field(default_factory=lambda: ["tcp/127.0.0.1:7447"])
    connect: list[str] = field(default_factory=list)
    multicast_scouting: bool = False
    multicast_interface: str = "lo"
    multicast_address: str = "224.0.0.224:7446"
    lease_ms: int = 3000
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_root_ca: Path | None = None

    def check(self) -> None:
        if not self.listen:
            raise TransportError("a router needs at least one listen endpoint")
        for ep in self.listen:
            _check_endpoint(ep, "listen")
        for ep in self.connect:
            _check_endpoint(ep, "connect")
        if self.multicast_scouting:
            _check_multicast_address(self.multicast_address)
        uses_tls = any(ep.startswith("tls/") for ep in self.listen)
        if uses_tls and not (self.tls_certificate and self.tls_private_key):
            raise TransportError("tls/ listen endpoints need --tls-cert and --tls-key")
        for what, p in (("certificate", self.tls_certificate), ("private key", self.tls_private_key),
                        ("root CA", self.tls_root_ca)):
            if p is not None and not Path(p).is_file():
                raise TransportError(f"TLS {what} file {str(p)!r} does not exist")
        if not isinstance(self.lease_ms, int) or not 100 <= self.lease_ms <= 600_000:
            raise TransportError(f"lease_ms must be an integer of 100-600000, not {self.lease_ms!r}")

    def preflight(self) -> None:
        """check(), then refuse at once (one line) a fixed tcp/tls listen port that is already taken."""
        self.check()
        for ep in self.listen:
            m = _ENDPOINT.fullmatch(ep)
            host, _, port = m["addr"].rpartition(":")
            host = host.strip("[]")
            if m["proto"] not in ("tcp", "tls") or int(port) == 0:
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, int(port)))
                except OSError as exc:
                    reason = "is already in use" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
                    raise TransportError(f"router listen endpoint {ep} {reason}") from None

    def to_zenoh_config(self) -> "zenoh.Config":
        self.check()
        conf = zenoh.Config()

        def put(key: str, value: object) -> None:
            conf.insert_json5(key, json.dumps(value))

        put("mode", "router")
        put("listen/endpoints", list(self.listen))
        put("connect/endpoints", list(self.connect))
        put("scouting/multicast/enabled", bool(self.multicast_scouting))
        if self.multicast_scouting:
            put("scouting/multicast/interface", self.multicast_interface)
            put("scouting/multicast/address", self.multicast_address)
        put("transport/link/tx/lease", int(self.lease_ms))
        put("transport/shared_memory/enabled", False)
        if self.tls_certificate:
            put("transport/link/tls/listen_certificate", str(self.tls_certificate))
        if self.tls_private_key:
            put("transport/link/tls/listen_private_key", str(self.tls_private_key))
        if self.tls_root_ca:
            put("transport/link/tls/root_ca_certificate", str(self.tls_root_ca))
        return conf


class ZenohRouter:
    """One router session; ``start()`` opens it, ``close()`` (idempotent) ends it."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.session = None
        self._listener = None
        self._lock = threading.Lock()
        self.connected: dict[str, str] = {}  # zid -> whatami, as reported by link events
        self.events: list[tuple[str, str, str]] = []  # (up|down, whatami, zid)

    def start(self) -> None:
        self.settings.preflight()
        conf = self.settings.to_zenoh_config()
        try:
            self.session = zenoh.open(conf)
        except zenoh.ZError as exc:
            text = str(exc).splitlines()[0] if str(exc) else "unknown error"
            if "in use" in text.lower() or "address already" in text.lower():
                raise TransportError(f"router listen endpoint in use: {text}") from None
            raise TransportError(f"cannot start the Zenoh router: {text}") from None
        try:
            self._listener = self.session.info.declare_transport_events_listener(self._on_transport,
                                                                                  history=True)
        except Exception:
            self.close()
            raise
        log.info("router %s listening on %s%s", self.zid, ", ".join(self.settings.listen),
                 f", connecting to {', '.join(self.settings.connect)}" if self.settings.connect else "")

    @property
    def zid(self) -> str:
        return str(self.session.zid()) if self.session is not None else "-"

    def _on_transport(self, event) -> None:
        try:
            t = event.transport
            zid, what = str(t.zid), str(t.whatami).split(".")[-1].lower()
            up = "put" in str(event.kind).lower()
            with self._lock:
                if up:
                    self.connected[zid] = what
                else:
                    self.connected.pop(zid, None)
                self.events.append(("up" if up else "down", what, zid))
                n = len(self.connected)
            log.info("link %s: %s %s (%d connected)", "up" if up else "down", what, zid, n)
        except Exception as exc:  # never raise into Zenoh's thread
            log.warning("transport event not understood: %s", exc)

    def peers(self) -> dict[str, str]:
        with self._lock:
            return dict(self.connected)

    def close(self) -> None:
        listener, self._listener = self._listener, None
        session, self.session = self.session, None
        if listener is not None:
            try:
                listener.undeclare()
            except Exception:
                pass
        if session is not None:
            session.close()
            log.info("router closed")

    def __enter__(self) -> "ZenohRouter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
