"""Envelope codecs: how the round machine seals what it sends and opens what it receives.

:data:`SIGNED` (the default everywhere) is :func:`~fednode.security.envelope.seal` and
:func:`~fednode.security.envelope.open_envelope`: Ed25519 over the header, SHA-256 binding the
payload. :data:`UNSIGNED` is the same envelope (same msgpack structure, header fields, layout
and meta) with a zero signature and a zero payload hash, opened with every other check of the
verifier in the same order (size, structure, allow-list, ban, version, federation, recipient,
round window, timestamp, replay/duplicate, payload layout, finiteness, norm, magnitude).
:data:`LOCAL`, the simulator's fast mode, builds what :data:`UNSIGNED` would and hands the
receiver the parsed header and payload views instead of bytes (:class:`LocalEnvelope`), with the
same receive checks run by the same code. Both exist because at 1,000 simulated nodes Ed25519,
hashing, packing and parsing 40-80 KB envelopes are most of the run time while they exercise
nothing the signed unit tests do not (benchmarks/bench_simulator.py). A signed receiver rejects
every unsigned envelope (bad_signature): never use them outside a simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import numpy as np

from fednode.security.arrays import ModelSpec, decode_arrays, encode_arrays, float_bounds
from fednode.security.envelope import (ID_BYTES, MAX_HEADER_BYTES, MAX_UINT, NONCE_BYTES, PROTOCOL_VERSION,
                                       UNSIGNED_PAYLOAD_HASH, Header, Message, MsgType, Reject, VerifyContext,
                                       _meta_default, _parse_header, _tuple_new, accept, admit, header_fields,
                                       open_envelope, seal)
from fednode.security.identity import Identity


class EnvelopeCodec(Protocol):
    signed: bool
    """False only for the unauthenticated simulation codec."""

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        """Build an envelope; ``fields`` are :func:`~fednode.security.envelope.seal`'s keywords."""

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        """Check ``raw`` against ``ctx`` (never raises)."""


@dataclass(frozen=True)
class SignedCodec:
    """Real envelopes: Ed25519 signature and SHA-256 payload hash, both checked."""

    signed: bool = True

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        return seal(identity, **fields)

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        return open_envelope(raw, ctx)


@dataclass(frozen=True)
class UnsignedCodec:
    """Simulation fast mode: same envelopes and checks, minus the signature and payload hash.

    Sender and receivers live in one process, so the header the sealer already parsed (its
    check that it emits nothing malformed) is handed to the receiver through a bounded cache
    instead of being parsed a second time; a duplicate or unknown header is parsed as usual.
    """

    signed: bool = False
    max_cached_headers: int = 1 << 18
    _headers: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def seal(self, identity: Identity, **fields: Any) -> bytes:
        if len(self._headers) > self.max_cached_headers:  # lost messages are never opened
            self._headers.clear()
        return seal(identity, signed=False, header_cache=self._headers, **fields)

    def open(self, raw: bytes, ctx: VerifyContext) -> Message | Reject:
        return open_envelope(raw, ctx, signed=False, header_cache=self._headers)


class Payload:
    """The read-only arrays one payload decodes to, shared by the envelopes that carry the same
    payload (one contribution to each edge), with their float bounds computed once, when first asked."""

    __slots__ = ("arrays", "nbytes", "_bounds")

    def __init__(self, arrays: dict[str, np.ndarray], nbytes: int,
                 bounds: dict[str, tuple[float, float]] | None = None) -> None:
        """``bounds``: :func:`~fednode.security.arrays.float_bounds` of ``arrays`` when the caller has it."""
        self.arrays, self.nbytes, self._bounds = arrays, nbytes, bounds

    def bounds(self) -> dict[str, tuple[float, float]]:
        """:func:`~fednode.security.arrays.float_bounds` of the arrays (a pure function of immutable data)."""
        if self._bounds is None:
            self._bounds = float_bounds(self.arrays)
        return self._bounds


class LocalEnvelope:
    """What a fast-mode simulated node sends instead of bytes: the envelope :data:`UNSIGNED` would
    build, already opened as far as it can be without the receiver's view.

    ``header`` is exactly what parsing ``header_bytes`` gives, ``payload`` (None: empty) exactly
    what decoding the payload gives (read-only views of its raw little-endian bytes), and ``len()``
    is the envelope's byte size. It never leaves the process: there is no wire form but the real one.
    """

    __slots__ = ("header", "header_bytes", "payload", "size")

    def __init__(self, header: Header, header_bytes: bytes, payload: Payload | None) -> None:
        self.header, self.header_bytes, self.payload = header, header_bytes, payload
        n = len(header_bytes)  # msgpack([hdr, payload, sig]): fixarray, then three bin items
        self.size = (67 + n + (2 if n < 256 else 3 if n < 65536 else 5)
                     + (2 if payload is None else _bin_len(payload.nbytes)))

    def __len__(self) -> int:
        return self.size


