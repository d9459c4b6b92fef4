"""The envelope's wire framing and its header: the structural parse every receiver runs first.

``envelope = msgpack([header_bytes, payload, sig])`` (:func:`pack_envelope` joins the three bin
items in one copy) and :func:`_parse_header` turns header bytes into a :class:`Header` or a
short reason they are malformed: bounded msgpack, exact field types and lengths, a layout
:class:`~fednode.security.arrays.ModelSpec` accepts, plain meta. Signing and the checks that
need the receiver's view live in :mod:`fednode.security.envelope`.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import msgpack

from fednode.security.arrays import ModelSpec

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
_NO_ARRAYS = ModelSpec(())


class Header(NamedTuple):
    """The signed header, as parsed from the verified header bytes (a tuple: built for every message)."""

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


_META_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def _meta_ok(meta: object) -> bool:
    """Plain msgpack data with str keys all the way down, bounded depth (iterative: no recursion)."""
    if type(meta) is dict:  # fast path, every round message: str keys -> scalars or lists of scalars
        scalars = _META_SCALARS
        for k, v in meta.items():
            if type(k) is not str:
                return False
            t = type(v)
            if t is list:
                for x in v:
                    if type(x) not in scalars:
                        break
                else:
                    continue
                break
            if t not in scalars:
                break
        else:
            return True
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
        spec = _NO_ARRAYS if not layout else ModelSpec.from_layout(layout)  # most messages carry no arrays
    except ValueError:
        return "layout"
    if type(meta) is not dict or not _meta_ok(meta):
        return "meta"
    return tuple.__new__(Header, (version, msg_type, sender, recipient, federation, rnd, attempt, nonce, ts_ms, sha,
                                  spec, meta))  # a NamedTuple's own __new__ is a Python function
