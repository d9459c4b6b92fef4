"""Signed envelopes: round trip, tamper/replay/freshness rejects, fuzzing, payload sanity, no mutation."""

from __future__ import annotations

import hashlib
import itertools
import random

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fednode.security.arrays import ModelSpec
from fednode.security.envelope import (MAX_HEADER_BYTES, MAX_META_DEPTH, REJECT_REASONS, SIG_DOMAIN, SPEC_DTYPES,
                                       Message, MsgType, Reject, VerifyContext, open_envelope, seal)
from fednode.security.identity import AllowList, Identity
from fednode.security.replay import OffenderTracker, ReplayGuard

FUZZ = settings(derandomize=True, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def _ident(seed: bytes) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"test/" + seed).digest()))


ALICE, BOB, CAROL, MALLORY = (_ident(n) for n in (b"alice", b"bob", b"carol", b"mallory"))
ALLOW = AllowList()
for _i in (ALICE, BOB, CAROL):
    ALLOW.add(_i.public_key_bytes)
FED = "fed-1"
NOW = 1_700_000_000_000
ROUND = 10
MODEL = {"b": np.array([0.5, -1.0, 2.0], dtype=np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
SPEC = ModelSpec.of(MODEL)
_nonces = itertools.count(1)
OK_REASONS = set(REJECT_REASONS) - {"internal"}


def nonce() -> bytes:
    return next(_nonces).to_bytes(16, "big")


def ctx(**kw) -> VerifyContext:
    base = dict(self_id=BOB.peer_id, federation=FED, allow_list=ALLOW, current_round=ROUND, now_ms=NOW,
                replay=ReplayGuard(), model_spec=SPEC)
    base.update(kw)
    return VerifyContext(**base)


def mk(identity: Identity = ALICE, **kw) -> bytes:
    """A valid CONTRIBUTE from ALICE to BOB unless overridden."""
    base = dict(msg_type=MsgType.CONTRIBUTE, recipient=BOB.peer_id, federation=FED, round=ROUND, attempt=0,
                arrays=MODEL, spec=SPEC, meta={"d": 3}, now_ms=NOW, nonce=nonce())
    base.update(kw)
    if base["arrays"] is None:
        base["spec"] = None
    return seal(identity, **base)


def forge(payload: bytes = b"", signer: Identity = ALICE, sig: bytes | None = None, **over) -> bytes:
    """An envelope with an arbitrary header (field values may be of any type), signed by ``signer``."""
    fields = dict(v=1, type=int(MsgType.CONTRIBUTE), sender=ALICE.peer_id, recipient=BOB.peer_id, fed=FED,
                  round=ROUND, attempt=0, nonce=nonce(), ts=NOW, sha=hashlib.sha256(payload).digest(),
                  layout=SPEC.to_layout(), meta={})
    fields.update(over)
    header = msgpack.packb(list(fields.values()), use_bin_type=True)
    sig = signer.sign(SIG_DOMAIN + header) if sig is None else sig
    return msgpack.packb([header, payload, sig], use_bin_type=True)


def payload_of(model: dict) -> bytes:
    return b"".join(np.ascontiguousarray(model[n], dtype=d).tobytes() for n, d, _ in SPEC.entries)


def open_(raw, c: VerifyContext) -> Message | Reject:
    """open_envelope, asserting the catch-all is never what answered."""
    res = open_envelope(raw, c)
    assert isinstance(res, (Message, Reject))
    if isinstance(res, Reject):
        assert res.reason in OK_REASONS, res
    return res


def reason(raw, c: VerifyContext | None = None) -> str:
    res = open_(raw, c if c is not None else ctx())
    return "accepted" if isinstance(res, Message) else res.reason


def model_hash(model) -> str:
    h = hashlib.sha256()
    for k in sorted(model):
        a = np.asarray(model[k])
        h.update(k.encode() + a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ round trip

def test_round_trip_basic() -> None:
    raw = mk(meta={"d": 3, "n": [CAROL.peer_id, ALICE.peer_id], "x": {"k": [1.5, None, True, "s"]}})
    msg = open_(raw, ctx())
    assert isinstance(msg, Message)
    assert msg.sender == ALICE.peer_id and msg.recipient == BOB.peer_id
    assert msg.msg_type is MsgType.CONTRIBUTE and msg.round == ROUND and msg.attempt == 0
    assert msg.meta == {"d": 3, "n": [CAROL.peer_id, ALICE.peer_id], "x": {"k": [1.5, None, True, "s"]}}
    assert msg.header.version == 1 and msg.header.federation == FED and msg.header.timestamp_ms == NOW
    assert msg.layout == SPEC and len(msg.nonce) == 16
    for k in MODEL:
        np.testing.assert_array_equal(msg.arrays[k], MODEL[k])
        assert msg.arrays[k].dtype == MODEL[k].dtype and not msg.arrays[k].flags.writeable
        with pytest.raises(ValueError):
            msg.arrays[k][...] = 0


def test_seal_normalises_meta() -> None:
    raw = mk(msg_type=MsgType.HELLO, arrays=None, meta={"d": np.int64(4), "s": {b"\x02", b"\x01"},
                                                         "f": np.float32(0.5), "t": (1, 2)})
    msg = open_(raw, ctx())
    assert msg.meta == {"d": 4, "s": [b"\x01", b"\x02"], "f": 0.5, "t": [1, 2]}
    assert type(msg.meta["d"]) is int


_meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=12)


def _depth(x) -> int:
    if isinstance(x, dict):
        return 1 + max((_depth(v) for v in x.values()), default=0)
    if isinstance(x, list):
        return 1 + max((_depth(v) for v in x), default=0)
    return 0


_dtypes = st.sampled_from(["<f4", "<f8", "<i4", "<i8", "<u4", "<u8"])
_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6)


@st.composite
def _models(draw) -> dict:
    names = draw(st.lists(_names, min_size=0, max_size=4, unique=True))
    out = {}
    for name in names:
        dt = np.dtype(draw(_dtypes))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        elements = st.floats(-1e6, 1e6, width=8 * dt.itemsize) if dt.kind == "f" else None
        out[name] = draw(hnp.arrays(dt, shape, elements=elements))
    return out


@FUZZ
@given(model=_models(), meta=st.dictionaries(st.text(max_size=8), _meta_values, max_size=5),
       msg_type=st.sampled_from([MsgType.CONTRIBUTE, MsgType.MODEL_REPLY]), rnd=st.integers(9, 12),
       attempt=st.integers(0, 2**63 - 1), dt_ms=st.integers(-60_000, 60_000), broadcast=st.booleans())
def test_round_trip_property(model, meta, msg_type, rnd, attempt, dt_ms, broadcast) -> None:
    if _depth(meta) > MAX_META_DEPTH:
        return
    spec = ModelSpec.of(model)
    before = model_hash(model)
    c = ctx(model_spec=spec,
            broadcast_types=frozenset({int(msg_type)}) if broadcast else frozenset())
    raw = seal(ALICE, msg_type=msg_type, recipient=b"" if broadcast else BOB.peer_id, federation=FED, round=rnd,
               attempt=attempt, arrays=model, spec=spec, meta=meta, now_ms=NOW + dt_ms, nonce=nonce())
    msg = open_(raw, c)
    assert isinstance(msg, Message), msg
    assert msg.meta == meta and msg.round == rnd and msg.attempt == attempt and msg.msg_type == msg_type
    assert list(msg.arrays) == list(spec.names)
    for k, a in model.items():
        assert msg.arrays[k].shape == a.shape and not msg.arrays[k].flags.writeable
        np.testing.assert_array_equal(msg.arrays[k], a)
    assert model_hash(model) == before
    assert reason(raw, c) == "replay_nonce"


# ------------------------------------------------------------------------------------------ tampering

def _regions(raw: bytes) -> tuple[list[str], bytes, bytes, bytes]:
    header, payload, sig = msgpack.unpackb(raw)
    kinds = ["framing"] * len(raw)
    for name, part in (("header", header), ("payload", payload), ("sig", sig)):
        start = raw.index(part) if part else -1
        for i in range(start, start + len(part)):
            kinds[i] = name
    return kinds, header, payload, sig


ALLOWED_FOR_REGION = {
    "framing": {"malformed"},
    "header": {"malformed", "unknown_sender", "bad_signature"},
    "payload": {"payload_hash"},
    "sig": {"bad_signature"},
}


def _flip(raw: bytes, bit: int) -> bytes:
    b = bytearray(raw)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_every_single_bit_flip_rejected_exhaustive() -> None:
    small = {"v": np.array([1.0, -2.0], dtype=np.float32)}
    spec = ModelSpec.of(small)
    raw = seal(ALICE, msg_type=MsgType.CONTRIBUTE, recipient=BOB.peer_id, federation=FED, round=ROUND,
               arrays=small, spec=spec, meta={"d": 1}, now_ms=NOW, nonce=nonce())
    c = ctx(model_spec=spec)
    kinds, *_ = _regions(raw)
    seen: dict[str, set[str]] = {k: set() for k in ALLOWED_FOR_REGION}
    for bit in range(len(raw) * 8):
        r = reason(_flip(raw, bit), c)
        kind = kinds[bit // 8]
        assert r in ALLOWED_FOR_REGION[kind], (bit, kind, r)
        seen[kind].add(r)
    assert seen == {"framing": {"malformed"}, "header": {"malformed", "unknown_sender", "bad_signature"},
                    "payload": {"payload_hash"}, "sig": {"bad_signature"}}
    assert reason(raw, c) == "accepted"  # no rejected flip poisoned the replay guard


def test_bit_flips_sampled_large_message() -> None:
    big = {"w": np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64), "b": np.zeros(7, np.float32)}
    spec = ModelSpec.of(big)
    raw = seal(ALICE, msg_type=MsgType.CONTRIBUTE, recipient=BOB.peer_id, federation=FED, round=ROUND,
               arrays=big, spec=spec, meta={"d": 1, "n": [ALICE.peer_id]}, now_ms=NOW, nonce=nonce())
    c = ctx(model_spec=spec)
    kinds, *_ = _regions(raw)
    rng = random.Random(1234)
    bits = set(range(64 * 8)) | set(range((len(raw) - 96) * 8, len(raw) * 8))
    bits |= set(rng.sample(range(len(raw) * 8), 1500))
    for bit in sorted(bits):
        assert reason(_flip(raw, bit), c) in ALLOWED_FOR_REGION[kinds[bit // 8]], bit
    assert reason(raw, c) == "accepted"


def test_truncation_and_extension_rejected() -> None:
    raw = mk()
    c = ctx()
    reasons = {reason(raw[:n], c) for n in range(0, len(raw), 7)}
    assert reasons == {"malformed"}
    assert reason(raw + b"\x00", c) == "malformed"
    assert reason(raw, c) == "accepted"


# ------------------------------------------------------------------------------------------ keys

def test_wrong_keys() -> None:
    c = ctx()
    payload = payload_of(MODEL)
    cases = [
        mk(MALLORY),  # not admitted
        forge(payload, signer=CAROL),  # admitted key, but claims to be ALICE
        forge(payload, signer=MALLORY),  # outsider claiming to be ALICE
        forge(payload, signer=ALICE, sender=CAROL.peer_id),  # ALICE claiming to be CAROL
        forge(payload, sig=bytes(64)),
        forge(payload, signer=ALICE, sig=ALICE.sign(msgpack.packb([1]))),  # valid signature, other data
    ]
    assert [reason(r, c) for r in cases] == ["unknown_sender"] + ["bad_signature"] * 5
    # signature without the domain prefix does not verify
    fields = [1, 2, ALICE.peer_id, BOB.peer_id, FED, ROUND, 0, nonce(), NOW, hashlib.sha256(payload).digest(),
              SPEC.to_layout(), {}]
    header = msgpack.packb(fields, use_bin_type=True)
    raw = msgpack.packb([header, payload, ALICE.sign(header)], use_bin_type=True)
    assert reason(raw, c) == "bad_signature"
    raw = msgpack.packb([header, payload, ALICE.sign(SIG_DOMAIN + header)], use_bin_type=True)
    assert reason(raw, c) == "accepted"


def test_reject_sender_only_when_signature_verified() -> None:
    c = ctx()
    assert open_(mk(MALLORY), c).sender is None
    assert open_(forge(payload_of(MODEL), signer=CAROL), c).sender is None
    stale = open_(mk(round=1), c)
    assert stale.reason == "stale_round" and stale.sender == ALICE.peer_id and not stale.blames_sender
    nan = open_(mk(arrays={"b": MODEL["b"], "w": np.full((2, 3), np.nan, np.float32)}), c)
    assert nan.reason == "non_finite" and nan.blames_sender


# ------------------------------------------------------------------------------------------ replay & addressing

def test_replay_and_recipient_binding() -> None:
    c_bob = ctx()
    c_carol = ctx(self_id=CAROL.peer_id)
    raw = mk()
    same_nonce = nonce()
    n1 = mk(nonce=same_nonce, attempt=1)
    n2 = mk(nonce=same_nonce, attempt=2)
    dup1, dup2 = mk(msg_type=MsgType.COMMIT, arrays=None), mk(msg_type=MsgType.COMMIT, arrays=None)
    results = [
        reason(raw, c_bob),  # first delivery
        reason(raw, c_bob),  # same bytes again
        reason(raw, c_carol),  # replayed to another aggregator
        reason(bytearray(raw), ctx()),  # bytes-like input, fresh guard: fine
        reason(n1, c_bob), reason(n2, c_bob),  # same nonce, different content
        reason(dup1, c_bob), reason(dup2, c_bob),  # fresh nonce, same (sender, type, round, attempt, recipient)
        reason(mk(msg_type=MsgType.COMMIT, arrays=None, attempt=1), c_bob),
        reason(mk(CAROL, msg_type=MsgType.COMMIT, arrays=None), c_bob),  # another sender: independent
        reason(mk(recipient=b""), c_bob),  # unicast type sent as broadcast
        reason(mk(msg_type=MsgType.HELLO, arrays=None, recipient=b""), c_carol),  # broadcast HELLO: anyone
        reason(mk(msg_type=MsgType.HELLO, arrays=None, recipient=CAROL.peer_id), c_bob),
    ]
    assert results == ["accepted", "replay_nonce", "wrong_recipient", "accepted", "accepted", "replay_nonce",
                       "accepted", "duplicate", "accepted", "accepted", "wrong_recipient", "accepted",
                       "wrong_recipient"]


def test_replay_after_ttl_is_stopped_by_timestamp() -> None:
    raw = mk()
    guard = ReplayGuard(nonce_ttl_s=120.0)
    assert reason(raw, ctx(replay=guard)) == "accepted"
    later = [reason(raw, ctx(replay=guard, now_ms=NOW + dt)) for dt in (59_000, 60_000, 60_001, 121_000)]
    assert later == ["replay_nonce", "replay_nonce", "timestamp", "timestamp"]


def test_rounds_and_timestamps() -> None:
    cases = {
        "r-3": mk(round=ROUND - 3), "r-2": mk(round=ROUND - 2), "r-1": mk(round=ROUND - 1), "r": mk(round=ROUND),
        "r+1": mk(round=ROUND + 1), "r+2": mk(round=ROUND + 2), "r+3": mk(round=ROUND + 3),
        "hello far future": mk(msg_type=MsgType.HELLO, arrays=None, round=ROUND + 10_000),
        "hello far future broadcast": mk(msg_type=MsgType.HELLO, arrays=None, round=ROUND + 5, recipient=b""),
        "hello stale": mk(msg_type=MsgType.HELLO, arrays=None, round=ROUND - 2),
        "status future": mk(msg_type=MsgType.STATUS, arrays=None, round=ROUND + 3, recipient=b""),
        "ts -60s": mk(now_ms=NOW - 60_000), "ts +60s": mk(now_ms=NOW + 60_000),
        "ts -60.001s": mk(now_ms=NOW - 60_001), "ts +60.001s": mk(now_ms=NOW + 60_001),
        "ts 0": mk(now_ms=0), "ts far": mk(now_ms=2**63 - 1),
    }
    got = {k: reason(v, ctx()) for k, v in cases.items()}  # fresh guard: several share a uniqueness key
    assert got == {
        "r-3": "stale_round", "r-2": "stale_round", "r-1": "accepted", "r": "accepted", "r+1": "accepted",
        "r+2": "accepted", "r+3": "future_round", "hello far future": "accepted",
        "hello far future broadcast": "accepted", "hello stale": "stale_round", "status future": "future_round",
        "ts -60s": "accepted", "ts +60s": "accepted", "ts -60.001s": "timestamp", "ts +60.001s": "timestamp",
        "ts 0": "timestamp", "ts far": "timestamp",
    }


def test_federation_version_and_order_of_checks() -> None:
    payload = payload_of(MODEL)
    nan_payload = payload_of({"b": MODEL["b"], "w": np.full((2, 3), np.inf, np.float32)})
    cases = [
        (mk(federation="other"), "wrong_federation"),
        (forge(payload, v=2), "wrong_version"),
        (forge(payload, v=2, fed="other"), "wrong_version"),  # version is checked before federation
        (mk(federation="other", recipient=CAROL.peer_id), "wrong_federation"),
        (mk(recipient=CAROL.peer_id, round=0), "wrong_recipient"),
        (mk(round=0, now_ms=0), "stale_round"),
        (mk(round=ROUND + 5, now_ms=0), "future_round"),
        (forge(nan_payload, ts=0), "timestamp"),
        (forge(payload, sha=bytes(32), fed="x"), "payload_hash"),
        (forge(payload, signer=CAROL, v=2), "bad_signature"),
        (forge(payload, signer=MALLORY, sender=MALLORY.peer_id, v=2), "unknown_sender"),
        (mk(msg_type=MsgType.HELLO, arrays=MODEL, spec=SPEC), "unexpected_payload"),
        (forge(nan_payload, layout=[]), "layout"),
        (forge(nan_payload), "non_finite"),
    ]
    c = ctx()
    assert [reason(raw, c) for raw, _ in cases] == [r for _, r in cases]


def test_duplicate_checked_before_payload() -> None:
    c = ctx()
    n = nonce()
    assert reason(mk(nonce=n), c) == "accepted"
    nan = {"b": MODEL["b"], "w": np.full((2, 3), np.nan, np.float32)}
    assert reason(mk(nonce=n, arrays=nan), c) == "replay_nonce"
    assert reason(mk(arrays=nan), c) == "duplicate"


# ------------------------------------------------------------------------------------------ payload checks

def test_layout_dtype_and_shape() -> None:
    c = ctx()
    f8 = {k: v.astype(np.float64) for k, v in MODEL.items()}
    cases = {
        "f8": mk(arrays=f8, spec=ModelSpec.of(f8)),
        "shape": mk(arrays={"b": MODEL["b"], "w": MODEL["w"].reshape(3, 2)},
                    spec=ModelSpec.of({"b": MODEL["b"], "w": MODEL["w"].reshape(3, 2)})),
        "missing": mk(arrays={"w": MODEL["w"]}, spec=ModelSpec.of({"w": MODEL["w"]})),
        "extra": mk(arrays={**MODEL, "z": np.zeros(1, np.float32)},
                    spec=ModelSpec.of({**MODEL, "z": np.zeros(1, np.float32)})),
        "renamed": mk(arrays={"b": MODEL["b"], "W": MODEL["w"]}, spec=ModelSpec.of({"b": MODEL["b"], "W": MODEL["w"]})),
        "reordered": forge(payload_of(MODEL), layout=list(reversed(SPEC.to_layout()))),
        "empty": mk(arrays=None),
        "short payload": forge(payload_of(MODEL)[:-4]),
        "long payload": forge(payload_of(MODEL) + b"\0" * 4),
        "u8 not allowed": mk(arrays={k: v.astype(np.uint64) for k, v in MODEL.items()}, spec=SPEC.with_dtype("<u8")),
        "ok": mk(),
    }
    got = {k: reason(v, c) for k, v in cases.items()}
    assert got == {k: ("accepted" if k == "ok" else "layout") for k in cases}


def test_any_layout_without_model_spec_but_size_checked() -> None:
    odd = {"q": np.arange(5, dtype=np.int32)}
    assert reason(mk(arrays=odd, spec=ModelSpec.of(odd)), ctx(model_spec=None)) == "accepted"
    huge = [["a", "<f4", [65536, 65536, 65536, 65536]]]  # 2^64 elements: must not wrap to 0 bytes
    assert reason(forge(b"", layout=huge), ctx(model_spec=None)) == "layout"
    assert reason(forge(b"\0" * 4, layout=[["a", "<f4", [1]]]), ctx(model_spec=None)) == "accepted"
    dup = [["a", "<f4", [1]], ["a", "<f4", [1]]]  # two payload regions for one name
    assert reason(forge(b"\0" * 8, layout=dup), ctx(model_spec=None)) == "malformed"


def test_ring_variant_hook() -> None:
    ring = {k: np.full(v.shape, 2**63 + 5, dtype=np.uint64) for k, v in MODEL.items()}
    raw = mk(arrays=ring, spec=SPEC.with_dtype("<u8"))
    c = dict(allowed_payload_dtypes=frozenset({SPEC_DTYPES, "<u8"}), max_norm=1.0, norm_reference=MODEL)
    msg = open_(raw, ctx(**c))
    assert isinstance(msg, Message) and msg.arrays["w"].dtype == np.dtype("<u8")
    assert reason(mk(), ctx(**{**c, "max_norm": None})) == "accepted"  # plaintext variant still allowed
    assert reason(mk(arrays={"b": MODEL["b"] + 1, "w": MODEL["w"]}), ctx(**c)) == "norm"  # ... and still checked
    only_ring = ctx(allowed_payload_dtypes=frozenset({"<u8"}))
    assert reason(mk(), only_ring) == "layout"


def test_non_finite_norm_magnitude() -> None:
    def with_w(value) -> dict:
        w = MODEL["w"].copy()
        w[1, 2] = value
        return {"b": MODEL["b"], "w": w}

    ref = {k: v.copy() for k, v in MODEL.items()}
    ref_hash = model_hash(ref)
    near = {"b": MODEL["b"] + 0.1, "w": MODEL["w"]}  # distance sqrt(3)*0.1 ~ 0.173
    far = {"b": MODEL["b"] + 1.0, "w": MODEL["w"]}  # distance sqrt(3)
    cases = [
        (mk(arrays=with_w(np.nan)), ctx(), "non_finite"),
        (mk(arrays=with_w(np.inf)), ctx(), "non_finite"),
        (mk(arrays=with_w(-np.inf)), ctx(), "non_finite"),
        (mk(arrays=with_w(np.nan)), ctx(max_abs=None), "non_finite"),
        (mk(arrays=with_w(2.0**20)), ctx(), "accepted"),
        (mk(arrays=with_w(-(2.0**20) - 1)), ctx(), "magnitude"),
        (mk(arrays=with_w(3e38)), ctx(max_abs=None), "accepted"),
        (mk(arrays=with_w(3e38)), ctx(max_abs=None, max_norm=1e300), "accepted"),
        (mk(arrays=near), ctx(max_norm=0.2, norm_reference=ref), "accepted"),
        (mk(arrays=far), ctx(max_norm=0.2, norm_reference=ref), "norm"),
        (mk(arrays=far), ctx(max_norm=1.8, norm_reference=ref), "accepted"),
        (mk(), ctx(max_norm=1.0), "norm"),  # no reference: norm of the payload itself (~9.6)
        (mk(), ctx(max_norm=10.0), "accepted"),
        (mk(), ctx(max_norm=10.0, norm_reference={"w": ref["w"]}), "layout"),  # reference lacks 'b'
    ]
    assert [reason(raw, c) for raw, c, _ in cases] == [r for _, _, r in cases]
    assert model_hash(ref) == ref_hash


def test_caller_data_never_mutated() -> None:
    model = {k: v.copy() for k, v in MODEL.items()}
    ref = {k: v + 1 for k, v in MODEL.items()}
    meta = {"n": [ALICE.peer_id], "d": 2, "m": {"x": [1, 2]}}
    before = (model_hash(model), model_hash(ref), repr(meta))
    raw = mk(arrays=model, meta=meta)
    c = ctx(max_norm=1e6, norm_reference=ref)
    msg = open_(raw, c)
    assert isinstance(msg, Message)
    msg.meta["n"].append(b"x")  # the receiver's copy is its own
    assert (model_hash(model), model_hash(ref), repr(meta)) == before
    for bad in (mk(arrays={"b": model["b"], "w": np.full((2, 3), np.nan, np.float32)}), raw, b"junk"):
        open_(bad, c)
        assert (model_hash(model), model_hash(ref), repr(meta)) == before


# ------------------------------------------------------------------------------------------ malformed input

def test_oversize() -> None:
    raw = mk()
    assert reason(raw, ctx(max_message_bytes=len(raw) - 1)) == "oversize"
    assert reason(raw, ctx(max_message_bytes=len(raw))) == "accepted"
    header = b"\x00" * (MAX_HEADER_BYTES + 1)
    assert reason(msgpack.packb([header, b"", bytes(64)], use_bin_type=True)) == "oversize"
    with pytest.raises(ValueError):
        mk(meta={"big": b"\0" * (MAX_HEADER_BYTES + 1)})


def test_structural_rejects() -> None:
    payload = payload_of(MODEL)
    deep: object = 1
    for _ in range(MAX_META_DEPTH + 2):
        deep = [deep]
    good_header = msgpack.unpackb(msgpack.unpackb(mk())[0])
    cases = [
        b"", b"\xc1", msgpack.packb(None), msgpack.packb({}), msgpack.packb([1, 2, 3]),
        msgpack.packb([b"", b"", b""], use_bin_type=True),
        msgpack.packb(["h", b"", bytes(64)], use_bin_type=True),
        msgpack.packb([b"h", b"", bytes(63)], use_bin_type=True),
        msgpack.packb([b"h", b"", bytes(64), b""], use_bin_type=True),
        msgpack.packb([msgpack.packb(good_header + [0], use_bin_type=True), b"", bytes(64)], use_bin_type=True),
        msgpack.packb(msgpack.ExtType(1, b"x")),
        forge(payload, v=True), forge(payload, v="1"), forge(payload, type=99), forge(payload, type=2.0),
        forge(payload, type=False), forge(payload, sender=ALICE.peer_id[:31]), forge(payload, sender="a" * 32),
        forge(payload, recipient=BOB.peer_id + b"\0"), forge(payload, recipient=None), forge(payload, fed=b"fed-1"),
        forge(payload, round=-1), forge(payload, round=2**64 - 1), forge(payload, round=True),
        forge(payload, round=10.0), forge(payload, attempt=None), forge(payload, ts=-5),
        forge(payload, nonce=b"\0" * 15), forge(payload, nonce="n" * 16), forge(payload, sha=b"\0" * 31),
        forge(payload, layout={}), forge(payload, layout=[["b", "<f2", [3]]]), forge(payload, layout=[["b"]]),
        forge(payload, layout=[["b", "<f4", [True]]]), forge(payload, layout=[["b", "<f4", [-1]]]),
        forge(payload, meta=[]), forge(payload, meta={"k": msgpack.ExtType(5, b"")}),
        forge(payload, meta={b"bytes-key": 1}), forge(payload, meta={"k": {b"nested-bytes-key": 1}}),
        forge(payload, meta={"deep": deep}),
    ]
    got = [open_(raw, ctx()) for raw in cases]
    assert [r.reason for r in got] == ["malformed"] * len(cases)
    # malformed headers really signed by an admitted sender are attributed to it; the rest are not
    attributed = [r.sender for r in got[11:]]
    assert all(s == ALICE.peer_id for s in attributed[:4]) and attributed[5] is None
    assert attributed[-1] == ALICE.peer_id
    assert open_(forge(payload, signer=CAROL, round=-1), ctx()).sender is None
    assert reason(b"\x93" + b"\xc4\x00" * 2 + b"\xc4", ctx()) == "malformed"


def test_non_bytes_input() -> None:
    for raw in (None, "string", 12, [b"a"], memoryview(b"abc")):
        assert reason(raw) == "malformed"  # type: ignore[arg-type]


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_binary_never_raises(data: bytes) -> None:
    assert reason(data) in OK_REASONS


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=10)
    | st.binary(max_size=70) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=2)),
    lambda ch: st.lists(ch, max_size=13) | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), ch,
                                                          max_size=4),
    max_leaves=20)


