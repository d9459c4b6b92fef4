"""Membership view of the libp2p transport (pure: no libp2p, no trio; times are passed in).

Between two nodes A and B there is one member stream in each direction: A writes to its outbound
stream to B and reads B's outbound stream (A's inbound one). B is *live* at A when both are up:
A can deliver to B, and B has announced itself (a JOIN frame) on a stream whose remote identity
is bound to B's key. B leaves when either stream ends: at once when B's process dies (the kernel
closes its TCP connection), or when B's inbound stream stays silent for the lease (B sends a
heartbeat every third of a lease, so only a hung peer or a cut link gets there). This is the
failure detection of the Zenoh path's liveliness tokens, with the same lease.

The view also keeps the directory for discovery: every allow-listed peer learned from bootstrap
addresses, JOIN frames or peer exchange, with its libp2p id and addresses, and when to dial it
next (exponential backoff, reset once its stream is up).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

MAX_ADDRS = 8
DIAL_BACKOFF_MIN_S = 0.25
DIAL_BACKOFF_MAX_S = 4.0


@dataclass
class PeerEntry:
    libp2p_id: str
    addrs: list[str] = field(default_factory=list)
    outbound: bool = False
    inbound: int = 0
    dialing: bool = False
    next_dial: float = 0.0
    backoff: float = DIAL_BACKOFF_MIN_S

    @property
    def live(self) -> bool:
        return self.outbound and self.inbound > 0


class Membership:
    """Which peers are live, how to reach the others. Every mutator returns the membership events
    it caused, ``[("joined" | "left", peer_id)]``; ``live()`` may be called from any thread."""

    def __init__(self, me: bytes) -> None:
        self.me = me
        self._peers: dict[bytes, PeerEntry] = {}
        self._lock = threading.Lock()
        self._live: frozenset[bytes] = frozenset()

    # ------------------------------------------------------------------ directory

    def learn(self, peer: bytes, libp2p_id: str, addrs: list[str]) -> bool:
        """Record how to reach ``peer`` (the caller checked the binding); True when it was new."""
        if peer == self.me:
            return False
        entry = self._peers.get(peer)
        if entry is None:
            self._peers[peer] = PeerEntry(libp2p_id, list(dict.fromkeys(addrs))[:MAX_ADDRS])
            return True
        if libp2p_id != entry.libp2p_id:
            return False  # bound by the caller to the same key: cannot differ; ignore
        merged = list(dict.fromkeys([*addrs, *entry.addrs]))[:MAX_ADDRS]
        changed = merged != entry.addrs
        entry.addrs = merged
        return changed

    def entry(self, peer: bytes) -> PeerEntry | None:
        return self._peers.get(peer)

    def due_dials(self, now: float) -> list[tuple[bytes, PeerEntry]]:
        """Known peers without an outbound stream whose next dial is due (marked as dialing)."""
        out = []
        for peer, e in self._peers.items():
            if not e.outbound and not e.dialing and e.addrs and now >= e.next_dial:
                e.dialing = True
                out.append((peer, e))
        return out

    def dial_failed(self, peer: bytes, now: float) -> None:
        e = self._peers.get(peer)
        if e is not None:
            e.dialing = False
            e.next_dial = now + e.backoff
            e.backoff = min(DIAL_BACKOFF_MAX_S, e.backoff * 2)

    def exchange(self) -> list[tuple[str, list[str]]]:
        """(libp2p id, addresses) of every live peer: what a PEERS frame carries."""
        return [(e.libp2p_id, list(e.addrs)) for e in self._peers.values() if e.live and e.addrs]

    # ------------------------------------------------------------------ streams

    def _transition(self, peer: bytes, change) -> list[tuple[str, bytes]]:
        e = self._peers.get(peer)
        if e is None:
            return []
        was = e.live
        change(e)
        now_live = e.live
        if was == now_live:
            return []
        with self._lock:
            self._live = self._live | {peer} if now_live else self._live - {peer}
        return [("joined" if now_live else "left", peer)]

    def outbound_up(self, peer: bytes) -> list[tuple[str, bytes]]:
        def up(e: PeerEntry) -> None:
            e.outbound, e.dialing, e.backoff = True, False, DIAL_BACKOFF_MIN_S
        return self._transition(peer, up)

    def outbound_down(self, peer: bytes, now: float) -> list[tuple[str, bytes]]:
        def down(e: PeerEntry) -> None:
            e.outbound, e.dialing = False, False
            e.next_dial = now + e.backoff
        return self._transition(peer, down)

    def inbound_up(self, peer: bytes) -> list[tuple[str, bytes]]:
        def up(e: PeerEntry) -> None:
            e.inbound += 1
            e.next_dial = 0.0  # it is back: dial it now if our stream is down
        return self._transition(peer, up)

    def inbound_down(self, peer: bytes) -> list[tuple[str, bytes]]:
        def down(e: PeerEntry) -> None:
            e.inbound = max(0, e.inbound - 1)
        return self._transition(peer, down)

    def live(self) -> set[bytes]:
        with self._lock:
            return set(self._live)
