"""The typed state of one node's rounds: one dataclass per stage, composed into :class:`RoundState`.

Each stage module (:mod:`fednode.gossip.stages`) reads and writes only its own part, plus the
shared facts at the top of :class:`RoundState` (x^r, N_i, x^{r+1/2}, who left). Keeping all of it
in one file lets a reader see everything a round remembers at a glance; a round's state is dropped
two rounds later.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fednode.security.arrays import Model
from fednode.security.envelope import Message
from fednode.security.kdf import EpochKeys

TRAIN, AGGREGATE, COMMITTING, SYNC, DONE = "train", "aggregate", "commit", "sync", "done"
"""The driver's phases (:attr:`GossipNode.phase`); the runtime and dashboard show them."""

PHASE_TRANSITIONS: dict[str, frozenset[str]] = {
    SYNC: frozenset({TRAIN, DONE}),                      # model reply or t_sync: start the federation's round
    TRAIN: frozenset({TRAIN, AGGREGATE, SYNC, DONE}),    # edges known; or abort/skip-ahead to the next round
    AGGREGATE: frozenset({COMMITTING, SYNC}),            # U_i fixed (maybe empty); far-ahead HELLO: resync
    COMMITTING: frozenset({TRAIN, SYNC, DONE}),          # round mixed or aborted -> next round
    DONE: frozenset({SYNC, DONE}),                       # keeps answering; a far-ahead HELLO still resyncs
}
"""Every phase change the driver makes (tests/test_stages.py checks it over simulated federations)."""


@dataclass
class NodeStats:
    """Counters for status messages and the dashboard."""

    rounds_completed: int = 0
    rounds_aborted: int = 0
    rounds_averaged: int = 0
    retries_sent: int = 0
    resyncs: int = 0
    drift_events: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejects: Counter = field(default_factory=Counter)
    rejects_by_peer: Counter = field(default_factory=Counter)
    """Rejects of messages whose signature verified, by signer (an admitted peer: a bounded set). Tells
    an operator who sends the bad traffic; the flood benchmark matches a compromised key's messages
    by it, since a stale or a banned one is not told apart by reason alone."""
    aborts: Counter = field(default_factory=Counter)
    exclusions: Counter = field(default_factory=Counter)
    """Peer -> times it was taken out of this node's overlay view (:mod:`fednode.gossip.exclusion`)."""
    exclusion_reasons: Counter = field(default_factory=Counter)
    """"proven" (signed bad content) or "filtered" (the validation filter kept dropping it) -> count."""
    masked_contributions: int = 0
    """Secure aggregation: masked contributions this node sent (as contributor)."""
    setups_refused: Counter = field(default_factory=Counter)
    """Secure aggregation: SETUP/RETRY requests this node refused, by reason."""


@dataclass
class HelloState:
    """Neighbour agreement (:mod:`~fednode.gossip.stages.hello`)."""

    deadline: float
    received: dict[bytes, tuple[frozenset[bytes], int]] = field(default_factory=dict)  # j -> (N_j, d_j)
    implied: dict[bytes, int] = field(default_factory=dict)   # peers that listed us implicitly -> degree
    resent: bool = False
    epoch_keys: dict[bytes, EpochKeys] = field(default_factory=dict)   # recipient -> our X25519 key for it
    enc_keys: dict[bytes, EpochKeys] = field(default_factory=dict)     # mode B: our share-encryption key
    epk: dict[bytes, bytes] = field(default_factory=dict)              # sender -> its masking key for us
    cpk: dict[bytes, bytes] = field(default_factory=dict)              # sender -> its share-encryption key


@dataclass
class ExchangeState:
    """Contribution exchange, aggregator view (plaintext and masked)."""

    edges: dict[bytes, float] = field(default_factory=dict)   # j -> W_ij
    contributed_at: float | None = None
    attempt: int = 0
    deadline: float | None = None
    contributions: dict[bytes, Model] = field(default_factory=dict)


@dataclass
class CommitState:
    """The COMMIT exchange (:mod:`~fednode.gossip.stages.commit`)."""

    used: frozenset[bytes] | None = None          # U_i, fixed when aggregation ends
    abort: str | None = None                      # why U_i is empty (secure aggregation)
    aggregated_at: float | None = None
    deadline: float | None = None
    commits: dict[bytes, frozenset[bytes]] = field(default_factory=dict)
    sends: Counter = field(default_factory=Counter)
    nudge_at: float = float("inf")


@dataclass
class MaskedSumState:
    """Secure aggregation, aggregator side: the attempt's set and its unmasking (modes A and B)."""

    members: frozenset[bytes] = frozenset()       # U of the current attempt (mode B: U2 once fixed)
    unmask_sent: bool = False
    reveal_deadline: float | None = None
    reveals: dict[bytes, bytes] = field(default_factory=dict)   # mode A: j -> b_j^a
    total: np.ndarray | None = None               # S_i, decoded
    digest: str = ""


@dataclass
class PlusSumState:
    """Mode B (SecAgg+), aggregator side: shares -> contrib -> unmask."""

    phase: str = "shares"
    bundles: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)   # sender -> holder -> sealed
    u1: frozenset[bytes] = frozenset()
    threshold: int = 0                            # t for the |U| the shares were cut for
    reveals: dict[bytes, tuple[dict, dict]] = field(default_factory=dict)  # holder -> (b-shares, key-shares)


@dataclass
class MaskedContributionState:
    """Secure aggregation, contributor side (this node masks for its neighbours)."""

    answered: dict[bytes, tuple[int, frozenset[bytes]]] = field(default_factory=dict)  # aggregator -> (a, U)
    self_masks: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    revealed: dict[bytes, int] = field(default_factory=dict)
    pending: dict[bytes, Message] = field(default_factory=dict)   # SETUPs that came before our local step
    own: dict[bytes, dict] = field(default_factory=dict)          # mode B: aggregator -> our secrets
    held: dict[bytes, dict[bytes, tuple]] = field(default_factory=dict)   # mode B: aggregator -> sender -> shares


@dataclass
class RoundState:
    """Everything node i knows about one round."""

    number: int
    started: float
    base: Model                                   # x^r
    proposed: frozenset[bytes]                    # N_i
    step_round: int                               # LocalStepDone.round we accept as this round's step
    hello: HelloState
    half: Model | None = None                     # x^{r+1/2}
    step_done_at: float | None = None
    gone: set[bytes] = field(default_factory=set)
    exchange: ExchangeState = field(default_factory=ExchangeState)
    commit: CommitState = field(default_factory=CommitState)
    masked: MaskedSumState = field(default_factory=MaskedSumState)
    plus: PlusSumState = field(default_factory=PlusSumState)
    contributor: MaskedContributionState = field(default_factory=MaskedContributionState)

    @property
    def degree(self) -> int:
        return len(self.proposed)


@dataclass
class SyncState:
    """Catch-up (:mod:`~fednode.gossip.stages.catchup`): the pending model request, if any."""

    deadline: float | None = None
    target: int | None = None
    buffer: dict[int, list[Message]] = field(default_factory=dict)   # round -> early messages


@dataclass(frozen=True)
class Concluded:
    """A contribution stage is over: U_i (empty on abort) goes to the COMMIT exchange."""

    used: frozenset[bytes]
    abort: str | None = None


@dataclass(frozen=True)
class RoundEnd:
    """How a round ends: x^{r+1}, the weights used (empty: abort) and the reason or drift."""

    model: Model
    used: dict[bytes, float]
    abort: str | None
    drift: tuple[bytes, ...] = ()
    digest: str = ""
