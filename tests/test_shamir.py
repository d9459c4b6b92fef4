"""Shamir sharing over GF(2^521 - 1) and AEAD share bundles (PROTOCOL 6, item 17), plus the no-pickle rule."""

from __future__ import annotations

import ast
import itertools
import random
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.security import aead
from fednode.security.kdf import EpochKeys, KeyAgreementError, share_key
from fednode.security.shamir import (PRIME, Y_BYTES, Share, ShamirError, pack_shares, reconstruct, reconstruct_bytes,
                                     split, threshold, unpack_shares)

ROOT = Path(__file__).resolve().parent.parent
PROPS = settings(derandomize=True, deadline=None, max_examples=60)


class SeededRng:
    """A reproducible stand-in for the ``secrets`` module (tests only)."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._r.randrange(n)


secrets_strategy = st.one_of(st.binary(min_size=0, max_size=64), st.integers(0, PRIME - 1))


@PROPS
@given(secret=secrets_strategy, n=st.integers(2, 12), data=st.data(), seed=st.integers(0, 2**32))
def test_t_shares_reconstruct_and_t_minus_1_do_not(secret, n: int, data, seed: int) -> None:
    t = data.draw(st.integers(2, n))
    shares = split(secret, t, n, rng=SeededRng(seed))
    assert [s.x for s in shares] == list(range(1, n + 1))
    subset = data.draw(st.permutations(shares))
    for k in (t, n):
        if isinstance(secret, bytes):
            assert reconstruct_bytes(subset[:k]) == secret
        else:
            assert reconstruct(subset[:k]) == secret
    as_int = secret if isinstance(secret, int) else int.from_bytes(b"\x01" + secret, "big")
    assert reconstruct(subset[:t - 1]) != as_int


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    """Hiding, concretely: two shares of a 3-of-5 sharing plus a suitable third point explain any secret."""
    s1, s2 = split(b"top secret", 3, 5, rng=SeededRng(1))[:2]
    base = reconstruct([s1, s2, Share(3, 0)])  # for nodes {1, 2, 3} the Lagrange weight of x = 3 at 0 is 1
    for candidate in (0, 1, 12345, PRIME - 1):
        assert reconstruct([s1, s2, Share(3, (candidate - base) % PRIME)]) == candidate


def test_duplicate_x_and_bad_parameters_are_refused() -> None:
    shares = split(42, 3, 5)
    with pytest.raises(ShamirError, match="duplicate"):
        reconstruct([shares[0], shares[1], shares[1]])
    with pytest.raises(ShamirError):
        reconstruct([shares[0], Share(shares[1].x, (shares[1].y + 1) % PRIME), shares[1]])
    with pytest.raises(ShamirError):
        reconstruct([])
    for t, n in ((1, 3), (4, 3), (0, 0), (2, 2**16)):
        with pytest.raises(ShamirError):
            split(1, t, n)
    with pytest.raises(ShamirError):
        split(b"x" * 65, 2, 3)
    with pytest.raises(ShamirError):
        split(PRIME, 2, 3)
    with pytest.raises(ShamirError):
        split(-1, 2, 3)
    for x, y in ((0, 1), (2**16, 1), (1, PRIME), (1, -1), (True, 1)):
        with pytest.raises(ShamirError):
            Share(x, y)
    with pytest.raises(ShamirError):
        reconstruct_bytes(split(b"abc", 3, 5)[:2])  # too few shares: almost surely not a byte secret


def test_byte_secrets_keep_leading_zeros() -> None:
    for secret in (b"", b"\x00", b"\x00\x00\x01", bytes(64), b"\xff" * 64):
        assert reconstruct_bytes(split(secret, 2, 3)[1:]) == secret


def test_threshold_rule() -> None:
    assert [threshold(n) for n in (2, 3, 4, 6, 8, 9)] == [2, 3, 3, 5, 6, 7]
    assert all(threshold(n) > 2 * n / 3 for n in range(2, 100))


# --------------------------------------------------------------------------------------- wire form

def test_share_wire_form_is_msgpack_int_and_66_bytes() -> None:
    shares = split(b"k" * 32, 3, 4, rng=SeededRng(3))
    data = pack_shares(shares)
    raw = msgpack.unpackb(data, raw=False)
    assert all(type(x) is int and type(y) is bytes and len(y) == Y_BYTES == 66 for x, y in raw)
    assert raw[0][1] == shares[0].y.to_bytes(66, "big")
    assert unpack_shares(data) == shares
    assert "y=..." in repr(shares[0]) and str(shares[0].y) not in repr(shares[0])


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", msgpack.packb({"x": 1}), msgpack.packb([[1]]), msgpack.packb([[1, b"\x00" * 65]]),
    msgpack.packb([[1, b"\xff" * 66]]),  # y >= p
    msgpack.packb([[0, b"\x00" * 66]]), msgpack.packb([["1", b"\x00" * 66]]), msgpack.packb([[1, "s" * 66]]),
    msgpack.packb([msgpack.ExtType(1, b"x")]), msgpack.packb([[1, b"\x00" * 66]] * 5),
])
def test_unpack_shares_is_strict(payload: bytes) -> None:
    with pytest.raises(ShamirError):
        unpack_shares(payload, max_shares=4)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.binary(max_size=400))
def test_unpack_shares_fuzz_raises_only_shamir_error(data: bytes) -> None:
    try:
        shares = unpack_shares(data)
    except ShamirError:
        return
    assert all(isinstance(s, Share) for s in shares)


# --------------------------------------------------------------------------------------- AEAD bundles

A, B, C = (EpochKeys.from_private_bytes(bytes([i]) * 32) for i in (1, 2, 3))
ID_A, ID_B, ID_C = b"A" * 32, b"B" * 32, b"C" * 32
CTX = dict(federation_id="fed-aead", round=4)


def test_bundle_roundtrip_and_symmetric_key() -> None:
    plaintext = pack_shares(split(b"seed" * 8, 2, 3))
    blob = aead.seal_bundle(A, B.public_bytes, plaintext, sender_id=ID_A, recipient_id=ID_B, **CTX)
    assert len(blob) == len(plaintext) + 12 + 16
    assert aead.open_bundle(B, A.public_bytes, blob, sender_id=ID_A, recipient_id=ID_B, **CTX) == plaintext
    k_ab = share_key(A.shared_secret(B.public_bytes), id_j=ID_A, id_k=ID_B, **CTX)
    assert k_ab == share_key(B.shared_secret(A.public_bytes), id_j=ID_B, id_k=ID_A, **CTX)
    assert blob != aead.seal_bundle(A, B.public_bytes, plaintext, sender_id=ID_A, recipient_id=ID_B, **CTX)  # nonce


def test_bundle_failures_raise_a_clear_error() -> None:
    blob = aead.seal_bundle(A, B.public_bytes, b"shares", sender_id=ID_A, recipient_id=ID_B, **CTX)
    attempts = {
        "wrong key": lambda: aead.open_bundle(C, A.public_bytes, blob, sender_id=ID_A, recipient_id=ID_B, **CTX),
        "reflected": lambda: aead.open_bundle(A, B.public_bytes, blob, sender_id=ID_B, recipient_id=ID_A, **CTX),
        "other round": lambda: aead.open_bundle(B, A.public_bytes, blob, sender_id=ID_A, recipient_id=ID_B,
                                                federation_id="fed-aead", round=5),
        "truncated": lambda: aead.open_bundle(B, A.public_bytes, blob[:20], sender_id=ID_A, recipient_id=ID_B, **CTX),
    }
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        with pytest.raises(aead.BundleDecryptionError):
            aead.open_bundle(B, A.public_bytes, bytes(flipped), sender_id=ID_A, recipient_id=ID_B, **CTX)
    for name, attempt in attempts.items():
        with pytest.raises(aead.BundleDecryptionError, match="authentication|too short"):
            attempt()
    with pytest.raises(KeyAgreementError):
        aead.seal_bundle(A, bytes(32), b"x", sender_id=ID_A, recipient_id=ID_B, **CTX)
    with pytest.raises(ValueError):
        aead.encrypt(b"short", b"x")


# --------------------------------------------------------------------------------------- hygiene

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}


def _forbidden_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            bad.append(node.module or "")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec",
                                                                                               "__import__"}:
            bad.append(node.func.id)
    return bad


def test_no_pickle_marshal_or_eval_anywhere_in_the_package() -> None:
    offenders = {str(p.relative_to(ROOT)): u for p in sorted((ROOT / "fednode").rglob("*.py"))
                 if (u := _forbidden_uses(p))}
    assert offenders == {}


def test_crypto_modules_import_neither_jax_nor_zenoh() -> None:
    code = ("import sys\n"
            "import fednode.security.ring, fednode.security.kdf, fednode.security.prg, fednode.security.masking\n"
            "import fednode.security.shamir, fednode.security.aead\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'zenoh'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_shares_of_one_sharing_are_pairwise_distinct_points() -> None:
    shares = split(7, 3, 6, rng=SeededRng(0))
    for a, b in itertools.combinations(shares, 2):
        assert a.x != b.x
