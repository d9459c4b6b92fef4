"""Zenoh transport: peer-mode sessions, scouting, liveliness membership, per-recipient delivery.

With the rest of ``gossip/transports/`` this is the only part of fednode that imports zenoh. It
moves opaque bytes: every payload is a signed envelope that the state machine verifies. The key
layout is documented in :mod:`fednode.gossip.transports.keyexpr`.

Discovery
    Multicast scouting on a configurable interface and group (``interface="lo"`` keeps it on this
    machine, which every test and the testnet do; a distinct ``multicast_address`` per testnet or
    test keeps runs apart) plus gossip scouting, which gives a full mesh (Zenoh 1.x peers do not
    relay for each other). ``connect`` endpoints reach peers or a Zenoh router beyond one LAN;
    ``mode="client"`` joins through a router only.

Membership
    Each node declares a liveliness token ``alive/<peer>`` once it is ready to receive. The others
    see it appear (``on_peer_joined``) and disappear (``on_peer_left``): a closed or killed process
    within milliseconds (its TCP links close), a hung one or a cut link after ``lease_ms``. Zenoh
    aggregates tokens per key, so a node restarted under the same id while its old session still
    lingers is not reported as left. The own peer is never reported.

Status and models
    ``publish_status`` puts the signed status on ``status/<me>`` and keeps it; a queryable on the
    same key answers it, so :func:`list_status` (one-shot ``fednode status``) gets every live
    peer's last status with one query, and :class:`ZenohObserver` (dashboards) subscribes without
    a liveliness token of its own. With a ``model_provider``, a queryable on ``model/<me>`` serves
    the current signed model (late joiners call :meth:`ZenohTransport.fetch_model`).

Threads
    Callbacks run on Zenoh's threads: they hand bytes to the caller's callbacks (which the node
    runtime turns into queue puts), never raise (errors are logged and counted in
    ``callback_errors``) and must not block for long; ``model_provider`` must return cached bytes.
    Never call ``close()`` from inside a callback. ``send`` and ``broadcast`` only queue: each
    destination has a thread of its own that puts with blocking congestion control
    (:mod:`~fednode.gossip.transports.send_lanes`), so a peer that takes nothing (behind a
    partition, hung) holds its own messages, up to Zenoh's 5 s ``wait_before_close``, and never
    the caller. ``messages_sent``/``bytes_sent`` count what was handed over; ``send_dropped``
    counts messages a full queue dropped.

Every session is closed on every path: ``close()`` is idempotent, ``start()`` closes what it
opened when it fails, and both classes are context managers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zenoh

from fednode.gossip.transports import keyexpr
from fednode.gossip.transports.send_lanes import SendLanes
from fednode.gossip.transports.zenoh_settings import (_ZENOH_LOCATION, TransportError, ZenohSettings, _close_all,
                                                      _close_once, _explain, _replies, open_session)

log = logging.getLogger("fednode.transport")

FLUSH_S = 1.0
"""How long ``close()`` waits for queued messages to be handed to Zenoh (a node's last COMMITs)."""

# ---------------------------------------------------------------------------- transport


class ZenohTransport:
    """One node's link to its federation (the surface of ``MemoryTransport``)."""

    def __init__(self, settings: ZenohSettings, *, on_message: Callable[[bytes], None],
                 on_peer_joined: Callable[[bytes], None], on_peer_left: Callable[[bytes], None],
                 on_status: Callable[[bytes, bytes], None] | None = None,
                 model_provider: Callable[[], bytes | None] | None = None) -> None:
        settings.check()
        self.settings = settings
        self.me = bytes(settings.peer_id)
        self._fed = settings.federation
        self._on_message = on_message
        self._on_joined = on_peer_joined
        self._on_left = on_peer_left
        self._on_status = on_status
        self._model_provider = model_provider
        self._lock = threading.Lock()
        self._live: set[bytes] = set()
        self._session = None
        self._declared: list = []
        self._last_status: bytes | None = None
        self._started = False
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.send_errors = 0
        self.callback_errors = 0
        self._lanes = SendLanes(self._put, name=f"fednode-send-{self.me.hex()[:8]}")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the session; subscribe (own inbox, broadcast, liveliness with history, status);
        declare the status and model queryables; declare the liveliness token last, once ready."""
        with self._lock:
            if self._closed:
                raise TransportError("this transport was closed; create a new one")
            if self._started:
                return
            self._started = True
        try:
            session = open_session(self.settings)
        except BaseException:
            self.close()
            raise
        with self._lock:
            closed_meanwhile = self._closed
            if not closed_meanwhile:
                self._session = session
        if closed_meanwhile:  # close() ran while the session was opening
            _close_all([], session)
            raise TransportError("the transport was closed while starting")
        fed, me = self._fed, self.me
        try:
            declare = self._declared.append
            declare(session.declare_subscriber(keyexpr.inbox(fed, me), self._message_cb))
            declare(session.declare_subscriber(keyexpr.bcast(fed), self._message_cb,
                                               allowed_origin=zenoh.Locality.REMOTE))
            if self._on_status is not None:
                declare(session.declare_subscriber(keyexpr.status(fed), self._status_cb,
                                                   allowed_origin=zenoh.Locality.REMOTE))
            declare(session.declare_queryable(keyexpr.status(fed, me), self._status_query))
            if self._model_provider is not None:
                declare(session.declare_queryable(keyexpr.model(fed, me), self._model_query))
            declare(session.liveliness().declare_subscriber(keyexpr.alive(fed), self._alive_cb, history=True))
            declare(session.liveliness().declare_token(keyexpr.alive(fed, me)))
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and not isinstance(exc, TransportError):
                raise TransportError(_explain(exc, self.settings)) from None
            raise

    def close(self) -> None:
        """Hand over what is queued (at most ``FLUSH_S``), undeclare everything (the token first: the
        others see this node leave), close the session (a put still blocked returns), stop the senders."""
        if not self._closed:
            self._lanes.flush(FLUSH_S)
        _close_once(self)
        self._lanes.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ZenohTransport":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def _count_out(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
            self.messages_sent += 1

    def _count_in(self, n: int) -> None:
        with self._lock:
            self.bytes_received += n
            self.messages_received += 1

    def _put(self, key: str, data: bytes, **kw) -> bool:
        session = self._session
        if session is None or self._closed:
            log.debug("put on %s dropped: transport not running", key)
            return False
        try:
            session.put(key, data, **kw)
        except Exception as exc:  # noqa: BLE001 - a closing session: the protocol tolerates loss
            with self._lock:
                self.send_errors += 1
            log.warning("put on %s failed: %s", key, _ZENOH_LOCATION.sub("", str(exc)))
            return False
        return True

    def _queue(self, key: str, data: bytes, **kw) -> None:
        if self._session is None or self._closed:
            log.debug("send on %s dropped: transport not running", key)
            return
        if self._lanes.submit(key, data, **kw):
            self._count_out(len(data))

    def send(self, peer_id: bytes, data: bytes) -> None:
        """Queue ``data`` for ``peer_id`` only (its inbox key); never blocks (see Threads above)."""
        self._queue(keyexpr.inbox(self._fed, peer_id), bytes(data), congestion_control=zenoh.CongestionControl.BLOCK)

    def broadcast(self, data: bytes) -> None:
        """Queue ``data`` for every other peer of the federation (not this one); never blocks."""
        self._queue(keyexpr.bcast(self._fed), bytes(data), congestion_control=zenoh.CongestionControl.BLOCK,
                    allowed_destination=zenoh.Locality.REMOTE)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message was handed to Zenoh; False if ``timeout_s`` ran out first."""
        return self._lanes.flush(timeout_s)

    @property
    def send_dropped(self) -> int:
        """Messages dropped because a destination's queue was full (a peer that took nothing for long)."""
        return self._lanes.dropped

    def publish_status(self, data: bytes) -> None:
        """Publish the signed status and keep it for the status queryable (best effort: never blocks)."""
        data = bytes(data)
        self._last_status = data
        if self._put(keyexpr.status(self._fed, self.me), data, congestion_control=zenoh.CongestionControl.DROP,
                     priority=zenoh.Priority.DATA_LOW, allowed_destination=zenoh.Locality.REMOTE):
            self._count_out(len(data))

    def fetch_model(self, peer_id: bytes | None = None, timeout_s: float = 3.0) -> list[bytes]:
        """The models that ``peer_id`` (or every other live peer, when None) serve, within ``timeout_s``.

        Returns as soon as every matching queryable has answered; peers without a model answer
        nothing. Blocks the calling thread: never call it from a transport callback.
        """
        session = self._session
        if session is None or self._closed:
            return []
        key = keyexpr.model(self._fed, peer_id)
        try:
            replies = _replies(session, key, timeout_s, remote_only=peer_id is None)
        except Exception as exc:  # noqa: BLE001
            log.warning("model query on %s failed: %s", key, _ZENOH_LOCATION.sub("", str(exc)))
            return []
        out = []
        for rkey, data in replies:
            peer = keyexpr.peer_from_key(rkey)
            if peer is None or (peer_id is None and peer == self.me):
                continue
            self._count_in(len(data))
            out.append(data)
        return out

    def live_peers(self) -> set[bytes]:
        """Peers whose liveliness token is visible now (never this node)."""
        with self._lock:
            return set(self._live)

    # ------------------------------------------------------------------ callbacks (Zenoh threads)

    def _message_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            data = sample.payload.to_bytes()
            self._count_in(len(data))
            self._on_message(data)
        except Exception:  # noqa: BLE001 - never raise into Zenoh
            self.callback_errors += 1
            log.exception("message callback failed")

    def _alive_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is None or peer == self.me:
                return
            joined = sample.kind == zenoh.SampleKind.PUT
            with self._lock:
                changed = (peer not in self._live) if joined else (peer in self._live)
                if joined:
                    self._live.add(peer)
                else:
                    self._live.discard(peer)
            if changed:
                (self._on_joined if joined else self._on_left)(peer)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("liveliness callback failed")

    def _status_cb(self, sample) -> None:
        if self._closed:
            return
        try:
            peer = keyexpr.peer_from_key(str(sample.key_expr))
            if peer is not None and peer != self.me and self._on_status is not None:
                data = sample.payload.to_bytes()
                self._count_in(len(data))
                self._on_status(peer, data)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("status callback failed")

    def _status_query(self, query) -> None:
        try:
            data = self._last_status
            if data is not None and not self._closed:
                query.reply(keyexpr.status(self._fed, self.me), data)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("status query failed")

    def _model_query(self, query) -> None:
        try:
            data = self._model_provider() if self._model_provider is not None and not self._closed else None
            if data is not None:
                data = bytes(data)
                query.reply(keyexpr.model(self._fed, self.me), data)
                self._count_out(len(data))
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("model query failed")


# the settings and the read-only clients live in modules of their own; importable from here as before
from fednode.gossip.transports.zenoh_observer import (  # noqa: E402,F401
    ZenohObserver, ZenohTap, _PassiveSession, list_status)
from fednode.gossip.transports.zenoh_settings import (  # noqa: E402,F401
    _ENDPOINT, _check_endpoint, _check_multicast_address)

__all__ = ["TransportError", "ZenohObserver", "ZenohSettings", "ZenohTap", "ZenohTransport", "list_status",
           "open_session"]
