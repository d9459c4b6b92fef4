"""The checks of :func:`fednode.security.envelope.open_envelope`, in the order the envelope docs list.

Cheap structural checks first (size, bounded msgpack, exact header types), so an unauthenticated
peer can only make us parse bounded msgpack; nothing in the header is acted on before the signature
verified; the replay guard records a message only once it is accepted. :func:`check` may raise on a
bug; ``open_envelope`` turns that into the ``internal`` reject. ``signed=False`` is the simulator's
fast mode (:mod:`fednode.security.codec`): every check but the signature and the payload hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature

from fednode.security.arrays import decode_arrays
from fednode.security.envelope import (ATTRIBUTABLE_REASONS, ID_BYTES, MAX_HEADER_BYTES, PROTOCOL_VERSION,
                                       SIG_BYTES, SIG_DOMAIN, Header, Message, Reject, VerifyContext,
                                       _parse_header, _unpack_header)


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


def check(raw: bytes, ctx: VerifyContext, signed: bool = True,
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
