"""Settings of the libp2p transport (pure: importable without the optional libp2p extra).

The CLI validates and preflights them before the slow trainer start, and tells the user how to
install the extra when it is missing, so this module must not import libp2p or trio.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

from fednode.gossip.transports import binding, keyexpr
from fednode.security.identity import AllowList, Identity

MULTIADDR = re.compile(r"/(ip4|ip6|dns|dns4|dns6)/[^/\s]+/tcp/(\d{1,5})(/p2p/[1-9A-HJ-NP-Za-km-z]+)?")
INSTALL_HINT = "the libp2p transport needs its optional extra: pip install -e '.[libp2p]'"


class TransportError(Exception):
    """The libp2p transport cannot start (bad address, port in use, unknown bootstrap peer): one line."""


def libp2p_available() -> bool:
    """Whether the optional extra is installed (without importing it: that takes over a second)."""
    import importlib.util
    return importlib.util.find_spec("libp2p") is not None and importlib.util.find_spec("trio") is not None


def check_multiaddr(addr: object, what: str, *, need_peer: bool = False) -> str:
    m = MULTIADDR.fullmatch(addr) if isinstance(addr, str) else None
    if m is None or int(m[2]) > 65535 or (need_peer and not m[3]):
        example = "/ip4/127.0.0.1/tcp/4001" + ("/p2p/12D3KooW..." if need_peer else "")
        raise TransportError(f"malformed {what} address {addr!r} (expected e.g. {example})")
    return addr


@dataclass
class Libp2pSettings:
    """How one node joins its federation over libp2p."""

    federation: str
    identity: Identity
    allow_list: AllowList
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    announce: list[str] = field(default_factory=list)
    """Addresses told to peers (default: the listen addresses; give one when listening on 0.0.0.0)."""
    lease_ms: int = 3000
    max_message_bytes: int = 64 * 1024 * 1024
    peer_exchange: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        try:
            keyexpr.check_federation(self.federation)
        except ValueError as exc:
            raise TransportError(str(exc)) from None
        for name in ("listen", "bootstrap", "announce"):
            if isinstance(getattr(self, name), str):
                raise TransportError(f"{name} is a list of multiaddrs, not a single string")
        for a in self.listen:
            check_multiaddr(a, "listen")
        for a in self.announce:
            check_multiaddr(a, "announce")
        for a in self.bootstrap:
            check_multiaddr(a, "bootstrap", need_peer=True)
            if binding.fednode_id_of(a.rsplit("/p2p/", 1)[1], self.allow_list) is None:
                raise TransportError(f"bootstrap peer {a} is not an Ed25519 key on the allow-list")
        if not isinstance(self.lease_ms, int) or not 100 <= self.lease_ms <= 600_000:
            raise TransportError(f"lease_ms must be an integer of 100-600000, not {self.lease_ms!r}")

    def preflight(self) -> None:
        """check(), then make sure every fixed TCP listen port is free (before slow work)."""
        self.check()
        for a in self.listen:
            m = MULTIADDR.fullmatch(a)
            if m[1] not in ("ip4", "ip6") or int(m[2]) == 0:
                continue
            host = a.split("/")[2]
            with socket.socket(socket.AF_INET6 if m[1] == "ip6" else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, int(m[2])))
                except OSError as exc:
                    raise TransportError(explain(exc, a)) from None


def explain(exc: BaseException, addr: str) -> str:
    text = f"{exc} {exc.__cause__ or ''}"
    if "in use" in text:
        return f"cannot listen on {addr}: the port is already in use (choose another port, or port 0)"
    if "assign requested address" in text:
        return f"cannot listen on {addr}: that address is not one of this machine's"
    return f"cannot start the libp2p host on {addr}: {str(exc)[:200]}"