def _bin_len(n: int) -> int:
    """Bytes of a msgpack bin item of length n (marker, length, data)."""
    return n + (2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)


_SCALARS = frozenset({int, bytes, bool, float, type(None)})


def _plain_meta(meta: dict) -> dict | None:
    """The meta a header parse returns for ``meta``, built without packing and parsing, or None when
    that is not obvious (strings, nesting, sets, numpy scalars, huge lists: those are parsed)."""
    if len(meta) > 1024:  # far inside the parser's bounds (MAX_HEADER_MAP_LEN, ..._ARRAY_LEN, ..._STR_LEN)
        return None
    out = {}
    for k, v in meta.items():
        t = type(v)
        if type(k) is not str or len(k) > 256:
            return None
        if t in _SCALARS:
            out[k] = v
        elif (t is list or t is tuple) and len(v) <= 4096 and _SCALARS.issuperset(map(type, v)):
            out[k] = list(v)
        else:
            return None
    return out


@dataclass(frozen=True)
class LocalCodec:
    """Simulation fast mode without bytes: :class:`LocalEnvelope` in, :class:`Message` out.

    ``seal`` runs :func:`~fednode.security.envelope.seal`'s argument checks and packs the real
    header (its exact size); the header object and the payload's array views are built once, as a
    parse and decode of those bytes would build them. ``open`` runs the receiver's checks from
    :func:`~fednode.security.envelope.open_envelope` that do not re-read bytes, with the same code
    and in the same order: oversize (envelope, header), unknown_sender, banned, wrong_version,
    wrong_federation, wrong_recipient, stale_round, future_round, timestamp, replay_nonce, duplicate,
    unexpected_payload, layout (spec and size), non_finite, norm, magnitude; then the replay guard
    records the message. Skipped: bad_signature and payload_hash (as :data:`UNSIGNED`) and the
    malformed-framing checks (a LocalEnvelope is well formed by construction). Real bytes (a test's
    forged envelope) are opened by :data:`UNSIGNED`'s path.
    """

    signed: bool = False
    _packer: Any = field(default_factory=lambda: msgpack.Packer(use_bin_type=True, default=_meta_default),
                         init=False, repr=False, compare=False, hash=False)
    _layouts: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _recent: list = field(default_factory=lambda: [None, None, (), None], init=False, repr=False, compare=False,
                          hash=False)

    def seal(self, identity: Identity, *, msg_type: int, recipient: bytes, federation: str, round: int,
             attempt: int = 0, arrays: Any = None, spec: ModelSpec | None = None, meta: Any = None,
             now_ms: int, nonce: bytes | None = None) -> LocalEnvelope:
        # the common case, every argument of the exact plain type header_fields accepts: the header is
        # built directly, as its parse gives it; anything else goes the general way (and raises there)
        sender, u = identity.peer_id, MAX_UINT
        if (type(msg_type) in _TYPE_OK and msg_type in _MSG_TYPES and type(recipient) is bytes
                and len(recipient) in (0, ID_BYTES) and type(federation) is str and len(federation) <= 1024
                and type(nonce) is bytes and len(nonce) == NONCE_BYTES and type(round) is int and 0 <= round <= u
                and type(attempt) is int and 0 <= attempt <= u and type(now_ms) is int and 0 <= now_ms <= u
                and type(sender) is bytes and len(sender) == ID_BYTES and (meta is None or type(meta) is dict)):
            plain = _plain_meta(meta) if meta else {}
            known = _NO_LAYOUT if arrays is None else self._known(spec) if spec is not None else None
            if plain is not None and known is not None and (
                    (arrays is None and (spec is None or not spec.entries))
                    or (type(arrays) is dict and arrays.keys() == known[0])):
                mt = int(msg_type)
                payload = None if arrays is None else self._payload(arrays, spec, known[2], now_ms)  # type: ignore
                header_bytes = self._packer.pack([PROTOCOL_VERSION, mt, sender, recipient, federation, round,
                                                  attempt, nonce, now_ms, UNSIGNED_PAYLOAD_HASH, known[1], plain])
                if len(header_bytes) <= MAX_HEADER_BYTES:
                    return LocalEnvelope(_tuple_new(Header, (PROTOCOL_VERSION, mt, sender, recipient, federation,
                                                             round, attempt, nonce, now_ms, UNSIGNED_PAYLOAD_HASH,
                                                             known[2], plain)), header_bytes, payload)
        header, raw, spec = header_fields(identity, msg_type=msg_type, recipient=recipient, federation=federation,
                                          round=round, attempt=attempt, arrays=arrays, spec=spec, meta=meta,
                                          now_ms=now_ms, nonce=nonce, signed=False)
        header_bytes = self._packer.pack(header)
        parsed = _parse_header(header_bytes)  # anything unusual: the real parse decides
        if isinstance(parsed, str):
            raise ValueError(f"cannot seal: {parsed}")
        return LocalEnvelope(parsed, header_bytes, None if spec is None else
                             Payload(decode_arrays(raw, parsed.layout), len(raw)))

    def _known(self, spec: ModelSpec) -> tuple | None:
        """(names, wire layout, parsed layout) of a plain spec, None if unusual (cached: a simulation has few)."""
        if spec not in self._layouts:
            plain = len(spec.entries) <= 1024 and all(len(name) <= 256 for name, _, _ in spec.entries)
            self._layouts[spec] = (set(spec.names), spec.to_layout(), ModelSpec.from_layout(spec.to_layout())) \
                if plain else None
        return self._layouts[spec]

    def _payload(self, arrays: dict[str, np.ndarray], spec: ModelSpec, layout: ModelSpec, now_ms: int) -> Payload:
        """The encoded and decoded payload; the same arrays sealed again in the same millisecond (a
        contribution to each edge, one event) share the previous one: the machine never writes into
        an array it sent, so re-encoding would only copy the same bytes again. For the same reason
        arrays already in their wire form are not copied at all (:func:`_wire_views`)."""
        source = tuple(arrays[name] for name in spec.names)
        last = self._recent
        if last[0] is spec and last[1] == now_ms and all(a is b for a, b in zip(source, last[2])):
            return last[3]
        views = _wire_views(arrays, layout)
        if views is None:
            raw = encode_arrays(arrays, spec)[1]
            payload = Payload(decode_arrays(raw, layout), len(raw))
        else:
            payload = Payload(views, layout.nbytes)
        payload.bounds()  # now, while the bytes just written are in cache (the receivers would ask anyway)
        last[:] = spec, now_ms, source, payload
        return payload

    def open(self, raw: Any, ctx: VerifyContext) -> Message | Reject:
        if type(raw) is not LocalEnvelope:
            return open_envelope(raw, ctx, signed=False)
        try:
            now_s = ctx.now_ms / 1000.0
            if raw.size > ctx.max_message_bytes:
                return Reject("oversize", f"{raw.size} > {ctx.max_message_bytes} bytes")
            if len(raw.header_bytes) > MAX_HEADER_BYTES:
                return Reject("oversize", f"header of {len(raw.header_bytes)} bytes")
            refused = admit(raw.header.sender, ctx, now_s)
            if refused is not None:
                return refused
            payload = raw.payload
            if payload is None:
                return accept(raw.header, raw.header_bytes, 0, {}, ctx, now_s)
            return accept(raw.header, raw.header_bytes, payload.nbytes, dict(payload.arrays), ctx, now_s,
                          payload.bounds)
        except Exception as exc:  # as open_envelope: never raises
            return Reject("internal", f"{type(exc).__name__}: {str(exc)[:200]}")