@FUZZ
@given(obj=_msgpack_values)
def test_fuzz_arbitrary_msgpack_never_raises(obj) -> None:
    assert reason(msgpack.packb(obj, use_bin_type=True)) == "malformed"


_FIELDS = ["v", "type", "sender", "recipient", "fed", "round", "attempt", "nonce", "ts", "sha", "layout", "meta"]


@FUZZ
@given(field=st.sampled_from(_FIELDS), value=_msgpack_values, signer=st.sampled_from([ALICE, CAROL]),
       payload=st.sampled_from([b"", payload_of(MODEL), b"\0" * 12]))
def test_fuzz_signed_header_fields_never_raise(field, value, signer, payload) -> None:
    raw = forge(payload, signer=signer, **{field: value})
    res = open_(raw, ctx(offenders=OffenderTracker()))
    if isinstance(res, Reject) and res.sender is not None:
        assert res.sender == ALICE.peer_id and signer is ALICE


@FUZZ
@given(position=st.integers(0, 2), value=_msgpack_values)
def test_fuzz_envelope_elements_never_raise(position, value) -> None:
    parts: list = list(msgpack.unpackb(mk()))
    parts[position] = value
    assert reason(msgpack.packb(parts, use_bin_type=True)) in OK_REASONS


# ------------------------------------------------------------------------------------------ offenders

