"""In-memory transport: the Zenoh transport's interface over a process-local hub.

Used by tests that run real node runtimes (threads, real clocks) without a network.
One :class:`MemoryHub` is a federation; each :class:`MemoryTransport` joins it. A
single delivery thread per hub calls the recipients' callbacks in order, so callbacks
never run on the sender's thread (as with Zenoh). Optional seeded loss for tests.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable


class MemoryHub:
    """A federation on one process: membership plus ordered delivery on one thread."""

    def __init__(self, *, loss: float = 0.0, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._members: dict[bytes, "MemoryTransport"] = {}
        self._queue: queue.Queue = queue.Queue()
        self._loss = loss
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name="memory-hub", daemon=True)
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # a callback's bug must not kill delivery for everyone
                pass

    def _post(self, fn: Callable, *args) -> None:
        if not self._closed:
            self._queue.put((fn, args))

    def join(self, transport: "MemoryTransport") -> list[bytes]:
        with self._lock:
            existing = list(self._members)
            self._members[transport.peer_id] = transport
            others = [t for p, t in self._members.items() if p != transport.peer_id]
        for other in others:
            self._post(other.on_peer_joined, transport.peer_id)
        return existing

    def leave(self, transport: "MemoryTransport") -> None:
        with self._lock:
            if self._members.get(transport.peer_id) is not transport:
                return
            del self._members[transport.peer_id]
            others = list(self._members.values())
        for other in others:
            self._post(other.on_peer_left, transport.peer_id)

    def deliver(self, peer: bytes, data: bytes) -> bool:
        with self._lock:
            target = self._members.get(peer)
            drop = self._loss and self._rng.random() < self._loss
        if target is None or drop:
            return False
        self._post(target._receive, data)
        return True

    def members(self) -> list[bytes]:
        with self._lock:
            return list(self._members)

    def transport(self, peer: bytes) -> "MemoryTransport | None":
        with self._lock:
            return self._members.get(peer)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=5)


class MemoryTransport:
    """Same surface as :class:`fednode.gossip.transports.zenoh_transport.ZenohTransport`."""

    def __init__(self, hub: MemoryHub, peer_id: bytes, *, on_message: Callable[[bytes], None],
                 on_peer_joined: Callable[[bytes], None], on_peer_left: Callable[[bytes], None],
                 on_status: Callable[[bytes, bytes], None] | None = None,
                 model_provider: Callable[[], bytes | None] | None = None) -> None:
        self.hub = hub
        self.peer_id = peer_id
        self.on_message = on_message
        self.on_peer_joined = on_peer_joined
        self.on_peer_left = on_peer_left
        self.on_status = on_status
        self.model_provider = model_provider
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = 0
        self._live: set[bytes] = set()
        self._open = False

    def start(self) -> None:
        self._open = True
        for peer in self.hub.join(self):
            self.hub._post(self.on_peer_joined, peer)

    def _receive(self, data: bytes) -> None:
        if self._open:
            self.bytes_received += len(data)
            self.messages_received += 1
            self.on_message(data)

    def send(self, peer_id: bytes, data: bytes) -> None:
        if self._open:
            self.bytes_sent += len(data)
            self.messages_sent += 1
            self.hub.deliver(peer_id, data)

    def broadcast(self, data: bytes) -> None:
        for peer in self.hub.members():
            if peer != self.peer_id:
                self.send(peer, data)

    def publish_status(self, data: bytes) -> None:
        for peer in self.hub.members():
            t = self.hub.transport(peer)
            if t is not None and t.on_status is not None and peer != self.peer_id:
                self.hub._post(t.on_status, self.peer_id, data)

    def fetch_model(self, peer_id: bytes | None = None, timeout_s: float = 3.0) -> list[bytes]:
        peers = [peer_id] if peer_id is not None else [p for p in self.hub.members() if p != self.peer_id]
        out = []
        for p in peers:
            t = self.hub.transport(p)
            if t is not None and t.model_provider is not None:
                data = t.model_provider()
                if data is not None:
                    out.append(data)
        return out

    def live_peers(self) -> set[bytes]:
        return {p for p in self.hub.members() if p != self.peer_id}

    def close(self) -> None:
        if self._open:
            self._open = False
            self.hub.leave(self)

    def __enter__(self) -> "MemoryTransport":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
