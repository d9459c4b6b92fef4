"""Signed message envelopes: :func:`seal` on the way out, :func:`open_envelope` on the way in.

Wire form::

    envelope     = msgpack([header_bytes, payload, sig])
    header_bytes = msgpack([version, type, sender, recipient | b"", federation, round, attempt,
                            nonce16, ts_ms, sha256(payload), layout, meta])
    sig          = Ed25519(sk, SIG_DOMAIN + header_bytes)

Framing and the structural header parse live in :mod:`fednode.security.header`.

The signature covers the exact received header bytes, so msgpack canonicalisation never
matters; the payload is bound through its hash. The payload is raw little-endian array bytes
described by ``layout`` (:mod:`fednode.security.arrays`): no pickle, no object decoding, no
msgpack extension types.

:func:`open_envelope` never raises. It returns a :class:`Message` or a :class:`Reject` whose
``reason`` is one of :data:`REJECT_REASONS`, checked in this order: oversize, malformed,
unknown_sender, banned, bad_signature, payload_hash, wrong_version, wrong_federation,
wrong_recipient, stale_round, future_round, timestamp, replay_nonce, duplicate,
unexpected_payload, layout, non_finite, norm, magnitude. Cheap structural checks come first so
an unauthenticated peer can only make us parse bounded msgpack; nothing in the header is acted
on before the signature verified. The replay guard records a message only once it is accepted.

``signed=False`` (simulations only, through :class:`fednode.security.codec.UnsignedCodec`)
builds the same envelope with a zero signature and a zero payload hash and opens it with every
check except the two that need them (bad_signature, payload_hash). Such envelopes are never
accepted by a signed receiver: their signature does not verify.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature

from fednode.security.arrays import ModelSpec, check_floats, decode_arrays, encode_arrays
from fednode.security.header import (  # noqa: F401 (names of the wire format, re-exported)
                                     HEADER_FIELDS, ID_BYTES, MAX_HEADER_ARRAY_LEN, MAX_HEADER_BYTES,
                                     MAX_HEADER_MAP_LEN, MAX_HEADER_STR_LEN, MAX_META_DEPTH, MAX_UINT, NONCE_BYTES,
                                     SHA_BYTES, SIG_BYTES, UNSIGNED_PAYLOAD_HASH, UNSIGNED_SIG, Header, MsgType,
                                     _parse_header, _unpack_header, pack_envelope)
from fednode.security.identity import AllowList, Identity
from fednode.security.replay import OffenderTracker, ReplayGuard

PROTOCOL_VERSION = 1
SIG_DOMAIN = b"fednode/v1/sig\x00"

SPEC_DTYPES = "spec"
"""Entry of :attr:`VerifyContext.allowed_payload_dtypes` meaning 'exactly the model spec's own dtypes'."""

REJECT_REASONS: tuple[str, ...] = (
    "oversize", "malformed", "unknown_sender", "banned", "bad_signature", "payload_hash", "wrong_version",
    "wrong_federation", "wrong_recipient", "stale_round", "future_round", "timestamp", "replay_nonce",
    "duplicate", "unexpected_payload", "layout", "non_finite", "norm", "magnitude", "internal")
"""Stable reason codes (metrics and tests key on them). 'internal' means a bug and should never occur."""

ATTRIBUTABLE_REASONS = frozenset({"malformed", "wrong_version", "unexpected_payload", "layout", "non_finite",
                                  "norm", "magnitude"})
"""Rejects the signer is provably responsible for: the bad content is inside what it signed.

Stale, future, timestamp, replay, duplicate, wrong recipient/federation and payload-hash rejects
are excluded: anyone can cause them by replaying or tampering with captured traffic, so
counting them would let a third party get an honest peer banned.
"""


_MSG_TYPE = {int(t): t for t in MsgType}


class Message(NamedTuple):
    """An accepted message: verified header and read-only arrays viewing the payload.

    A tuple, built once per message by :meth:`of`, that also holds the header fields every stage
    reads (sender, type, round, attempt, meta) so reading them is not a property call.
    """

    header: Header
    arrays: dict[str, np.ndarray]
    sender: bytes
    msg_type: MsgType
    round: int
    attempt: int
    meta: dict

    @classmethod
    def of(cls, header: Header, arrays: dict[str, np.ndarray]) -> "Message":
        return _tuple_new(cls, (header, arrays, header.sender, _MSG_TYPE[header.msg_type], header.round,
                                header.attempt, header.meta))

    @property
    def recipient(self) -> bytes:
        return self.header.recipient

    @property
    def nonce(self) -> bytes:
        return self.header.nonce

    @property
    def timestamp_ms(self) -> int:
        return self.header.timestamp_ms

    @property
    def layout(self) -> ModelSpec:
        return self.header.layout


