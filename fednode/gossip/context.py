"""What every stage of one node shares: identity, rules, counters, the wire, and the round in progress.

The driver (:mod:`fednode.gossip.round`) owns it and is the only writer of ``phase`` and ``current``;
stages read them and write only their own part of a :class:`~fednode.gossip.state.RoundState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fednode.gossip import secagg
from fednode.gossip.config import RoundConfig
from fednode.gossip.inbox import Inbox
from fednode.gossip.outbox import Outbox
from fednode.gossip.state import NodeStats, RoundState
from fednode.security.arrays import ModelSpec
from fednode.security.identity import AllowList, Identity


@dataclass
class NodeContext:
    identity: Identity
    allow_list: AllowList
    spec: ModelSpec
    config: RoundConfig
    stats: NodeStats
    outbox: Outbox
    inbox: Inbox
    members: frozenset[bytes]
    """Replaced, never changed in place: the overlay need not re-check a view it has seen
    (:class:`~fednode.gossip.overlay.RandomRegularOverlay`)."""
    phase: str
    current: RoundState | None = None
    dp_rng: Any = None
    contribution_filter: Any = None   # mix.ContributionFilter: the runtime's validation-score filter, or None
    hello_raw: dict[tuple[int, bytes], bytes] = field(default_factory=dict)   # (round, sender) -> signed HELLO
    relayed_ok: dict[bytes, secagg.RelayedKey] = field(default_factory=dict)  # sha256(raw) -> verified key

    def __post_init__(self) -> None:
        self.me: bytes = self.identity.peer_id
        self.secure: bool = self.config.secure
        self.plus: bool = self.config.secure_aggregation == "secagg+"
        self.ring_spec: ModelSpec = self.spec.with_dtype(secagg.RING_DTYPE)

    def add_member(self, peer: bytes) -> None:
        if peer not in self.members:  # a new set: ``members`` is never changed in place
            self.members = self.members | {peer}

    def drop_member(self, peer: bytes) -> None:
        if peer in self.members:
            self.members = self.members - {peer}
