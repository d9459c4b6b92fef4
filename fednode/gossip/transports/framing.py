"""Length-prefixed frames for the libp2p transport's streams (pure: no libp2p, no trio).

A libp2p stream is a byte pipe; fednode's messages are whole envelopes. Each one travels as ::

    frame = kind (1 byte) | length (4 bytes, big-endian) | payload (length bytes)

The receiver reads the 5-byte head first and refuses a length above its limit *before* reading or
allocating the payload (the limit is ``RoundConfig.max_message_bytes``, the bound the envelope
check applies on the Zenoh path). A stream that ends inside a frame is truncated: the partial
frame is discarded, never delivered. Control payloads (JOIN, PEERS, queries) are msgpack maps
unpacked with explicit limits and no extension types.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgpack

HEAD = struct.Struct(">BI")
HEAD_BYTES = HEAD.size
CONTROL_MAX_BYTES = 256 * 1024
"""JOIN / PEERS / query frames carry ids and addresses only."""


class Kind(enum.IntEnum):
    JOIN = 1
    """First frame on a member stream: federation, listen addresses, whether status is wanted."""
    MSG = 2
    """A signed envelope for the receiver (unicast and broadcast alike)."""
    STATUS = 3
    """A signed status envelope (only to peers that asked for statuses in their JOIN)."""
    PEERS = 4
    """Peer exchange: the sender's live members and their addresses."""
    PING = 5
    """Heartbeat: an idle member stream still proves liveness within the lease."""
    QUERY = 6
    """Request on a query stream: ``{"q": "status" | "model" | "peers"}``."""
    REPLY = 7
    """The one answer on a query stream (empty payload: nothing to give)."""


_KINDS = frozenset(int(k) for k in Kind)
_CONTROL = frozenset({Kind.JOIN, Kind.PEERS, Kind.QUERY})


class FrameError(Exception):
    """A stream broke the framing rules; ``reason`` is oversize, truncated, unknown_kind or malformed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    kind: Kind
    payload: bytes


def encode(kind: Kind, payload: bytes, max_bytes: int) -> bytes:
    """One frame; ValueError when the payload exceeds ``max_bytes`` (never put on the wire)."""
    n = len(payload)
    if n > max_bytes or n > 0xFFFFFFFF:
        raise ValueError(f"frame of {n} bytes exceeds the limit of {max_bytes}")
    return HEAD.pack(int(kind), n) + bytes(payload)


def limit_for(kind: int, max_message_bytes: int) -> int:
    return CONTROL_MAX_BYTES if kind in _CONTROL else max_message_bytes


def check_head(head: bytes, max_message_bytes: int) -> tuple[Kind, int]:
    """(kind, length) of a 5-byte head, or FrameError (unknown kind, length over the limit)."""
    kind, n = HEAD.unpack(head)
    if kind not in _KINDS:
        raise FrameError("unknown_kind", f"kind {kind}")
    limit = limit_for(kind, max_message_bytes)
    if n > limit:
        raise FrameError("oversize", f"{Kind(kind).name} frame of {n} bytes > {limit}")
    return Kind(kind), n


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take whole frames out.

    ``feed`` raises FrameError as soon as a head announces an oversize frame or an unknown kind
    (nothing of its payload is buffered); ``finish`` raises ``truncated`` when the stream ended
    inside a frame.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._want: tuple[Kind, int] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while True:
            if self._want is None:
                if len(self._buf) < HEAD_BYTES:
                    return out
                self._want = check_head(bytes(self._buf[:HEAD_BYTES]), self.max_message_bytes)
                del self._buf[:HEAD_BYTES]
            kind, n = self._want
            if len(self._buf) < n:
                return out
            out.append(Frame(kind, bytes(self._buf[:n])))
            del self._buf[:n]
            self._want = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf) + (HEAD_BYTES if self._want is not None else 0)

    def finish(self) -> None:
        if self.pending:
            raise FrameError("truncated", f"stream ended {self.pending} bytes into a frame")


async def read_frame(read: Callable[[int], Awaitable[bytes]], max_message_bytes: int,
                     chunk: int = 1 << 16) -> Frame | None:
    """Read one frame with ``read(n)`` (returns b"" or raises EOFError at the end of the stream).

    None at a clean end (between frames); FrameError for oversize, unknown kind or truncation.
    The payload is read in chunks so that a slow or lying peer cannot make us allocate more than
    the announced (and already bounded) length.
    """
    head = await _read_exact(read, HEAD_BYTES, chunk, clean_eof_ok=True)
    if head is None:
        return None
    kind, n = check_head(head, max_message_bytes)
    payload = await _read_exact(read, n, chunk, clean_eof_ok=False) if n else b""
    return Frame(kind, payload)


async def _read_exact(read, n: int, chunk: int, *, clean_eof_ok: bool) -> bytes | None:
    parts: list[bytes] = []
    got = 0
    while got < n:
        try:
            data = await read(min(chunk, n - got))
        except EOFError:
            data = b""
        if not data:
            if got == 0 and clean_eof_ok:
                return None
            raise FrameError("truncated", f"stream ended after {got} of {n} bytes")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


# ---------------------------------------------------------------------------- control payloads

def pack_control(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_control(data: bytes) -> dict:
    """A control map, or FrameError('malformed')."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=CONTROL_MAX_BYTES,
                              max_str_len=4096, max_array_len=4096, max_map_len=64, max_ext_len=0)
    except Exception:
        raise FrameError("malformed", "control payload is not bounded msgpack") from None
    if not isinstance(obj, dict):
        raise FrameError("malformed", "control payload is not a map")
    return obj


def str_list(obj: object, max_items: int = 64) -> list[str]:
    """A list of at most ``max_items`` strings (anything else: FrameError)."""
    if not isinstance(obj, list) or len(obj) > max_items or not all(isinstance(x, str) for x in obj):
        raise FrameError("malformed", "expected a short list of strings")
    return obj