def _wire_views(arrays: dict[str, np.ndarray], layout: ModelSpec) -> dict[str, np.ndarray] | None:
    """Read-only views of ``arrays`` when each already is what decoding its raw bytes gives (the
    layout's little-endian dtype and shape, C-contiguous): the same values, without the encode copy.
    None when any array needs a conversion (then the payload is encoded and decoded for real)."""
    out = {}
    for name, dtype, shape in layout.entries:
        a = arrays[name]
        if type(a) is not np.ndarray or a.dtype != np.dtype(dtype) or a.shape != shape or not a.flags.c_contiguous:
            return None
        view = a.view()
        view.flags.writeable = False
        out[name] = view
    return out


_NO_LAYOUT = (set(), [], ModelSpec(()))
_TYPE_OK = frozenset({int, MsgType})
_MSG_TYPES = frozenset(int(t) for t in MsgType)


SIGNED = SignedCodec()
UNSIGNED = UnsignedCodec()
"""Unsigned envelopes as bytes (its header cache is per process)."""
LOCAL = LocalCodec()
"""Shared by every machine of a fast-mode simulation."""

__all__ = ["EnvelopeCodec", "LOCAL", "LocalCodec", "LocalEnvelope", "SIGNED", "SignedCodec", "UNSIGNED",
           "UnsignedCodec"]