_tuple_new = tuple.__new__
"""The C constructor of a tuple subclass: a NamedTuple's own ``__new__`` is a Python function."""


@dataclass(frozen=True)
class Reject:
    """Why a message was refused.

    ``sender`` is set only when the header signature verified: the header is authentic, but the
    reject may still be a third party's doing (a replay, a swapped payload); see ``blames_sender``.
    """

    reason: str
    detail: str = ""
    sender: bytes | None = None
    round: int | None = None
    """The signed header's round and type, set for the content rejects of step 8 only (the signer is
    at fault for exactly that message: the round machine stops waiting for it, see ``Inbox.refused``)."""
    msg_type: int | None = None

    @property
    def blames_sender(self) -> bool:
        """True when the signed content itself is bad (see :data:`ATTRIBUTABLE_REASONS`)."""
        return self.sender is not None and self.reason in ATTRIBUTABLE_REASONS


@dataclass(slots=True)
class VerifyContext:
    """Everything :func:`open_envelope` checks against (the receiver's view at ``now_ms``; slots: the
    verifier reads some twenty of its fields per message)."""

    self_id: bytes
    federation: str
    allow_list: AllowList
    current_round: int
    now_ms: int
    replay: ReplayGuard
    model_spec: ModelSpec | None = None
    """Expected layout of payload messages (None: any well-formed layout whose size matches)."""
    payload_types: frozenset[int] = frozenset({int(MsgType.CONTRIBUTE), int(MsgType.MODEL_REPLY)})
    broadcast_types: frozenset[int] = frozenset({int(MsgType.HELLO), int(MsgType.STATUS)})
    """Types that may have an empty recipient; every other message must be addressed to self_id."""
    unbounded_future_types: frozenset[int] = frozenset({int(MsgType.HELLO)})
    unbounded_past_types: frozenset[int] = frozenset({int(MsgType.MODEL_REQUEST)})
    """Types exempt from ``rounds_behind`` (a restarted node far behind asks for the current model)."""
    """Types exempt from ``rounds_ahead`` (a HELLO far ahead tells a lagging node to resync)."""
    rounds_behind: int = 1
    rounds_ahead: int = 2
    timestamp_window_ms: int = 60_000
    max_message_bytes: int = 64 * 1024 * 1024
    max_norm: float | None = None
    """Bound on the global L2 norm of (payload - norm_reference) for float payloads (None: off)."""
    norm_reference: Mapping[str, np.ndarray] | None = None
    max_abs: float | None = 2.0**20
    """Per-coordinate divergence guard for float payloads (None: off); default is the ring's B_max."""
    offenders: OffenderTracker | None = None
    allowed_payload_dtypes: frozenset[str] = frozenset({SPEC_DTYPES})
    """Dtype variants of ``model_spec`` a payload may use: SPEC_DTYPES (the spec as is) and/or a
    wire dtype such as '<u8' (``model_spec.with_dtype('<u8')``, ring-encoded masked contributions).
    Finiteness, norm and magnitude checks apply to floating-point arrays only."""

    def accepted_layouts(self) -> tuple[ModelSpec, ...] | None:
        """The layouts a payload message may carry (None: any)."""
        if self.model_spec is None:
            return None
        return tuple(self.model_spec if d == SPEC_DTYPES else self.model_spec.with_dtype(d)
                     for d in sorted(self.allowed_payload_dtypes))


# ---------------------------------------------------------------------------------------------- sealing

