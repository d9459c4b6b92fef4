"""Zenoh key-expression layout of a federation. Everything lives under ``fednode/<federation>/``.

=============================================  ================================================================
key expression                                 use
=============================================  ================================================================
``fednode/<federation>/alive/<peer_hex>``      liveliness token of each live peer (membership). Observers
                                               (dashboards, ``fednode status``) subscribe without declaring one.
``fednode/<federation>/msg/<recipient_hex>``   signed envelopes for one recipient; each peer subscribes to its
                                               own key only, so a message to B never reaches C.
``fednode/<federation>/bcast``                 signed broadcast envelopes (HELLO); every peer subscribes. A
                                               sender never receives its own broadcast.
``fednode/<federation>/status/<peer_hex>``     signed status messages: published (put) whenever the node updates
                                               its status, and a queryable of the node answering its last status,
                                               so a one-shot ``fednode status`` gets every live peer's status with
                                               one query on ``status/*``.
``fednode/<federation>/model/<peer_hex>``      queryable: the peer serves its current signed model (late
                                               joiners fetch it with one query, ``model/*`` for every live peer).
=============================================  ================================================================

``peer_hex`` is the 64-character lowercase hex of the 32-byte peer id. Federation ids are
restricted to ``[A-Za-z0-9_.-]{1,64}`` so that they can never inject ``*``, ``$``, ``?``, ``#`` or
``/`` (and so never widen a subscription to another federation). Nothing in these keys is
trusted: every payload is a signed envelope that the receiver verifies; a key only routes.

This module does not import zenoh (it is plain string building, usable anywhere).
"""

from __future__ import annotations

import re

PREFIX = "fednode"
PEER_ID_LEN = 32

_FEDERATION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PEER_HEX = re.compile(r"[0-9a-f]{64}")


def check_federation(federation: str) -> str:
    """The federation id itself, or ValueError when it is not 1-64 of ``A-Z a-z 0-9 _ . -``."""
    if not isinstance(federation, str) or not _FEDERATION.fullmatch(federation):
        raise ValueError(f"federation id {federation!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return federation


def peer_hex(peer: bytes) -> str:
    """The 64-hex key chunk of a 32-byte peer id (ValueError for anything else)."""
    if not isinstance(peer, (bytes, bytearray)) or len(peer) != PEER_ID_LEN:
        raise ValueError(f"a peer id is {PEER_ID_LEN} bytes, not {peer!r:.80}")
    return bytes(peer).hex()


def root(federation: str) -> str:
    return f"{PREFIX}/{check_federation(federation)}"


def _per_peer(federation: str, kind: str, peer: bytes | None) -> str:
    return f"{root(federation)}/{kind}/{peer_hex(peer) if peer is not None else '*'}"


def alive(federation: str, peer: bytes | None = None) -> str:
    """Liveliness token of ``peer``; ``alive/*`` (every peer) when peer is None."""
    return _per_peer(federation, "alive", peer)


def inbox(federation: str, peer: bytes) -> str:
    """Per-recipient delivery key of ``peer``."""
    return f"{root(federation)}/msg/{peer_hex(peer)}"


def bcast(federation: str) -> str:
    return f"{root(federation)}/bcast"


def status(federation: str, peer: bytes | None = None) -> str:
    """Status key of ``peer``; ``status/*`` when peer is None."""
    return _per_peer(federation, "status", peer)


def model(federation: str, peer: bytes | None = None) -> str:
    """Model queryable of ``peer``; ``model/*`` when peer is None."""
    return _per_peer(federation, "model", peer)


def peer_from_key(key: str) -> bytes | None:
    """The peer id at the end of an alive/status/model/msg key, or None when it is not 64 lowercase hex."""
    last = str(key).rsplit("/", 1)[-1]
    return bytes.fromhex(last) if _PEER_HEX.fullmatch(last) else None
