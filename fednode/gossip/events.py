"""Events into and actions out of the sans-I/O gossip round (:mod:`fednode.gossip.round`).

The state machine never touches a socket, a clock or a thread. A driver (the node
runtime over Zenoh, the in-memory transport, the deterministic simulator) feeds it
events stamped with the driver's clock and carries out the actions it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from fednode.security.arrays import Model

# --------------------------------------------------------------------------- events


class MessageReceived(NamedTuple):
    """Untrusted bytes from the transport; the machine verifies them itself (a tuple: one per message)."""

    data: bytes
    now: float


@dataclass(frozen=True)
class PeerJoined:
    """Membership (liveliness) says ``peer`` is alive."""

    peer: bytes
    now: float


@dataclass(frozen=True)
class PeerLeft:
    """Membership says ``peer`` is gone; the machine stops waiting for it at once."""

    peer: bytes
    now: float


@dataclass(frozen=True)
class TimerFired:
    """The driver's clock reached a deadline the machine asked for (or any later time)."""

    now: float


@dataclass(frozen=True)
class LocalStepDone:
    """The local training step of ``round`` finished; ``model`` is x^{r+1/2} before clipping."""

    round: int
    model: Model
    now: float


Event = MessageReceived | PeerJoined | PeerLeft | TimerFired | LocalStepDone

# --------------------------------------------------------------------------- actions


class Send(NamedTuple):
    """Deliver ``data`` to one peer (per-recipient key on Zenoh); a tuple: one per message."""

    peer: bytes
    data: bytes
    kind: str = ""


@dataclass(frozen=True)
class Broadcast:
    """Deliver ``data`` to every peer of the federation (HELLO)."""

    data: bytes
    kind: str = ""


class SetTimer(NamedTuple):
    """Fire a :class:`TimerFired` at or after ``deadline`` (driver-clock seconds).

    The machine re-checks its own deadlines on every event, so a driver may fire late,
    early or more than once without harm; only the latest request matters.
    """

    deadline: float


@dataclass(frozen=True)
class StartLocalStep:
    """Train locally from ``model`` (x^r) and answer with :class:`LocalStepDone` for ``round``."""

    round: int
    model: Model


@dataclass(frozen=True)
class RoundStats:
    """Timings (driver seconds) and counts of one finished round, for status and logs."""

    round: int
    started: float
    local_step_s: float
    hello_wait_s: float
    aggregate_s: float
    commit_s: float
    total_s: float
    neighbours: tuple[bytes, ...]
    attempts: int
    contributions: int


@dataclass(frozen=True)
class Commit:
    """Round ``round`` ended with averaging over ``used``; ``model`` is x^{r+1}."""

    round: int
    model: Model
    used: tuple[bytes, ...]
    weights: dict[bytes, float]
    self_weight: float
    stats: RoundStats
    drift_peers: tuple[bytes, ...] = ()
    secure_sum_digest: str = ""
    """Secure aggregation: SHA-256 of the unmasked ring sum sum_j enc(W_ij x_j) (audits and tests)."""


@dataclass(frozen=True)
class Abort:
    """Round ``round`` ended without averaging (too few contributions, resync, ...).

    ``model`` is what the node keeps: its own x^{r+1/2} (self-loop, W_ii = 1), so
    training goes on; nothing can halt a node.
    """

    round: int
    model: Model
    reason: str
    stats: RoundStats


@dataclass(frozen=True)
class AdoptModel:
    """A late joiner adopted a neighbour's model for round ``round`` (listen-only sync)."""

    round: int
    model: Model
    source: bytes


@dataclass(frozen=True)
class Finished:
    """The configured number of rounds is done; the machine keeps answering retries."""

    round: int


@dataclass(frozen=True)
class Rejected:
    """An incoming message was rejected (metrics and the dashboard's event log)."""

    reason: str
    sender: bytes | None = None
    detail: str = ""


@dataclass(frozen=True)
class Log:
    """A human-readable note for the node log."""

    level: str
    text: str
    fields: dict = field(default_factory=dict)


Action = (Send | Broadcast | SetTimer | StartLocalStep | Commit | Abort | AdoptModel | Finished | Rejected
          | Log)