def test_repeat_offender_is_banned_and_replays_do_not_count() -> None:
    offenders = OffenderTracker(threshold=5, window_s=60.0, ban_s=300.0)
    c = ctx(offenders=offenders)
    nan = {"b": MODEL["b"], "w": np.full((2, 3), np.nan, np.float32)}
    bad = mk(arrays=nan)
    assert [reason(bad, c) for _ in range(10)] == ["non_finite"] * 10  # one bad message replayed
    assert not offenders.is_banned(ALICE.peer_id, NOW / 1000)
    for _ in range(10):  # third-party-causable rejects never count
        reason(mk(round=0), c)
        reason(forge(payload_of(MODEL), signer=CAROL), c)
        reason(forge(payload_of(MODEL), sha=bytes(32)), c)
    assert offenders.offences(ALICE.peer_id, NOW / 1000) == 1
    assert [reason(mk(arrays=nan), c) for _ in range(4)] == ["non_finite"] * 4
    assert offenders.is_banned(ALICE.peer_id, NOW / 1000)
    assert [reason(mk(), c), reason(mk(CAROL), c)] == ["banned", "accepted"]
    later = ctx(offenders=offenders, now_ms=NOW + 301_000)
    assert reason(mk(now_ms=NOW + 301_000), later) == "accepted"