def _meta_default(obj: Any) -> Any:
    """msgpack fallback for meta values: numpy scalars become Python scalars, sets sorted lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot put a {type(obj).__name__} in envelope meta")


def _uint(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, not a bool")
    v = operator.index(value)
    if not 0 <= v <= MAX_UINT:
        raise ValueError(f"{name} must be in [0, 2^63)")
    return int(v)


def header_fields(identity: Identity, *, msg_type: int, recipient: bytes, federation: str, round: int,
                  attempt: int = 0, arrays: Mapping[str, np.ndarray] | None = None, spec: ModelSpec | None = None,
                  meta: Mapping[str, Any] | None = None, now_ms: int, nonce: bytes | None = None,
                  signed: bool = True) -> tuple[list, bytes, ModelSpec | None]:
    """:func:`seal`'s argument checks: the header to pack, the payload, and its spec (None: no arrays)."""
    mt = int(MsgType(msg_type))
    if not isinstance(recipient, bytes) or len(recipient) not in (0, ID_BYTES):
        raise ValueError("recipient must be a 32-byte peer id or b'' (broadcast)")
    if not isinstance(federation, str):
        raise ValueError("federation must be a str")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 16 bytes")
    if arrays is not None:
        if spec is not None and set(arrays) != set(spec.names):
            raise ValueError(f"arrays {sorted(arrays)} do not match the spec's names {sorted(spec.names)}")
        spec, payload = encode_arrays(arrays, spec)
        layout = spec.to_layout()
    else:
        if spec is not None and spec.entries:
            raise ValueError("a spec was given without arrays")
        payload, layout = b"", []
        spec = None
    meta_obj = {} if meta is None else meta
    if not isinstance(meta_obj, Mapping):
        raise ValueError("meta must be a mapping with str keys")
    header = [PROTOCOL_VERSION, mt, identity.peer_id, recipient, federation, _uint("round", round),
              _uint("attempt", attempt), nonce, _uint("now_ms", now_ms),
              hashlib.sha256(payload).digest() if signed else UNSIGNED_PAYLOAD_HASH, layout, dict(meta_obj)]
    return header, payload, spec


def seal(identity: Identity, *, msg_type: int, recipient: bytes, federation: str, round: int, attempt: int = 0,
         arrays: Mapping[str, np.ndarray] | None = None, spec: ModelSpec | None = None,
         meta: Mapping[str, Any] | None = None, now_ms: int, nonce: bytes | None = None,
         signed: bool = True, header_cache: dict[bytes, Header] | None = None) -> bytes:
    """Build and sign an envelope. Raises ValueError/TypeError on bad arguments (a caller bug).

    ``recipient`` is the 32-byte peer id, or b"" for a broadcast type. ``arrays`` are encoded in
    ``spec`` order and dtypes (default: ``ModelSpec.of(arrays)``). ``meta`` is a small map with
    str keys. ``nonce`` defaults to 16 random bytes. Nothing passed in is modified.
    ``signed=False`` is for simulations only (see the module docstring). ``header_cache`` (a
    simulator's, sender and receivers in one process) keeps the parse of the emitted header for
    :func:`open_envelope` with the same cache, which then need not parse those bytes again.
    """
    header, payload, _ = header_fields(identity, msg_type=msg_type, recipient=recipient, federation=federation,
                                       round=round, attempt=attempt, arrays=arrays, spec=spec, meta=meta,
                                       now_ms=now_ms, nonce=nonce, signed=signed)
    header_bytes = msgpack.packb(header, use_bin_type=True, default=_meta_default)
    parsed = _parse_header(header_bytes)
    if isinstance(parsed, str):  # refuse to emit what every receiver would reject as malformed
        raise ValueError(f"cannot seal: {parsed}")
    if header_cache is not None:
        header_cache[header_bytes] = parsed
    sig = identity.sign(SIG_DOMAIN + header_bytes) if signed else UNSIGNED_SIG
    return pack_envelope(header_bytes, payload, sig)


_BIN_MARKERS = frozenset({0xC4, 0xC5, 0xC6})


def open_envelope(raw: bytes, ctx: VerifyContext, *, signed: bool = True,
                  header_cache: dict[bytes, Header] | None = None) -> Message | Reject:
    """Verify ``raw`` against ``ctx``: an accepted :class:`Message` or a :class:`Reject`. Never raises.

    A header found in ``header_cache`` (see :func:`seal`) is taken from it (and removed) instead
    of being parsed again: parsing is a pure function of the bytes, so nothing else changes.
    """
    try:
        return _open(raw, ctx, signed, header_cache)
    except Exception as exc:  # last resort only: every expected failure has its own reason code
        return Reject("internal", f"{type(exc).__name__}: {str(exc)[:200]}")


