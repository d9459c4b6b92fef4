"""Signed message envelopes: :func:`seal` on the way out, :func:`open_envelope` on the way in.

Wire form::

    envelope     = msgpack([header_bytes, payload, sig])
    header_bytes = msgpack([version, type, sender, recipient | b"", federation, round, attempt,
                            nonce16, ts_ms, sha256(payload), layout, meta])
    sig          = Ed25519(sk, SIG_DOMAIN + header_bytes)

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

import enum
import hashlib
import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature

from fednode.security.arrays import ModelSpec, decode_arrays, encode_arrays
from fednode.security.identity import AllowList, Identity
from fednode.security.replay import OffenderTracker, ReplayGuard

PROTOCOL_VERSION = 1
SIG_DOMAIN = b"fednode/v1/sig\x00"

ID_BYTES = 32
NONCE_BYTES = 16
SHA_BYTES = 32
SIG_BYTES = 64
UNSIGNED_SIG = bytes(SIG_BYTES)
UNSIGNED_PAYLOAD_HASH = bytes(SHA_BYTES)
HEADER_FIELDS = 12
MAX_HEADER_BYTES = 1 << 20
"""Headers carry ids, a layout and small metadata; anything bigger is refused before parsing it."""
MAX_HEADER_ARRAY_LEN = 1 << 16
MAX_HEADER_MAP_LEN = 1 << 12
MAX_HEADER_STR_LEN = 1 << 16
MAX_META_DEPTH = 16
MAX_UINT = 2**63 - 1
"""Round, attempt and timestamp are non-negative and fit an int64."""

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


class MsgType(enum.IntEnum):
    HELLO = 1
    CONTRIBUTE = 2
    RETRY = 3
    COMMIT = 4
    MODEL_REQUEST = 5
    MODEL_REPLY = 6
    STATUS = 7
    SETUP = 8
    """Secure aggregation: aggregator -> contributor, the attempt's contributor set and relayed HELLOs."""
    UNMASK = 9
    """Secure aggregation: aggregator -> contributor, every masked contribution of the attempt is in."""
    REVEAL = 10
    """Secure aggregation: contributor -> aggregator, the attempt's self-mask seed (or, mode B, shares)."""
    SHARES = 11
    """Secure aggregation mode B: contributor -> aggregator, AEAD-sealed Shamir share bundles for the others."""
    RELAY = 12
    """Secure aggregation mode B: aggregator -> contributor, the bundles addressed to it and the set U1."""


_MSG_TYPES = frozenset(int(t) for t in MsgType)


@dataclass(frozen=True)
class Header:
    """The signed header, as parsed from the verified header bytes."""

    version: int
    msg_type: int
    sender: bytes
    recipient: bytes
    federation: str
    round: int
    attempt: int
    nonce: bytes
    timestamp_ms: int
    payload_sha256: bytes
    layout: ModelSpec
    meta: dict


@dataclass(frozen=True)
class Message:
    """An accepted message: verified header and read-only arrays viewing the payload."""

    header: Header
    arrays: dict[str, np.ndarray]

    @property
    def sender(self) -> bytes:
        return self.header.sender

    @property
    def recipient(self) -> bytes:
        return self.header.recipient

    @property
    def msg_type(self) -> MsgType:
        return MsgType(self.header.msg_type)

    @property
    def round(self) -> int:
        return self.header.round

    @property
    def attempt(self) -> int:
        return self.header.attempt

    @property
    def meta(self) -> dict:
        return self.header.meta

    @property
    def nonce(self) -> bytes:
        return self.header.nonce

    @property
    def timestamp_ms(self) -> int:
        return self.header.timestamp_ms

    @property
    def layout(self) -> ModelSpec:
        return self.header.layout


@dataclass(frozen=True)
class Reject:
    """Why a message was refused.

    ``sender`` is set only when the header signature verified: the header is authentic, but the
    reject may still be a third party's doing (a replay, a swapped payload); see ``blames_sender``.
    """

    reason: str
    detail: str = ""
    sender: bytes | None = None

    @property
    def blames_sender(self) -> bool:
        """True when the signed content itself is bad (see :data:`ATTRIBUTABLE_REASONS`)."""
        return self.sender is not None and self.reason in ATTRIBUTABLE_REASONS