# ------------------------------------------------------------------------------------------ seal arguments

@pytest.mark.parametrize("kw", [
    dict(recipient=b"\0" * 31), dict(recipient="peer"), dict(round=-1), dict(round=True), dict(round=2**63),
    dict(attempt=-1), dict(now_ms=-1), dict(nonce=b"\0" * 15), dict(msg_type=99), dict(federation=b"fed"),
    dict(meta={1: "x"}), dict(meta={"x": {2: 3}}), dict(meta={"x": object()}), dict(meta=[1]),
    dict(arrays={"b": MODEL["b"]}), dict(arrays=None, spec=SPEC),
    dict(arrays={"b": MODEL["b"], "w": MODEL["w"].reshape(3, 2)}),
])
def test_seal_rejects_bad_arguments(kw) -> None:
    base = dict(msg_type=MsgType.CONTRIBUTE, recipient=BOB.peer_id, federation=FED, round=ROUND, arrays=MODEL,
                spec=SPEC, meta={}, now_ms=NOW, nonce=nonce())
    base.update(kw)
    with pytest.raises((ValueError, TypeError)):
        seal(ALICE, **base)


def test_seal_default_nonce_is_random() -> None:
    a = seal(ALICE, msg_type=MsgType.HELLO, recipient=b"", federation=FED, round=1, now_ms=NOW)
    b = seal(ALICE, msg_type=MsgType.HELLO, recipient=b"", federation=FED, round=1, now_ms=NOW)
    ha, hb = (msgpack.unpackb(msgpack.unpackb(x)[0]) for x in (a, b))
    assert ha[7] != hb[7] and len(ha[7]) == 16
