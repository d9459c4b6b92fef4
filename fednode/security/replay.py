"""Replay protection and repeat-offender bans for verified envelopes.

:class:`ReplayGuard` is split into :meth:`~ReplayGuard.seen` (check) and
:meth:`~ReplayGuard.record` (remember) so the verifier records a message only after every
other check passed: a rejected message must not occupy a slot that would make a later
legitimate one look like a duplicate.

Both caches are bounded: entries live for ``nonce_ttl_s`` and the oldest are evicted beyond
``max_entries``. The TTL must cover the whole acceptance window of a timestamp (2 x the
±window) so a replay cannot outlive its cache entry and still pass the timestamp check.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable


class _ExpiringSet:
    """Keys with an expiry time, oldest first; bounded by ``max_entries`` (oldest evicted)."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = float(ttl_s)
        self.max_entries = int(max_entries)
        self._expiry: OrderedDict[Hashable, float] = OrderedDict()
        self._head = float("inf")
        """A lower bound on the oldest entry's expiry (exact after a prune): while ``now`` is below it
        and the set is within ``max_entries``, nothing can be due, so :meth:`add` skips the prune."""

    def __contains__(self, item: tuple[Hashable, float]) -> bool:
        key, now_s = item
        exp = self._expiry.get(key)
        return exp is not None and exp > now_s

    def fresh(self, key: Hashable, now_s: float) -> bool:
        """``(key, now_s) in self`` without building the pair (the verifier asks twice per message)."""
        exp = self._expiry.get(key)
        return exp is not None and exp > now_s

    def add(self, key: Hashable, now_s: float) -> None:
        d = self._expiry
        if key in d:
            d.move_to_end(key)  # the old head may move back: _head stays a lower bound
        exp = d[key] = now_s + self.ttl_s
        if len(d) == 1:
            self._head = exp
        elif now_s < self._head and len(d) <= self.max_entries:
            return  # the common case: nothing is due (two adds per accepted message)
        self.prune(now_s)

    def prune(self, now_s: float) -> None:
        d = self._expiry
        while d and not next(iter(d.values())) > now_s:  # oldest first: stop at the first live entry
            d.popitem(last=False)
        while len(d) > self.max_entries:
            d.popitem(last=False)
        self._head = next(iter(d.values())) if d else float("inf")

    def __len__(self) -> int:
        return len(self._expiry)


class ReplayGuard:
    """Remembers (sender, nonce) and (sender, uniqueness key) of accepted messages for a TTL.

    The uniqueness key is whatever the caller passes; the envelope verifier uses
    ``(msg_type, round, attempt, recipient)``, so the remembered tuple is
    (sender, type, round, attempt, recipient).
    """

    def __init__(self, nonce_ttl_s: float = 120.0, max_entries: int = 100_000) -> None:
        if nonce_ttl_s <= 0 or max_entries < 1:
            raise ValueError("nonce_ttl_s must be > 0 and max_entries >= 1")
        self.nonce_ttl_s = float(nonce_ttl_s)
        self.max_entries = int(max_entries)
        self._nonces = _ExpiringSet(nonce_ttl_s, max_entries)
        self._keys = _ExpiringSet(nonce_ttl_s, max_entries)

    def seen(self, sender: bytes, nonce: bytes, key: Hashable, now_s: float) -> str | None:
        """The reject reason ('replay_nonce' or 'duplicate') if already recorded, else None. Records nothing."""
        exp = self._nonces._expiry.get((sender, nonce))  # _ExpiringSet.fresh, inlined: twice per message
        if exp is not None and exp > now_s:
            return "replay_nonce"
        exp = self._keys._expiry.get((sender, key))
        if exp is not None and exp > now_s:
            return "duplicate"
        return None

    def record(self, sender: bytes, nonce: bytes, key: Hashable, now_s: float) -> None:
        """Remember an accepted message (call only after every other check passed)."""
        self._nonces.add((sender, nonce), now_s)
        self._keys.add((sender, key), now_s)

    def __len__(self) -> int:
        """Number of remembered nonces (expired ones may linger until the next record)."""
        return len(self._nonces)


class OffenderTracker:
    """Bans an authenticated sender that keeps sending bad messages.

    Only rejects the sender is provably responsible for belong here (a validly signed message
    whose signed content is wrong), never ones a third party can cause by replaying captured
    traffic. A repeated ``token`` (e.g. the nonce of a replayed bad message) counts once per
    window, so replaying one bad message cannot get its author banned.
    """

    def __init__(self, threshold: int = 20, window_s: float = 60.0, ban_s: float = 300.0) -> None:
        if threshold < 1 or window_s <= 0 or ban_s <= 0:
            raise ValueError("threshold >= 1, window_s > 0 and ban_s > 0 required")
        self.threshold = int(threshold)
        self.window_s = float(window_s)
        self.ban_s = float(ban_s)
        self._events: dict[bytes, deque[tuple[float, Hashable]]] = {}
        self._banned_until: dict[bytes, float] = {}

    def note(self, sender: bytes, now_s: float, token: Hashable | None = None) -> bool:
        """Count one offence; returns True when this offence triggers a ban."""
        events = self._events.setdefault(sender, deque())
        while events and events[0][0] <= now_s - self.window_s:
            events.popleft()
        if token is not None and any(t == token for _, t in events):
            return False
        events.append((now_s, token))
        if len(events) >= self.threshold:
            self._banned_until[sender] = now_s + self.ban_s
            events.clear()
            return True
        return False

    def is_banned(self, sender: bytes, now_s: float) -> bool:
        until = self._banned_until.get(sender)
        if until is None:
            return False
        if now_s >= until:
            del self._banned_until[sender]
            return False
        return True

    def offences(self, sender: bytes, now_s: float) -> int:
        """Offences of ``sender`` inside the current window (for metrics and tests)."""
        return sum(1 for t, _ in self._events.get(sender, ()) if t > now_s - self.window_s)
