"""One sending thread per destination, so that a link that takes nothing holds only its own messages.

Why: model payloads go out with Zenoh's blocking congestion control (a dropped contribution would
cost a RETRY), and a blocking put waits up to the link's ``wait_before_close`` (Zenoh's default
5 s) when the link takes nothing, as with a peer behind a partition or a hung process, and then
closes that link. Measured on loopback: a put to a SIGSTOPped peer blocked 5.0 s, and the puts
after it returned at once. When the node's round loop made that put itself, it stopped for the
5 s, once per neighbour across the cut: a group stalled 15.7 s of a 20 s partition (issue 10).
Here the loop only queues a message. The put runs on the destination's own thread, and Zenoh
releases the GIL while it waits (the main thread's longest pause during a 5 s blocked put was
15 ms).

The queues are bounded. At most ``max_messages`` and ``max_bytes`` wait per destination; beyond
that the oldest are dropped and counted in ``dropped``. The round protocol tolerates lost
messages (re-sends, RETRY, timeouts), and a message that old is stale anyway. Order is kept per
destination. A thread ends after ``idle_s`` without messages. ``flush`` waits, bounded, until
everything queued has been handed over. ``close`` discards what is left and stops the threads.
Pure Python: the transport passes its own ``put``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fednode.transport")


class _Lane:
    __slots__ = ("items", "nbytes", "busy", "thread")

    def __init__(self) -> None:
        self.items: deque[tuple[bytes, dict[str, Any]]] = deque()
        self.nbytes = 0
        self.busy = False
        self.thread: threading.Thread | None = None


class SendLanes:
    """Per-key FIFO queues, each drained by a thread of its own into ``put(key, data, **kw)``."""

    def __init__(self, put: Callable[..., None], *, max_messages: int = 256, max_bytes: int = 64 << 20,
                 idle_s: float = 30.0, name: str = "fednode-send") -> None:
        if max_messages < 1 or max_bytes < 1 or idle_s <= 0:
            raise ValueError("max_messages >= 1, max_bytes >= 1 and idle_s > 0 required")
        self._put = put
        self.max_messages, self.max_bytes, self.idle_s, self.name = max_messages, max_bytes, idle_s, name
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._closed = False
        self.dropped = 0
        """Messages dropped because their destination's queue was full (oldest first)."""

    def submit(self, key: str, data: bytes, **kw: Any) -> bool:
        """Queue ``data`` for ``key`` and return at once; False (nothing queued) once closed."""
        with self._cond:
            if self._closed:
                return False
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            lane.items.append((data, kw))
            lane.nbytes += len(data)
            while len(lane.items) > self.max_messages or (lane.nbytes > self.max_bytes and len(lane.items) > 1):
                old, _ = lane.items.popleft()
                lane.nbytes -= len(old)
                self.dropped += 1
            if lane.thread is None:
                lane.thread = threading.Thread(target=self._drain, args=(key, lane), daemon=True,
                                               name=f"{self.name}-{len(self._lanes)}")
                lane.thread.start()
            else:
                self._cond.notify_all()
        return True

    def _drain(self, key: str, lane: _Lane) -> None:
        while True:
            with self._cond:
                idle_until = time.monotonic() + self.idle_s
                while not lane.items and not self._closed:
                    left = idle_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed or not lane.items:  # closed, or idle long enough: this lane retires
                    lane.items.clear()
                    lane.nbytes = 0
                    lane.thread = None
                    if self._lanes.get(key) is lane:
                        del self._lanes[key]
                    self._cond.notify_all()
                    return
                data, kw = lane.items.popleft()
                lane.nbytes -= len(data)
                lane.busy = True
            try:
                self._put(key, data, **kw)
            except Exception:  # noqa: BLE001 - a lane must outlive one failed put; the transport counts it
                log.exception("put on %s failed", key)
            finally:
                with self._cond:
                    lane.busy = False
                    self._cond.notify_all()

    def pending(self) -> int:
        """Messages queued or being put right now."""
        with self._cond:
            return sum(len(lane.items) + lane.busy for lane in self._lanes.values())

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been handed to ``put``; False if ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(lane.items or lane.busy for lane in self._lanes.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Discard what is queued and stop the threads. A thread blocked inside ``put`` ends when its
        put returns: close the transport's session first, which makes that happen. Idempotent."""
        with self._cond:
            self._closed = True
            threads = [lane.thread for lane in self._lanes.values() if lane.thread is not None]
            for lane in self._lanes.values():
                lane.items.clear()
                lane.nbytes = 0
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


__all__ = ["SendLanes"]
