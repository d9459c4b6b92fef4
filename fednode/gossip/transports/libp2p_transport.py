"""libp2p transport: the surface of ``ZenohTransport`` over py-libp2p (Noise, yamux, TCP).

The only module of fednode that opens libp2p hosts (``pip install -e '.[libp2p]'``); framing,
identity binding and membership are pure modules beside it. It moves opaque bytes: every
payload is a signed envelope that the round verifies.

Streams
    Two protocols. ``/fednode/member/1.0.0``: one long-lived stream per direction between two
    members, carrying length-prefixed frames (:mod:`framing`): JOIN first, then MSG (envelopes),
    STATUS, PEERS (peer exchange) and PING (heartbeat every lease/3). gossipsub is not used: it
    drops messages over 1 MiB and rate-limits per topic. ``/fednode/query/1.0.0``: one request,
    one reply (status, model, peer list); open to observers (``fednode status``) except the model,
    which is served to admitted peers only. Frames over ``max_message_bytes`` (the envelope limit
    of the Zenoh path) are refused from their head, before the payload is read; a stream that
    ends inside a frame is truncated and nothing of it is delivered.

Identity (:mod:`binding`)
    The host key is the node's Ed25519 key, so the libp2p peer id is a function of its public key.
    A member stream whose remote peer id does not map to an allow-listed fednode id is reset, and
    an envelope whose sender is not that id is dropped (``refused["sender_mismatch"]``).

Membership (:mod:`membership`) and discovery
    Bootstrap multiaddrs (``/ip4/H/tcp/P/p2p/ID``), then peer exchange: each join sends every
    live member the list of live members, so a node that knows one peer finds the rest. A peer
    leaves when its process dies (its connection closes) or after ``lease_ms`` without a frame.
    No mDNS: py-libp2p's mDNS opens zeroconf on every interface and cannot be pinned to one.

Threads
    The trio event loop runs in a thread of its own. Callbacks run on it: they must be quick and
    never call back into this transport. ``send``/``broadcast`` block while the peer's queue is
    full (like Zenoh's blocking congestion control), at most until that peer's write times out.
    ``close()`` ends the loop, which closes every stream and the host; it is idempotent, and
    ``start()`` closes what it opened when it fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from fednode.gossip.transports import binding, framing
from fednode.gossip.transports.framing import FrameError, Kind
from fednode.gossip.transports.libp2p_settings import MULTIADDR, Libp2pSettings, TransportError, explain
from fednode.gossip.transports.libp2p_streams import (MEMBER_PROTOCOL, QUERY_PROTOCOL, discard, list_status,
                                                      new_host_for, query_all, reader, split_peer_addr,
                                                      write_frame)
from fednode.gossip.transports.membership import Membership

__all__ = ["Libp2pSettings", "Libp2pTransport", "TransportError", "list_status"]

log = logging.getLogger("fednode.transport")

QUEUE_FRAMES = 64
CONNECT_TIMEOUT_S = 5.0


class Libp2pTransport:
    """One node's link to its federation over libp2p (the surface of ``ZenohTransport``)."""

    def __init__(self, settings: Libp2pSettings, *, on_message: Callable[[bytes], None],
                 on_peer_joined: Callable[[bytes], None], on_peer_left: Callable[[bytes], None],
                 on_status: Callable[[bytes, bytes], None] | None = None,
                 model_provider: Callable[[], bytes | None] | None = None) -> None:
        settings.check()
        self.settings = settings
        self.me = settings.identity.peer_id
        self.libp2p_id = binding.libp2p_peer_id(settings.identity.public_key_bytes)
        self._on_message, self._on_joined, self._on_left = on_message, on_peer_joined, on_peer_left
        self._on_status, self._model_provider = on_status, model_provider
        self._lease = settings.lease_ms / 1000.0
        self._members = Membership(self.me)
        self._out: dict[bytes, tuple[trio.MemorySendChannel, trio.CancelScope]] = {}
        self._wants_status: set[bytes] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token = None
        self._host = None
        self._stop: trio.Event | None = None
        self._wake: trio.Event | None = None
        self._error: str | None = None
        self._last_status: bytes | None = None
        self._started = self._closed = False
        self.addrs: list[str] = []
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = 0
        self.wire_bytes_sent = 0
        self.send_errors = self.callback_errors = 0
        self.refused: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle (caller's thread)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the host on its own trio thread; return once it listens (or raise TransportError)."""
        if self._started or self._closed:
            raise TransportError("this transport was already started or closed; create a new one")
        self._started = True
        self._thread = threading.Thread(target=self._thread_main, name="libp2p", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None or self._closed:
            error = self._error or ("the transport was closed while starting" if self._closed
                                    else f"the libp2p host did not start within {timeout_s:.0f} s")
            self.close()
            raise TransportError(error)

    def close(self) -> None:
        """End the trio loop: every stream, connection and the host close; joins the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                log.warning("libp2p thread did not end within 15 s")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Libp2pTransport":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to start(), never raised on this thread
            if not self._ready.is_set():
                self._error = str(exc) if isinstance(exc, TransportError) else \
                    explain(exc, ", ".join(self.settings.listen))
            else:
                log.exception("libp2p event loop failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop, self._wake = trio.Event(), trio.Event()
        # py-libp2p listens with SO_REUSEPORT: a second host on a taken port would share it silently
        self.settings.preflight()
        host = self._host = new_host_for(binding.libp2p_key_pair(self.settings.identity), self.settings.listen)
        host.set_stream_handler(MEMBER_PROTOCOL, self._member_stream)
        host.set_stream_handler(QUERY_PROTOCOL, self._query_stream)
        async with host.run([multiaddr.Multiaddr(a) for a in self.settings.listen]):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                listening = [str(a) for a in host.get_transport_addrs()]
                if len(listening) < len(self.settings.listen):  # py-libp2p only logs a failed listen
                    raise TransportError(f"cannot listen on {', '.join(self.settings.listen)}")
                self.addrs = list(self.settings.announce) or listening
                for base, lp in map(split_peer_addr, self.settings.bootstrap):
                    fid = binding.fednode_id_of(lp, self.settings.allow_list)
                    if fid is not None:
                        self._members.learn(fid, lp, [base])
                self._token = trio.lowlevel.current_trio_token()
                if self._closed:
                    return
                self._ready.set()
                log.info("libp2p host listening on %s", ", ".join(f"{a}/p2p/{self.libp2p_id}" for a in listening))
                nursery.start_soon(self._dialer)
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ sending (caller's thread)

    def _call(self, async_fn, *args):
        token = self._token
        if token is None or self._closed:
            return None
        try:
            return trio.from_thread.run(async_fn, *args, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            return None

    def send(self, peer_id: bytes, data: bytes) -> None:
        """Deliver ``data`` to ``peer_id`` only; dropped when it is not live (the round tolerates loss)."""
        self._call(self._enqueue, [bytes(peer_id)], Kind.MSG, bytes(data))

    def broadcast(self, data: bytes) -> None:
        """Deliver ``data`` to every live peer (not to this one)."""
        self._call(self._enqueue, None, Kind.MSG, bytes(data))

    def publish_status(self, data: bytes) -> None:
        """Keep the signed status for status queries and push it to peers that asked for statuses."""
        self._last_status = bytes(data)
        self._call(self._enqueue, None, Kind.STATUS, self._last_status)

    def fetch_model(self, peer_id: bytes | None = None, timeout_s: float = 3.0) -> list[bytes]:
        """The models that ``peer_id`` (or every live peer) serve within ``timeout_s`` (blocks)."""
        return self._call(self._fetch_models, peer_id, timeout_s) or []

    def live_peers(self) -> set[bytes]:
        return self._members.live()

    # ------------------------------------------------------------------ trio side

    async def _enqueue(self, peers: list[bytes] | None, kind: Kind, data: bytes) -> None:
        if len(data) > self.settings.max_message_bytes:
            self.send_errors += 1
            log.warning("dropped a %d-byte message: over max_message_bytes", len(data))
            return
        targets = peers if peers is not None else sorted(self._members.live())
        for peer in targets:
            out = self._out.get(peer)
            if out is None or (kind == Kind.STATUS and peer not in self._wants_status):
                continue
            try:  # never waits: a peer whose stream takes nothing must not hold the caller's loop
                out[0].send_nowait((kind, data))
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.WouldBlock):
                self.send_errors += 1  # full: QUEUE_FRAMES wait already; the round tolerates the loss

    def _emit(self, events: list[tuple[str, bytes]]) -> None:
        if self._closed:
            return  # closing: no membership callbacks (as a closed Zenoh session reports none)
        for what, peer in events:
            try:
                (self._on_joined if what == "joined" else self._on_left)(peer)
            except Exception:  # noqa: BLE001 - never raise into the loop
                self.callback_errors += 1
                log.exception("membership callback failed")
            if what == "left":
                out = self._out.get(peer)
                if out is not None:
                    out[1].cancel()  # its outbound stream goes too: redialled when it is back
        if any(what == "joined" for what, _ in events) and self.settings.peer_exchange:
            listing = framing.pack_control({"p": [[lp, addrs] for lp, addrs in self._members.exchange()]})
            for _, send_ch_scope in list(self._out.items()):
                try:
                    send_ch_scope[0].send_nowait((Kind.PEERS, listing))
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass

    def _refuse(self, reason: str, detail: str = "") -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("libp2p: refused (%s) %s", reason, detail)

    async def _dialer(self) -> None:
        while True:
            for peer, entry in self._members.due_dials(time.monotonic()):
                self._nursery.start_soon(self._outbound, peer, entry.libp2p_id, list(entry.addrs))
            with trio.move_on_after(0.25):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _outbound(self, peer: bytes, libp2p_id: str, addrs: list[str]) -> None:
        send_ch, recv_ch = trio.open_memory_channel(QUEUE_FRAMES)
        stream, up = None, False
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                lp = ID.from_base58(libp2p_id)
                await self._host.connect(PeerInfo(lp, [multiaddr.Multiaddr(a) for a in addrs]))
                stream = await self._host.new_stream(lp, [MEMBER_PROTOCOL])
                join = {"f": self.settings.federation, "a": self.addrs, "s": self._on_status is not None}
                await write_frame(stream, Kind.JOIN, framing.pack_control(join), self.settings.max_message_bytes,
                                  self._lease)
            with trio.CancelScope() as scope:
                self._out[peer] = (send_ch, scope)
                up = True
                self._emit(self._members.outbound_up(peer))
                await self._write_loop(stream, recv_ch)
        except Exception as exc:  # noqa: BLE001 - dial refused, peer gone, write timed out
            log.debug("outbound stream to %s ended: %s", libp2p_id[-8:], exc)
        finally:
            if self._out.get(peer, (None,))[0] is send_ch:
                del self._out[peer]
            send_ch.close()
            recv_ch.close()
            if stream is not None:
                await discard(stream, reset=True)
            if up:
                self._emit(self._members.outbound_down(peer, time.monotonic()))
            else:
                self._members.dial_failed(peer, time.monotonic())

    async def _write_loop(self, stream, recv_ch) -> None:
        while True:
            kind, data = Kind.PING, b""
            with trio.move_on_after(self._lease / 3):
                kind, data = await recv_ch.receive()
            await write_frame(stream, kind, data, self.settings.max_message_bytes, self._lease)
            self.wire_bytes_sent += framing.HEAD_BYTES + len(data)
            if kind in (Kind.MSG, Kind.STATUS):
                self.bytes_sent += len(data)
                self.messages_sent += 1

    async def _member_stream(self, stream) -> None:
        peer, joined = None, False
        try:
            remote = stream.muxed_conn.peer_id
            peer = binding.fednode_id_of(remote.to_bytes(), self.settings.allow_list)
            if peer is None or peer == self.me:
                self._refuse("unknown_peer", f"member stream from {remote}")
                with trio.move_on_after(1.0):
                    await self._host.disconnect(remote)  # not a member: drop the whole connection
                return
            read = reader(stream, self._lease)
            frame = await framing.read_frame(read, self.settings.max_message_bytes)
            join = framing.unpack_control(frame.payload) if frame and frame.kind == Kind.JOIN else {}
            if join.get("f") != self.settings.federation:
                self._refuse("bad_join", f"from {remote}: no JOIN for this federation")
                return
            addrs = [a for a in framing.str_list(join.get("a", []), 8) if MULTIADDR.fullmatch(a)]
            self._members.learn(peer, remote.to_base58(), addrs)
            (self._wants_status.add if join.get("s") else self._wants_status.discard)(peer)
            joined = True
            self._emit(self._members.inbound_up(peer))
            self._wake.set()  # dial back at once if our stream to it is down
            while (frame := await framing.read_frame(read, self.settings.max_message_bytes)) is not None:
                self._on_frame(peer, frame)
        except FrameError as exc:
            self._refuse(exc.reason, str(exc))
        except trio.TooSlowError:
            log.info("libp2p: no frame from %s within the lease", peer.hex()[:12] if peer else "?")
        except Exception as exc:  # noqa: BLE001 - the peer closed or reset the stream
            log.debug("member stream ended: %s", exc)
        finally:
            await discard(stream, reset=True)
            if joined:
                self._emit(self._members.inbound_down(peer))

    def _on_frame(self, peer: bytes, frame: framing.Frame) -> None:
        if frame.kind in (Kind.MSG, Kind.STATUS):
            sender = binding.envelope_sender(frame.payload)
            if sender != peer:
                self._refuse("sender_mismatch", f"envelope of {sender.hex()[:12] if sender else '?'} on the "
                                                f"connection of {peer.hex()[:12]}")
                return
            self.bytes_received += len(frame.payload)
            self.messages_received += 1
            try:
                if frame.kind == Kind.MSG:
                    self._on_message(frame.payload)
                elif self._on_status is not None:
                    self._on_status(peer, frame.payload)
            except Exception:  # noqa: BLE001
                self.callback_errors += 1
                log.exception("message callback failed")
        elif frame.kind == Kind.PEERS and self.settings.peer_exchange:
            listing = framing.unpack_control(frame.payload).get("p", [])
            for item in listing if isinstance(listing, list) else []:
                if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
                    fid = binding.fednode_id_of(item[0], self.settings.allow_list)
                    addrs = [a for a in framing.str_list(item[1], 8) if MULTIADDR.fullmatch(a)]
                    if fid is not None and self._members.learn(fid, item[0], addrs):
                        self._wake.set()
        elif frame.kind != Kind.PING:
            self._refuse("unexpected_frame", f"{frame.kind.name} on a member stream")

    async def _query_stream(self, stream) -> None:
        try:
            peer = binding.fednode_id_of(stream.muxed_conn.peer_id.to_bytes(), self.settings.allow_list)
            frame = await framing.read_frame(reader(stream, self._lease), self.settings.max_message_bytes)
            what = framing.unpack_control(frame.payload).get("q") if frame and frame.kind == Kind.QUERY else None
            reply = b""
            if what == "status":
                reply = self._last_status or b""
            elif what == "peers":
                listing = [[self.libp2p_id, self.addrs], *[[lp, a] for lp, a in self._members.exchange()]]
                reply = framing.pack_control({"p": listing})
            elif what == "model" and peer is not None and self._model_provider is not None:
                reply = bytes(self._model_provider() or b"")
                self.bytes_sent += len(reply)
            await write_frame(stream, Kind.REPLY, reply, self.settings.max_message_bytes, self._lease)
        except FrameError as exc:
            self._refuse(exc.reason, f"query stream: {exc}")
        except Exception as exc:  # noqa: BLE001
            log.debug("query stream failed: %s", exc)
        finally:
            await discard(stream, reset=False)

    async def _fetch_models(self, peer_id: bytes | None, timeout_s: float) -> list[bytes]:
        peers = [peer_id] if peer_id is not None else sorted(self._members.live())
        entries = [e for e in (self._members.entry(p) for p in peers if p != self.me) if e is not None]
        out = await query_all(self._host, [(e.libp2p_id, e.addrs) for e in entries], "model",
                              self.settings.max_message_bytes, timeout_s)
        self.bytes_received += sum(len(d) for d in out)
        return out
