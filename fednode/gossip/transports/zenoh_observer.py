"""Read-only Zenoh clients: the dashboard's observer, the wire tap of the tests, ``fednode status``.

They declare no liveliness token, so nodes never count them as peers. Part of the Zenoh transport
(:mod:`fednode.gossip.transports.zenoh_transport`, which re-exports these names).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zenoh

from fednode.gossip.transports import keyexpr
from fednode.gossip.transports.zenoh_settings import (TransportError, ZenohSettings, _close_once, _replies,
                                                      open_session)

log = logging.getLogger("fednode.transport")

# ---------------------------------------------------------------------------- observers


class _PassiveSession:
    """Lifecycle shared by the read-only clients: open one session, declare, close everything once."""

    def __init__(self, settings: ZenohSettings) -> None:
        settings.check()
        self.settings = settings
        self._lock = threading.Lock()
        self._session = None
        self._declared: list = []
        self._closed = False

    def _open(self, declare: Callable[[object], list]) -> None:
        """Open the session and declare what ``declare(session)`` returns; on any failure close all."""
        if self._closed:
            raise TransportError(f"this {type(self).__name__} was closed; create a new one")
        if self._session is not None:
            return
        try:
            session = self._session = open_session(self.settings)
            self._declared.extend(declare(session))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        _close_once(self)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class ZenohObserver(_PassiveSession):
    """Read-only view of a federation (dashboards, ``fednode status``).

    Subscribes to status and liveliness and can query every live peer's last status; declares no
    liveliness token, so nodes never count it as a peer. ``settings.peer_id`` is not used on the
    wire (any 32 bytes do).
    """

    def __init__(self, settings: ZenohSettings, *, on_status: Callable[[bytes, bytes], None] | None = None,
                 on_peer_joined: Callable[[bytes], None] | None = None,
                 on_peer_left: Callable[[bytes], None] | None = None) -> None:
        super().__init__(settings)
        self._fed = settings.federation
        self._on_status, self._on_joined, self._on_left = on_status, on_peer_joined, on_peer_left
        self._live: set[bytes] = set()
        self._statuses: dict[bytes, bytes] = {}

    def start(self) -> None:
        self._open(lambda session: [
            session.declare_subscriber(keyexpr.status(self._fed), self._status_cb),
            session.liveliness().declare_subscriber(keyexpr.alive(self._fed), self._alive_cb, history=True)])

    def live_peers(self) -> set[bytes]:
        with self._lock:
            return set(self._live)

    def statuses(self) -> dict[bytes, bytes]:
        """The last status bytes seen from each peer (published or queried)."""
        with self._lock:
            return dict(self._statuses)

    def snapshot(self, timeout_s: float = 2.0) -> dict[bytes, bytes]:
        """Ask every live peer for its last status now (status queryables); also kept for statuses()."""
        session = self._session
        if session is None or self._closed:
            return {}
        out: dict[bytes, bytes] = {}
        for key, data in _replies(session, keyexpr.status(self._fed), timeout_s, remote_only=False):
            peer = keyexpr.peer_from_key(key)
            if peer is not None:
                out[peer] = data
        with self._lock:
            self._statuses.update(out)
        return out

    def _status_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None:
                return
            data = sample.payload.to_bytes()
            with self._lock:
                self._statuses[peer] = data
            if self._on_status is not None:
                self._on_status(peer, data)
        except Exception:  # noqa: BLE001
            log.exception("status callback failed")

    def _alive_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None:
                return
            joined = sample.kind == zenoh.SampleKind.PUT
            with self._lock:
                changed = (peer not in self._live) if joined else (peer in self._live)
                if joined:
                    self._live.add(peer)
                else:
                    self._live.discard(peer)
                    self._statuses.pop(peer, None)
            callback = self._on_joined if joined else self._on_left
            if changed and callback is not None:
                callback(peer)
        except Exception:  # noqa: BLE001
            log.exception("liveliness callback failed")


class ZenohTap(_PassiveSession):
    """A passive listener on everything under ``fednode/<federation>/**`` (tests, audits).

    This is what an eavesdropper on the federation's Zenoh traffic sees: it hands each sample's key
    and raw bytes to ``on_sample`` and never publishes, queries or declares liveliness. The tests use
    it to show that masked contributions look uniform on the wire and that every release a node
    made is in its privacy ledger.
    """

    def __init__(self, settings: ZenohSettings, on_sample: Callable[[str, bytes], None]) -> None:
        super().__init__(settings)
        self._on_sample = on_sample
        self.samples = 0

    def start(self) -> None:
        self._open(lambda session: [
            session.declare_subscriber(f"{keyexpr.root(self.settings.federation)}/**", self._cb)])

    def _cb(self, sample) -> None:
        if self._closed:
            return
        try:
            self.samples += 1
            self._on_sample(str(sample.key_expr), sample.payload.to_bytes())
        except Exception:  # noqa: BLE001 - a callback must never raise into zenoh
            log.exception("tap callback failed")


def list_status(settings: ZenohSettings, timeout_s: float = 3.0) -> dict[bytes, bytes]:
    """One-shot ``fednode status``: every live peer's last signed status (unverified bytes).

    Opens an observer, then queries ``status/*`` until every live peer (liveliness) has answered
    or ``timeout_s`` has passed, and returns what it has. Peers that never published a status yet
    are missing from the result.
    """
    deadline = time.monotonic() + max(0.1, timeout_s)
    with ZenohObserver(settings) as obs:
        got: dict[bytes, bytes] = {}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got.update(obs.snapshot(timeout_s=min(1.0, left)))
            got.update(obs.statuses())
            live = obs.live_peers()
            if live and live <= got.keys():
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return got
