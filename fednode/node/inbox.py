"""A bound on what the transport may queue for the main loop (flood protection).

Zenoh callbacks hand every received envelope to the runtime's event queue, and the main loop
verifies them one by one. Whoever can reach the node's keys can send faster than it verifies, so
without a bound the backlog (and RSS) grows with the flood. :class:`InboundBudget` caps the queued
messages and bytes; past the cap a message is dropped before anything looks at it and counted
(``inbound_dropped`` in the status). Honest traffic can then be lost too, as with any overload:
the round's timeouts and RETRYs handle loss, and the bound keeps the node alive and its memory flat.
"""

from __future__ import annotations

import threading

MAX_QUEUED_MESSAGES = 50_000
MAX_QUEUED_BYTES = 512 * 1024 * 1024


class InboundBudget:
    """Thread-safe counters of queued messages/bytes; :meth:`admit` on arrival, :meth:`release` on take."""

    def __init__(self, max_messages: int = MAX_QUEUED_MESSAGES, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.queued_messages = 0
        self.queued_bytes = 0
        self.dropped = 0
        self.peak_messages = 0

    def admit(self, nbytes: int) -> bool:
        with self._lock:
            if self.queued_messages + 1 > self.max_messages or self.queued_bytes + nbytes > self.max_bytes:
                self.dropped += 1
                return False
            self.queued_messages += 1
            self.queued_bytes += nbytes
            self.peak_messages = max(self.peak_messages, self.queued_messages)
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.queued_messages -= 1
            self.queued_bytes -= nbytes