def _open(raw: bytes, ctx: VerifyContext, signed: bool = True,
          header_cache: dict[bytes, Header] | None = None) -> Message | Reject:
    now_s = ctx.now_ms / 1000.0
    # 1. size, 2. structure (bounded msgpack, exact types and lengths)
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return Reject("malformed", "envelope is not bytes")
    size = memoryview(raw).nbytes
    if size > ctx.max_message_bytes:
        return Reject("oversize", f"{size} > {ctx.max_message_bytes} bytes")
    raw = bytes(raw)
    if len(raw) < 2 or raw[0] != 0x93 or raw[1] not in _BIN_MARKERS:
        # what seal() writes always starts fixarray(3), bin: refuse anything else before msgpack sees it
        # (random bytes and nesting or length bombs cost a byte compare, not a parse)
        return Reject("malformed", "envelope is not msgpack([bin, bin, bin])")
    try:
        outer = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                                max_bin_len=ctx.max_message_bytes, max_str_len=0, max_array_len=3,
                                max_map_len=0, max_ext_len=0)
    except Exception:
        return Reject("malformed", "envelope is not msgpack([bin, bin, bin])")
    if type(outer) is not list or len(outer) != 3 or not all(type(x) is bytes for x in outer):
        return Reject("malformed", "envelope is not msgpack([bin, bin, bin])")
    header_bytes, payload, sig = outer
    if len(header_bytes) > MAX_HEADER_BYTES:
        return Reject("oversize", f"header of {len(header_bytes)} bytes")
    if len(sig) != SIG_BYTES:
        return Reject("malformed", "signature length")
    to_verify = SIG_DOMAIN + header_bytes
    cached = None if header_cache is None else header_cache.pop(header_bytes, None)
    header = _parse_header(header_bytes) if cached is None else cached
    if isinstance(header, str):
        signer = _signer_of_malformed(header_bytes, to_verify, sig, ctx, now_s, signed)
        if signer is None:
            return Reject("malformed", header)
        return _blame("malformed", header, signer, header_bytes, ctx, now_s)
    sender = header.sender

    # 3. pinned sender, 4. not banned, 5. signature over the exact received header bytes
    refused = admit(sender, ctx, now_s)
    if refused is not None:
        return refused
    if signed:
        try:
            ctx.allow_list.public_key(sender).verify(sig, to_verify)  # type: ignore[union-attr]
        except InvalidSignature:
            return Reject("bad_signature", sender.hex()[:12])
        # 6. the payload is the one the sender signed
        if hashlib.sha256(payload).digest() != header.payload_sha256:
            return _blame("payload_hash", "", sender, header_bytes, ctx, now_s)
    return accept(header, header_bytes, len(payload), payload, ctx, now_s)


def _blame(reason: str, detail: str, sender: bytes, header_bytes: bytes, ctx: VerifyContext, now_s: float,
           content_of: Header | None = None) -> Reject:
    """A reject after the signature verified: attribute it, and count it if the signer is at fault
    (the token, SHA-256 of the signed header, identifies the message: a replay counts once).
    ``content_of``: the header of a message refused for its content (step 8)."""
    if ctx.offenders is not None and reason in ATTRIBUTABLE_REASONS:
        ctx.offenders.note(sender, now_s, hashlib.sha256(header_bytes).digest())
    if content_of is None:
        return Reject(reason, detail, sender)
    return Reject(reason, detail, sender, content_of.round, content_of.msg_type)


def admit(sender: bytes, ctx: VerifyContext, now_s: float) -> Reject | None:
    """Checks 3 and 4: the sender is pinned in the allow-list and not banned (None: admitted)."""
    if ctx.allow_list.public_key(sender) is None:
        return Reject("unknown_sender", sender.hex()[:12])
    if ctx.offenders is not None and ctx.offenders.is_banned(sender, now_s):
        return Reject("banned", sender.hex()[:12], sender)
    return None


