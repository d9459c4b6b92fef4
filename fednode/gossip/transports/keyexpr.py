"""Zenoh key-expression layout of a federation (everything lives under ``fednode/<federation>/``).

    fednode/<federation>/alive/<peer_hex>     liveliness token of each live peer (membership)
    fednode/<federation>/msg/<recipient_hex>  signed envelopes for one recipient (each peer subscribes to its own)
    fednode/<federation>/bcast                signed broadcast envelopes (every peer subscribes)
    fednode/<federation>/status/<peer_hex>    signed status: published each round, and a queryable answering
                                              the peer's last status (for `fednode status` and dashboards)

``peer_hex`` is the 64-character lowercase hex of the 32-byte peer id. Federation ids are
restricted to ``[A-Za-z0-9_.-]{1,64}`` so that they can never inject ``*``, ``$`` or ``/``.
Nothing in these keys is trusted: every payload is a signed envelope that the receiver verifies.
"""

from __future__ import annotations

import re

_FEDERATION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PEER_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_federation(federation: str) -> str:
    if not isinstance(federation, str) or not _FEDERATION.match(federation):
        raise ValueError(f"federation id {federation!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return federation


def root(federation: str) -> str:
    return f"fednode/{check_federation(federation)}"


def alive(federation: str, peer: bytes | None = None) -> str:
    return f"{root(federation)}/alive/{peer.hex() if peer is not None else '*'}"


def inbox(federation: str, peer: bytes) -> str:
    return f"{root(federation)}/msg/{peer.hex()}"


def bcast(federation: str) -> str:
    return f"{root(federation)}/bcast"


def status(federation: str, peer: bytes | None = None) -> str:
    return f"{root(federation)}/status/{peer.hex() if peer is not None else '*'}"


def peer_from_key(key: str) -> bytes | None:
    """The peer id at the end of an alive/status key, or None when the key is not well formed."""
    last = str(key).rsplit("/", 1)[-1]
    return bytes.fromhex(last) if _PEER_HEX.match(last) else None