@dataclass
class VerifyContext:
    """Everything :func:`open_envelope` checks against (the receiver's view at ``now_ms``)."""

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
    meta_obj = {} if meta is None else meta
    if not isinstance(meta_obj, Mapping):
        raise ValueError("meta must be a mapping with str keys")
    header = [PROTOCOL_VERSION, mt, identity.peer_id, recipient, federation, _uint("round", round),
              _uint("attempt", attempt), nonce, _uint("now_ms", now_ms),
              hashlib.sha256(payload).digest() if signed else UNSIGNED_PAYLOAD_HASH, layout, dict(meta_obj)]
    header_bytes = msgpack.packb(header, use_bin_type=True, default=_meta_default)
    parsed = _parse_header(header_bytes)
    if isinstance(parsed, str):  # refuse to emit what every receiver would reject as malformed
        raise ValueError(f"cannot seal: {parsed}")
    if header_cache is not None:
        header_cache[header_bytes] = parsed
    sig = identity.sign(SIG_DOMAIN + header_bytes) if signed else UNSIGNED_SIG
    return pack_envelope(header_bytes, payload, sig)


def _bin_prefix(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xc6" + n.to_bytes(4, "big")
    raise ValueError("envelope part too large for msgpack bin 32")


def pack_envelope(header_bytes: bytes, payload: bytes, sig: bytes) -> bytes:
    """``msgpack.packb([header_bytes, payload, sig], use_bin_type=True)``, byte for byte, in one copy.

    msgpack's packer stages a large payload in a fresh buffer of its own (page faults on every
    80 KB model); joining the three bin items directly is 20-40x cheaper (benchmarks/bench_simulator.py).
    """
    return b"".join((b"\x93", _bin_prefix(len(header_bytes)), header_bytes, _bin_prefix(len(payload)), payload,
                     _bin_prefix(len(sig)), sig))


# ---------------------------------------------------------------------------------------------- opening

def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_UINT  # type() is exact: bool is not an int here


def _meta_ok(meta: object) -> bool:
    """Plain msgpack data with str keys all the way down, bounded depth (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(meta, 0)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            return False
        t = type(obj)
        if t is dict:
            for k, v in obj.items():  # type: ignore[attr-defined]
                if type(k) is not str:
                    return False
                stack.append((v, depth + 1))
        elif t is list:
            stack.extend((v, depth + 1) for v in obj)  # type: ignore[attr-defined]
        elif t not in (str, bytes, int, float, bool, type(None)):
            return False  # e.g. msgpack.ExtType(code, b"") slips past max_ext_len=0
    return True


def _unpack_header(header_bytes: bytes) -> object:
    return msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, use_list=True,
                           max_bin_len=MAX_HEADER_BYTES, max_str_len=MAX_HEADER_STR_LEN,
                           max_array_len=MAX_HEADER_ARRAY_LEN, max_map_len=MAX_HEADER_MAP_LEN, max_ext_len=0)


def _parse_header(header_bytes: bytes) -> Header | str:
    """Structural parse of header bytes: a :class:`Header`, or a short reason it is malformed."""
    try:
        h = _unpack_header(header_bytes)
    except Exception:
        return "header is not bounded msgpack"
    if type(h) is not list or len(h) != HEADER_FIELDS:
        return "header is not a 12-element array"
    (version, msg_type, sender, recipient, federation, rnd, attempt, nonce, ts_ms, sha, layout, meta) = h
    if type(version) is not int:
        return "version"
    if type(msg_type) is not int or msg_type not in _MSG_TYPES:
        return "message type"
    if type(sender) is not bytes or len(sender) != ID_BYTES:
        return "sender"
    if type(recipient) is not bytes or len(recipient) not in (0, ID_BYTES):
        return "recipient"
    if type(federation) is not str:
        return "federation"
    if not (_is_uint(rnd) and _is_uint(attempt) and _is_uint(ts_ms)):
        return "round, attempt or timestamp"
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        return "nonce"
    if type(sha) is not bytes or len(sha) != SHA_BYTES:
        return "payload hash"
    if type(layout) is not list:
        return "layout"
    try:
        spec = ModelSpec.from_layout(layout)
    except ValueError:
        return "layout"
    if type(meta) is not dict or not _meta_ok(meta):
        return "meta"
    return Header(version, msg_type, sender, recipient, federation, rnd, attempt, nonce, ts_ms, sha, spec, meta)


def _float_checks(arrays: Mapping[str, np.ndarray], ctx: VerifyContext) -> tuple[str, str] | None:
    """Finiteness, norm and magnitude of the floating-point arrays; caller data is only read."""
    floats = {n: a for n, a in arrays.items() if a.dtype.kind == "f"}
    if not floats:
        return None
    for name, a in floats.items():
        if not np.isfinite(a).all():
            return "non_finite", name
    with np.errstate(all="ignore"):
        if ctx.max_norm is not None:
            ref = ctx.norm_reference
            total = 0.0
            for name, a in floats.items():
                v = a.astype(np.float64).reshape(-1)
                if ref is not None:
                    r = ref.get(name)
                    if r is None or np.shape(r) != a.shape:
                        return "layout", f"norm_reference has no {a.shape} array {name!r}"
                    v = v - np.asarray(r, dtype=np.float64).reshape(-1)
                total += float(np.dot(v, v))
            norm = float(np.sqrt(total))
            if not norm <= ctx.max_norm:
                return "norm", f"{norm:.6g} > {ctx.max_norm:.6g}"
        if ctx.max_abs is not None:
            for name, a in floats.items():
                if a.size and not float(np.max(np.abs(a))) <= ctx.max_abs:
                    return "magnitude", name
    return None


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
    offenders = ctx.offenders
    token: list[bytes] = []

    def blame(reason: str, detail: str, sender: bytes) -> Reject:
        """A reject after the signature verified: attribute it, and count it if the signer is at fault."""
        if offenders is not None and reason in ATTRIBUTABLE_REASONS:
            offenders.note(sender, now_s, token[0] if token else None)
        return Reject(reason, detail, sender)

    # 1. size, 2. structure (bounded msgpack, exact types and lengths)
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return Reject("malformed", "envelope is not bytes")
    size = memoryview(raw).nbytes
    if size > ctx.max_message_bytes:
        return Reject("oversize", f"{size} > {ctx.max_message_bytes} bytes")
    raw = bytes(raw)
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
        token.append(hashlib.sha256(header_bytes).digest())
        return blame("malformed", header, signer)
    sender = header.sender

    # 3. pinned sender, 4. not banned, 5. signature over the exact received header bytes
    public_key = ctx.allow_list.public_key(sender)
    if public_key is None:
        return Reject("unknown_sender", sender.hex()[:12])
    if offenders is not None and offenders.is_banned(sender, now_s):
        return Reject("banned", sender.hex()[:12])
    try:
        if signed:
            public_key.verify(sig, to_verify)
    except InvalidSignature:
        return Reject("bad_signature", sender.hex()[:12])
    token.append(hashlib.sha256(header_bytes).digest())  # identifies this signed message (payload via its hash)

    # 6. the payload is the one the sender signed
    if signed and hashlib.sha256(payload).digest() != header.payload_sha256:
        return blame("payload_hash", "", sender)

    # 7. protocol, federation, addressing, freshness, replay
    if header.version != PROTOCOL_VERSION:
        return blame("wrong_version", str(header.version)[:20], sender)
    if header.federation != ctx.federation:
        return blame("wrong_federation", repr(header.federation[:64]), sender)
    if header.recipient == b"":
        if header.msg_type not in ctx.broadcast_types:
            return blame("wrong_recipient", "broadcast of a unicast type", sender)
    elif header.recipient != ctx.self_id:
        return blame("wrong_recipient", header.recipient.hex()[:12], sender)
    r = header.round
    if r < ctx.current_round - ctx.rounds_behind and header.msg_type not in ctx.unbounded_past_types:
        return blame("stale_round", f"{r} < {ctx.current_round} - {ctx.rounds_behind}", sender)
    if r > ctx.current_round + ctx.rounds_ahead and header.msg_type not in ctx.unbounded_future_types:
        return blame("future_round", f"{r} > {ctx.current_round} + {ctx.rounds_ahead}", sender)
    if abs(header.timestamp_ms - ctx.now_ms) > ctx.timestamp_window_ms:
        return blame("timestamp", f"off by {header.timestamp_ms - ctx.now_ms} ms", sender)
    key = (header.msg_type, r, header.attempt, header.recipient)
    seen = ctx.replay.seen(sender, header.nonce, key, now_s)
    if seen is not None:
        return blame(seen, "", sender)

    # 8. payload: only where expected, exactly the expected layout, then plaintext sanity
    arrays: dict[str, np.ndarray] = {}
    if header.msg_type not in ctx.payload_types:
        if payload or header.layout.entries:
            return blame("unexpected_payload", f"{len(payload)} bytes", sender)
    else:
        accepted = ctx.accepted_layouts()
        if accepted is not None and header.layout not in accepted:
            return blame("layout", "layout differs from the model spec", sender)
        if len(payload) != header.layout.nbytes:
            return blame("layout", f"payload has {len(payload)} bytes, layout needs {header.layout.nbytes}", sender)
        try:
            arrays = decode_arrays(payload, header.layout)
        except ValueError as exc:
            return blame("layout", str(exc)[:200], sender)
        bad = _float_checks(arrays, ctx)
        if bad is not None:
            return blame(bad[0], bad[1], sender)

    ctx.replay.record(sender, header.nonce, key, now_s)
    return Message(header, arrays)


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
    "REJECT_REASONS", "Reject", "SIG_DOMAIN", "SPEC_DTYPES", "UNSIGNED_PAYLOAD_HASH", "UNSIGNED_SIG", "VerifyContext",
    "open_envelope", "seal",
]