def accept(header: Header, header_bytes: bytes, payload_len: int, payload: bytes | Mapping[str, np.ndarray],
           ctx: VerifyContext, now_s: float,
           bounds: Callable[[], dict[str, tuple[float, float]]] | None = None) -> Message | Reject:
    """Checks 7 and 8 of an authenticated header, in order, then the replay guard records it.

    ``payload`` is the raw payload, or (the simulator's in-process envelopes,
    :mod:`fednode.security.codec`) the read-only arrays it decodes to, ``payload_len`` bytes long,
    and ``bounds`` gives their :func:`~fednode.security.arrays.float_bounds`.
    """
    sender = header.sender
    # 7. protocol, federation, addressing, freshness, replay
    if header.version != PROTOCOL_VERSION:
        return _blame("wrong_version", str(header.version)[:20], sender, header_bytes, ctx, now_s)
    if header.federation != ctx.federation:
        return _blame("wrong_federation", repr(header.federation[:64]), sender, header_bytes, ctx, now_s)
    mt = header.msg_type
    if header.recipient == b"":
        if mt not in ctx.broadcast_types:
            return _blame("wrong_recipient", "broadcast of a unicast type", sender, header_bytes, ctx, now_s)
    elif header.recipient != ctx.self_id:
        return _blame("wrong_recipient", header.recipient.hex()[:12], sender, header_bytes, ctx, now_s)
    r = header.round
    if r < ctx.current_round - ctx.rounds_behind and mt not in ctx.unbounded_past_types:
        return _blame("stale_round", f"{r} < {ctx.current_round} - {ctx.rounds_behind}", sender, header_bytes, ctx,
                      now_s)
    if r > ctx.current_round + ctx.rounds_ahead and mt not in ctx.unbounded_future_types:
        return _blame("future_round", f"{r} > {ctx.current_round} + {ctx.rounds_ahead}", sender, header_bytes, ctx,
                      now_s)
    if abs(header.timestamp_ms - ctx.now_ms) > ctx.timestamp_window_ms:
        return _blame("timestamp", f"off by {header.timestamp_ms - ctx.now_ms} ms", sender, header_bytes, ctx, now_s)
    key = (mt, r, header.attempt, header.recipient)
    replay = ctx.replay
    seen = replay.seen(sender, header.nonce, key, now_s)
    if seen is not None:
        return _blame(seen, "", sender, header_bytes, ctx, now_s)

    # 8. payload: only where expected, exactly the expected layout, then plaintext sanity
    arrays: Mapping[str, np.ndarray] = {}
    layout = header.layout
    if mt not in ctx.payload_types:
        if payload_len or layout.entries:
            return _blame("unexpected_payload", f"{payload_len} bytes", sender, header_bytes, ctx, now_s, header)
    else:
        accepted = ctx.accepted_layouts()
        if accepted is not None and layout not in accepted:
            return _blame("layout", "layout differs from the model spec", sender, header_bytes, ctx, now_s, header)
        if payload_len != layout.nbytes:
            return _blame("layout", f"payload has {payload_len} bytes, layout needs {layout.nbytes}", sender,
                          header_bytes, ctx, now_s, header)
        if isinstance(payload, bytes):
            try:
                arrays = decode_arrays(payload, layout)
            except ValueError as exc:
                return _blame("layout", str(exc)[:200], sender, header_bytes, ctx, now_s, header)
        else:
            arrays = payload
        bad = check_floats(arrays, ctx.max_norm, ctx.norm_reference, ctx.max_abs,
                           None if bounds is None else bounds())
        if bad is not None:
            return _blame(bad[0], bad[1], sender, header_bytes, ctx, now_s, header)

    replay.record(sender, header.nonce, key, now_s)
    return Message.of(header, dict(arrays) if type(arrays) is not dict else arrays)


def _signer_of_malformed(header_bytes: bytes, to_verify: bytes, sig: bytes, ctx: VerifyContext,
                         now_s: float, signed: bool = True) -> bytes | None:
    """The admitted sender that really signed a malformed header (so it can be blamed), else None."""
    try:
        h = _unpack_header(header_bytes)
    except Exception:
        return None
    sender = h[2] if type(h) is list and len(h) > 2 else None
    if type(sender) is not bytes or len(sender) != ID_BYTES:
        return None
    public_key = ctx.allow_list.public_key(sender)
    if public_key is None or (ctx.offenders is not None and ctx.offenders.is_banned(sender, now_s)):
        return None
    try:
        if signed:
            public_key.verify(sig, to_verify)
    except InvalidSignature:
        return None
    return sender


__all__ = [
    "ATTRIBUTABLE_REASONS", "Header", "MAX_HEADER_BYTES", "Message", "MsgType", "PROTOCOL_VERSION",
    "MAX_META_DEPTH", "REJECT_REASONS", "Reject", "SIG_DOMAIN", "SPEC_DTYPES", "UNSIGNED_PAYLOAD_HASH", "UNSIGNED_SIG",
    "VerifyContext", "open_envelope", "pack_envelope", "seal",
]
