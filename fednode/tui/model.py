"""The dashboard's picture of a federation, assembled from signed status messages and liveliness.

Pure Python, no Textual and no Zenoh: the app feeds it verified statuses, rejects and
membership changes (on the UI thread) and renders what it holds; tests drive it directly.
Events (joins, departures, aborted rounds, retries, rejects, budget exhaustion) are derived by
diffing each peer's counters between two statuses, so nothing beyond the status is needed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GONE = "gone"
STATES = ("training", "aggregating", "committing", "syncing", "idle", "done", "budget_exhausted", GONE)


@dataclass
class PeerView:
    """One row of the peers table, plus its history over rounds."""

    peer: bytes
    short: str
    state: str = "idle"
    round: int = 0
    accuracy: float | None = None
    loss: float | None = None
    epsilon: float | None = None
    neighbours: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    rejects: int = 0
    aborts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    secure_aggregation: str = "off"
    last_seen: float = 0.0
    live: bool = True
    round_duration: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    accuracy_by_round: dict[int, float] = field(default_factory=dict)
    loss_by_round: dict[int, float] = field(default_factory=dict)
    duration_by_round: dict[int, float] = field(default_factory=dict)

    @property
    def shown_state(self) -> str:
        return self.state if self.live else GONE


@dataclass(frozen=True)
class Event:
    time: float
    kind: str
    peer: str
    text: str


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int:
    if isinstance(value, Mapping):
        return int(sum(v for v in value.values() if isinstance(v, int)))
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


class FederationView:
    """Everything the dashboard shows; mutate only from one thread (the UI's)."""

    def __init__(self, federation: str, *, focus: bytes | None = None, max_events: int = 500) -> None:
        self.federation = federation
        self.focus = focus
        self.peers: dict[bytes, PeerView] = {}
        self.events: deque[Event] = deque(maxlen=max_events)
        self.rejected_statuses = 0
        self.reject_reasons: dict[str, int] = {}
        self.statuses_seen = 0
        self.events_total = 0
        self.first_data_at: float | None = None

    # ------------------------------------------------------------------ inputs

    def _event(self, kind: str, peer: str, text: str, now: float | None = None) -> None:
        self.events.append(Event(time.time() if now is None else now, kind, peer, text))
        self.events_total += 1

    def peer_joined(self, peer: bytes, now: float | None = None) -> None:
        view = self.peers.get(peer)
        if view is None:
            view = self.peers[peer] = PeerView(peer, peer[:6].hex(), last_seen=now or time.time())
            self._event("join", view.short, "joined", now)
        elif not view.live:
            view.live = True
            self._event("join", view.short, "back", now)

    def peer_left(self, peer: bytes, now: float | None = None) -> None:
        view = self.peers.get(peer)
        if view is not None and view.live:
            view.live = False
            self._event("leave", view.short, f"gone (last round {view.round})", now)

    def status_rejected(self, reason: str, now: float | None = None) -> None:
        """A status that failed verification: counted, never shown."""
        self.rejected_statuses += 1
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
        self._event("reject", "?", f"status rejected: {reason}", now)

    def status(self, peer: bytes, fields: Mapping[str, Any], now: float | None = None) -> None:
        """A verified status from ``peer`` (the envelope's signer)."""
        now = time.time() if now is None else now
        if self.first_data_at is None:
            self.first_data_at = now
        self.statuses_seen += 1
        view = self.peers.get(peer)
        if view is None:
            view = self.peers[peer] = PeerView(peer, peer[:6].hex())
            self._event("join", view.short, "first status", now)
        old_rejects, old_aborts, old_retries, old_state = view.rejects, dict(view.aborts), view.retries, view.state
        view.live = True
        view.last_seen = now
        view.fields = dict(fields)
        state = fields.get("state")
        view.state = state if isinstance(state, str) and state else view.state
        rnd = fields.get("round")
        if isinstance(rnd, int) and not isinstance(rnd, bool):
            view.round = rnd
        view.accuracy = _num(fields.get("accuracy"))
        view.loss = _num(fields.get("loss"))
        view.epsilon = _num(fields.get("epsilon"))
        nb = fields.get("neighbours")
        view.neighbours = [str(n) for n in nb] if isinstance(nb, list) else []
        view.bytes_in = _count(fields.get("bytes_in"))
        view.bytes_out = _count(fields.get("bytes_out"))
        view.rejects = _count(fields.get("rejects"))
        aborts = fields.get("aborts")
        view.aborts = {str(k): int(v) for k, v in aborts.items() if isinstance(v, int)} \
            if isinstance(aborts, Mapping) else {}
        view.retries = _count(fields.get("retries"))
        sa = fields.get("secure_aggregation")
        view.secure_aggregation = sa if isinstance(sa, str) else "off"
        timings = fields.get("timings")
        view.round_duration = _num(timings.get("total")) if isinstance(timings, Mapping) else None
        done = fields.get("rounds_completed")
        last_round = (done - 1) if isinstance(done, int) and done > 0 else None
        if last_round is not None:
            if view.accuracy is not None:
                view.accuracy_by_round[last_round] = view.accuracy
            if view.loss is not None:
                view.loss_by_round[last_round] = view.loss
            if view.round_duration is not None:
                view.duration_by_round[last_round] = view.round_duration
        # events from counter differences
        for reason, n in view.aborts.items():
            if n > old_aborts.get(reason, 0):
                self._event("abort", view.short, f"round aborted: {reason} (x{n - old_aborts.get(reason, 0)})", now)
        if view.retries > old_retries:
            self._event("retry", view.short, f"{view.retries - old_retries} retry message(s)", now)
        if view.rejects > old_rejects:
            reasons = fields.get("rejects")
            detail = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) if isinstance(reasons, Mapping) else ""
            self._event("reject", view.short, f"rejected {view.rejects - old_rejects} message(s) [{detail}]", now)
        if view.state == "budget_exhausted" and old_state != "budget_exhausted":
            eps = f" at epsilon {view.epsilon:.3f}" if view.epsilon is not None else ""
            self._event("budget", view.short, f"privacy budget exhausted{eps}: stopped sharing", now)

    # ------------------------------------------------------------------ queries

    def rows(self, sort_key: str = "peer", text_filter: str = "") -> list[PeerView]:
        views = list(self.peers.values())
        f = text_filter.strip().lower()
        if f:
            views = [v for v in views if f in v.short or f in v.shown_state or f in str(v.round)]
        key = {
            "peer": lambda v: v.short,
            "state": lambda v: (v.shown_state, v.short),
            "round": lambda v: (-v.round, v.short),
            "accuracy": lambda v: (-(v.accuracy if v.accuracy is not None else -1.0), v.short),
            "epsilon": lambda v: (-(v.epsilon if v.epsilon is not None else -1.0), v.short),
            "last_seen": lambda v: (-v.last_seen, v.short),
        }.get(sort_key, lambda v: v.short)
        return sorted(views, key=key)

    def live_count(self) -> int:
        return sum(1 for v in self.peers.values() if v.live)

    def current_round(self) -> int:
        """The highest round among live peers (among all known peers once none is live)."""
        live = [v.round for v in self.peers.values() if v.live]
        known = live or [v.round for v in self.peers.values()]
        return max(known) if known else 0

    def neighbourhoods(self) -> list[tuple[str, list[str]]]:
        """Who averaged with whom in each peer's last completed round (short ids; gone peers last)."""
        rows = self.rows("peer")
        return [(v.short if v.live else f"{v.short} (gone)", sorted(v.neighbours))
                for v in [r for r in rows if r.live] + [r for r in rows if not r.live]]

    def series(self, metric: str) -> dict[str, list[float]]:
        """Per peer, the metric by round (accuracy, loss, duration), in round order."""
        attr = {"accuracy": "accuracy_by_round", "loss": "loss_by_round", "duration": "duration_by_round"}[metric]
        out = {}
        for v in self.rows("peer"):
            data = getattr(v, attr)
            out[v.short] = [data[r] for r in sorted(data)]
        return out

    def spread_by_round(self) -> list[float]:
        """Accuracy spread (max - min over peers) per round: how far the nodes are from agreeing.

        Statuses carry no model (that would defeat secure aggregation), so the dashboard measures
        disagreement on what they do carry: the nodes' test accuracies on the common test set.
        """
        rounds: dict[int, list[float]] = {}
        for v in self.peers.values():
            for r, a in v.accuracy_by_round.items():
                rounds.setdefault(r, []).append(a)
        return [max(a) - min(a) for r, a in sorted(rounds.items()) if len(a) >= 2]
