"""Pairwise masking, PRG and seeds (PROTOCOL 6, items 11, 12, 13, 15, 16).

11: masks cancel bit-exactly; 12: PRG determinism, prefix consistency, golden vector; 13: seed
symmetry and freshness; 15: masked vectors look uniform (chi-square on the top byte); 16: dropouts
leave garbage, a retry over the survivors gives their exact sum, |U| < 3 aborts. Also SecAgg+
mode B end to end (Shamir-shared self-mask seeds and keys, AEAD bundles through the aggregator).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fednode.security import aead, shamir
from fednode.security.arrays import ModelSpec
from fednode.security.kdf import EpochKeys, federation_salt, hkdf_sha256, mask_info, mask_seed
from fednode.security.masking import (BLOCK_ELEMENTS, DENSE_LIMIT, TooFewContributorsError, aggregate, apply_prg_terms,
                                      derive_mask_seeds, mask_partners, mask_sign, masked_contribution,
                                      masked_model_contribution, unmask_sum)
from fednode.security.prg import MAX_ELEMENTS, Keystream, mask_stream, mask_stream_into
from fednode.security.ring import FRAC_BITS, encode, encode_model, ring_sum, ring_sum_models

GOLDEN = Path(__file__).parent / "golden" / "prg_vector.hex"
FED = "fed-mask"
HALF_ULP = 2.0 ** -(FRAC_BITS + 1)


def _node(i: int) -> tuple[bytes, EpochKeys]:
    """Deterministic test node: (peer id, epoch keys)."""
    peer_id = hashlib.sha256(b"test/peer/" + i.to_bytes(4, "big")).digest()
    return peer_id, EpochKeys.from_private_bytes(hashlib.sha256(b"test/esk/" + i.to_bytes(4, "big")).digest())


NODES = [_node(i) for i in range(24)]
AGG_ID, AGG_KEYS = NODES[-1]
PUBLIC = {pid: keys.public_bytes for pid, keys in NODES}
KEYS = dict(NODES)


def _contributions(values: Sequence[np.ndarray], ids: Sequence[bytes], *, round: int = 5, attempt: int = 0,
                   aggregator: bytes = AGG_ID) -> list[np.ndarray]:
    """Each contributor j's y_{j->aggregator}, seeds derived from its own key and the others' public keys."""
    out = []
    for pid, v in zip(ids, values):
        seeds = derive_mask_seeds(KEYS[pid], pid, PUBLIC, federation_id=FED, round=round, attempt=attempt,
                                  aggregator_id=aggregator, contributor_ids=ids)
        out.append(masked_contribution(v, pid, aggregator, ids, seeds))
    return out


# --------------------------------------------------------------------------------------- partners

@settings(derandomize=True, deadline=None, max_examples=150)
@given(n=st.integers(1, 40), dense_limit=st.integers(0, 12), offsets=st.integers(1, 5))
def test_mask_partners_is_symmetric(n: int, dense_limit: int, offsets: int) -> None:
    ids = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
    partners = {j: set(mask_partners(j, ids, dense_limit, offsets)) for j in ids}
    for j in ids:
        assert j not in partners[j]
        for k in partners[j]:
            assert j in partners[k]
        if n <= dense_limit:
            assert partners[j] == set(ids) - {j}
        else:
            assert len(partners[j]) == min(2 * offsets, n - 1)


def test_sparse_ring_above_eight_contributors() -> None:
    ids = sorted(pid for pid, _ in NODES[:12])
    assert len(mask_partners(ids[0], ids[:DENSE_LIMIT])) == DENSE_LIMIT - 1
    m = mask_partners(ids[0], ids)
    assert set(m) == {ids[1], ids[2], ids[3], ids[-1], ids[-2], ids[-3]}
    with pytest.raises(ValueError):
        mask_partners(b"\x00" * 32, ids)  # self not a contributor
    with pytest.raises(ValueError):
        mask_partners(ids[0], ids + [ids[1]])  # duplicate id
    assert mask_sign(ids[0], ids[1]) == 1 and mask_sign(ids[1], ids[0]) == -1


# --------------------------------------------------------------------------------------- item 11

@settings(derandomize=True, deadline=None, max_examples=100)
@given(u=st.integers(3, 16), d=st.integers(1, 4096), seed=st.integers(0, 2**32 - 1))
@example(u=3, d=1, seed=0)
@example(u=8, d=4096, seed=1)  # largest dense set
@example(u=9, d=17, seed=2)  # smallest sparse ring
@example(u=16, d=4096, seed=3)
def test_masks_cancel_bit_exactly(u: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = [pid for pid, _ in NODES[:u]]
    w = rng.dirichlet(np.ones(u + 1))[:u]  # W_ij, the aggregator keeps W_ii
    x = rng.uniform(-1e6, 1e6, size=(u, d))
    values = [w[j] * x[j] for j in range(u)]
    enc = [encode(v) for v in values]
    ys = _contributions(enc, ids)
    assert np.array_equal(unmask_sum(ys), ring_sum(enc))
    for y, e in zip(ys, enc):
        assert not np.array_equal(y, e)
    true = np.array([math.fsum(col) for col in np.asarray(values).T])
    assert np.all(np.abs(aggregate(ys) - true) <= u * HALF_ULP + np.spacing(np.abs(true)))
    order = rng.permutation(u)
    assert np.array_equal(unmask_sum([ys[i] for i in order]), unmask_sum(ys))  # item 7: bit-exact


def test_masked_model_contribution_matches_the_wire_layout() -> None:
    ids = [pid for pid, _ in NODES[:4]]
    models = [{"w": np.full((2, 3), 0.1 * (j + 1)), "b": np.array([j, -j], dtype=np.float32)} for j in range(4)]
    enc = [encode_model(m) for m in models]
    ys = []
    for pid, e in zip(ids, enc):
        seeds = derive_mask_seeds(KEYS[pid], pid, PUBLIC, federation_id=FED, round=1, attempt=0,
                                  aggregator_id=AGG_ID, contributor_ids=ids)
        y = masked_model_contribution(e, pid, AGG_ID, ids, seeds)
        assert ModelSpec.of(y) == ModelSpec.of(models[0]).with_dtype("<u8")
        ys.append(y)
    total = ring_sum_models(ys)
    expected = ring_sum_models(enc)
    assert all(np.array_equal(total[k], expected[k]) for k in expected)


def test_contributor_set_is_checked() -> None:
    ids = [pid for pid, _ in NODES[:4]]
    seeds = derive_mask_seeds(KEYS[ids[0]], ids[0], PUBLIC, federation_id=FED, round=1, attempt=0,
                              aggregator_id=AGG_ID, contributor_ids=ids)
    v = encode(np.zeros(8))
    with pytest.raises(ValueError, match="aggregator"):
        masked_contribution(v, ids[0], ids[1], ids, seeds)
    with pytest.raises(ValueError, match="self_id"):
        masked_contribution(v, AGG_ID, ids[1], ids, seeds)
    with pytest.raises(KeyError):
        masked_contribution(v, ids[0], AGG_ID, ids, {k: s for k, s in seeds.items() if k != ids[2]})
    with pytest.raises(ValueError):
        masked_contribution(np.zeros(8), ids[0], AGG_ID, ids, seeds)  # float, not ring elements
    with pytest.raises(KeyError):
        derive_mask_seeds(KEYS[ids[0]], ids[0], {}, federation_id=FED, round=1, attempt=0, aggregator_id=AGG_ID,
                          contributor_ids=ids)


# --------------------------------------------------------------------------------------- item 12

def _golden() -> tuple[bytes, int, bytes]:
    lines = GOLDEN.read_text().splitlines()
    meta = {ln.split("=")[0].strip("# ").strip(): ln for ln in lines if ln.startswith("#") and "=" in ln}
    seed = bytes.fromhex(meta["seed"].rsplit("=", 1)[1].strip())
    n = int(meta["n"].split("=")[1])
    data = bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")))
    return seed, n, data


def test_prg_equals_committed_golden_vector() -> None:
    seed, n, data = _golden()
    assert seed == hashlib.sha256(b"fednode/v1/golden/prg").digest()
    got = mask_stream(seed, n)
    assert got.dtype == np.dtype("<u8") and got.shape == (n,)
    assert got.tobytes() == data
    assert np.array_equal(got, np.frombuffer(data, dtype="<u8"))


@settings(derandomize=True, deadline=None, max_examples=60)
@given(seed=st.binary(min_size=32, max_size=32), n=st.integers(0, 3000), m=st.integers(0, 3000))
def test_prg_is_deterministic_and_prefix_consistent(seed: bytes, n: int, m: int) -> None:
    a, b = mask_stream(seed, n), mask_stream(seed, n)
    assert np.array_equal(a, b)
    k = min(n, m)
    assert np.array_equal(mask_stream(seed, m)[:k], a[:k])
    out = np.empty(n, dtype=np.uint64)
    assert np.array_equal(mask_stream_into(seed, out), a)


@settings(derandomize=True, deadline=None, max_examples=40)
@given(seed=st.binary(min_size=32, max_size=32), sizes=st.lists(st.integers(0, 700), max_size=8))
def test_incremental_reads_continue_the_stream(seed: bytes, sizes: list[int]) -> None:
    """Reads of any sizes (not multiples of the 64-byte ChaCha20 block) concatenate to the stream."""
    reader = Keystream(seed)
    parts = [reader.read_into(np.empty(n, dtype=np.uint64)) for n in sizes]
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    assert np.array_equal(joined, mask_stream(seed, sum(sizes)))


def test_masking_block_by_block_equals_whole_streams() -> None:
    """apply_prg_terms works in cache-sized blocks; it must equal whole-stream arithmetic."""
    n = 3 * BLOCK_ELEMENTS + 17
    value = np.arange(n, dtype=np.uint64)
    terms = [(1, bytes([1]) * 32), (-1, bytes([2]) * 32), (1, bytes([3]) * 32)]
    expected = value.copy()
    for sign, seed in terms:
        expected = expected + mask_stream(seed, n) if sign == 1 else expected - mask_stream(seed, n)
    assert np.array_equal(apply_prg_terms(value.reshape(1, n), terms), expected.reshape(1, n))
    with pytest.raises(ValueError):
        apply_prg_terms(value, [(2, bytes(32))])


def test_prg_is_continuous_across_internal_chunks() -> None:
    seed = bytes(range(32))
    n = 600_000  # > 4 MiB of keystream: crosses the internal chunk boundary
    ks = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(bytes(8 * n))
    assert mask_stream(seed, n).tobytes() == ks
    big_endian = np.empty(n, dtype=">u8")
    assert np.array_equal(mask_stream_into(seed, big_endian), np.frombuffer(ks, dtype="<u8"))


def test_prg_refuses_bad_arguments() -> None:
    for bad_seed in (b"", bytes(16), bytes(33), "x" * 32):
        with pytest.raises(ValueError):
            mask_stream(bad_seed, 4)  # type: ignore[arg-type]
    for bad_n in (-1, MAX_ELEMENTS + 1, 1.5, True):
        with pytest.raises(ValueError):
            mask_stream(bytes(32), bad_n)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mask_stream_into(bytes(32), np.empty(4, dtype=np.uint32))


# --------------------------------------------------------------------------------------- item 13

def _seed(j: int, k: int, *, round: int = 3, attempt: int = 0, aggregator: bytes = AGG_ID, fed: str = FED) -> bytes:
    (id_j, keys_j), (id_k, keys_k) = NODES[j], NODES[k]
    return mask_seed(keys_j.shared_secret(keys_k.public_bytes), federation_id=fed, round=round, attempt=attempt,
                     aggregator_id=aggregator, id_j=id_j, id_k=id_k)


@settings(derandomize=True, deadline=None, max_examples=60)
@given(j=st.integers(0, 22), k=st.integers(0, 22), r=st.integers(0, 2**40), attempt=st.integers(0, 2))
def test_seed_is_symmetric_and_fresh_per_round_attempt_aggregator(j: int, k: int, r: int, attempt: int) -> None:
    if j == k:
        with pytest.raises(ValueError):
            _seed(j, k)
        return
    s = _seed(j, k, round=r, attempt=attempt)
    assert len(s) == 32
    assert s == _seed(k, j, round=r, attempt=attempt)  # each side uses its own private key
    others = {
        _seed(j, k, round=r + 1, attempt=attempt),
        _seed(j, k, round=r, attempt=attempt + 1),
        _seed(j, k, round=r, attempt=attempt, aggregator=NODES[(max(j, k) + 1) % 23][0]),
        _seed(j, k, round=r, attempt=attempt, fed=FED + "x"),
        _seed(j, (k + 1) % 23 if (k + 1) % 23 != j else (k + 2) % 23, round=r, attempt=attempt),
    }
    assert s not in others and len(others) == 5


def test_seed_wire_format_is_pinned() -> None:
    """The exact HKDF inputs, spelled out in bytes, so an accidental format change cannot go unnoticed."""
    alice = EpochKeys.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob_pk = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    agg, id_a, id_b = b"\x03" * 32, b"\x01" * 32, b"\x02" * 32
    info = mask_info(round=7, attempt=1, aggregator_id=agg, id_j=id_b, id_k=id_a)
    # fixarray(5), 7, 1, then three bin8(32): aggregator, min id, max id
    packed = "95" "07" "01" + "c420" + "03" * 32 + "c420" + "01" * 32 + "c420" + "02" * 32
    assert info == b"fednode/v1/mask" + bytes.fromhex(packed)
    assert info == b"fednode/v1/mask" + msgpack.packb([7, 1, agg, id_a, id_b], use_bin_type=True)
    assert federation_salt("fednode-kat") == hashlib.sha256(b"fednode/v1/saltfednode-kat").digest()
    ss = alice.shared_secret(bob_pk)
    s = mask_seed(ss, federation_id="fednode-kat", round=7, attempt=1, aggregator_id=agg, id_j=id_b, id_k=id_a)
    assert s == hkdf_sha256(ss, salt=federation_salt("fednode-kat"), info=info)
    assert s.hex() == "60defd6d63b434298763b6d5d0b7abfca9e5116c6891140862c58fbc7968f10d"


# --------------------------------------------------------------------------------------- item 15

def chi2_sf(x: float, df: int) -> float:
    """Chi-square survival function Q(df/2, x/2) (regularized upper incomplete gamma), no scipy needed.

    Series for P when x < a + 1, Lentz continued fraction for Q otherwise (Numerical Recipes 6.2).
    """
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    log_front = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1:
        term = total = 1.0 / a
        for n in range(1, 10_000):
            term *= z / (a + n)
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return math.exp(log_front) * h


def test_chi2_sf_implementation() -> None:
    for x in (0.5, 2.0, 10.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)  # df = 2 is exponential
    try:
        from scipy.stats import chi2
    except ImportError:
        return
    for df in (1, 5, 255):
        for x in (0.1, df * 0.5, df, df + 3 * math.sqrt(2 * df), 3 * df + 40):
            assert chi2_sf(x, df) == pytest.approx(float(chi2.sf(x, df)), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("plaintext", ["zeros", "constant", "ramp"])
def test_masked_vector_top_byte_is_uniform(plaintext: str) -> None:
    d = 2**16
    ids = [pid for pid, _ in NODES[:3]]
    v = {"zeros": np.zeros(d), "constant": np.full(d, 123.456), "ramp": np.linspace(-1000, 1000, d)}[plaintext]
    y = _contributions([encode(v)] * 3, ids)[0]
    top = (y >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    expected = d / 256
    stat = float(np.sum((counts - expected) ** 2) / expected)
    p = chi2_sf(stat, 255)
    assert p > 1e-6, (stat, p)
    top_bit = float(np.mean(y >> np.uint64(63)))
    assert abs(top_bit - 0.5) < 0.01
    # the unmasked encoding is nowhere near uniform
    plain_top = (encode(v) >> np.uint64(56)).astype(np.int64)
    assert chi2_sf(float(np.sum((np.bincount(plain_top, minlength=256) - expected) ** 2) / expected), 255) < 1e-6


# --------------------------------------------------------------------------------------- item 16

@pytest.mark.parametrize("u", [5, 11])
def test_dropouts_leave_garbage_and_retry_gives_survivor_sum(u: int) -> None:
    rng = np.random.default_rng(u)
    ids = [pid for pid, _ in NODES[:u]]
    enc = {pid: encode(rng.uniform(-100, 100, size=64)) for pid in ids}
    ys = dict(zip(ids, _contributions([enc[p] for p in ids], ids, attempt=0)))
    full = ring_sum(enc.values())
    assert np.array_equal(unmask_sum(ys.values()), full)
    retried = 0
    for size in range(1, u):
        for survivors in itertools.combinations(ids, size):
            partial = unmask_sum(ys[p] for p in survivors)
            honest = ring_sum(enc[p] for p in survivors)
            assert np.all(partial != honest)  # dangling masks: every coordinate is garbage
            assert not np.array_equal(partial, full)
            if size < 3:
                with pytest.raises(TooFewContributorsError):
                    _contributions([enc[p] for p in survivors], list(survivors), attempt=1)
            elif u == 5 or (retried < 25 and rng.random() < 0.05):  # all for u = 5, a sample of 2^11
                retry = _contributions([enc[p] for p in survivors], list(survivors), attempt=1)
                assert np.array_equal(unmask_sum(retry), honest)
                for p, y in zip(survivors, retry):  # fresh masks: nothing reused from attempt 0
                    assert np.all(y != ys[p])
                retried += 1
    assert retried >= 10


# --------------------------------------------------------------------------------------- mode B

def test_mode_b_self_masks_and_shamir_recovery_of_a_dropout() -> None:
    """SecAgg+ mode B: contributor D drops after sharing; the survivors' shares let the aggregator
    strip the survivors' self-masks (b-shares) and D's dangling pairwise masks (esk-shares of D)."""
    rng = np.random.default_rng(7)
    u, r, d = 5, 9, 32
    ids = [pid for pid, _ in NODES[:u]]
    t = shamir.threshold(u - 1)  # shares go to the other u - 1 contributors
    enc = {pid: encode(rng.uniform(-10, 10, size=d)) for pid in ids}
    self_seeds = {pid: hashlib.sha256(b"b/" + pid).digest() for pid in ids}

    # sharing phase: j sends k an AEAD bundle of (share of b_j, share of esk_j), relayed by the aggregator
    inbox: dict[bytes, dict[bytes, bytes]] = {pid: {} for pid in ids}
    for j in ids:
        others = [k for k in ids if k != j]
        b_shares = shamir.split(self_seeds[j], t, len(others))
        sk_shares = shamir.split(KEYS[j].private_bytes(), t, len(others))
        for k, bs, ks in zip(others, b_shares, sk_shares):
            bundle = shamir.pack_shares([bs, ks])
            inbox[k][j] = aead.seal_bundle(KEYS[j], PUBLIC[k], bundle, federation_id=FED, round=r, sender_id=j,
                                           recipient_id=k)

    ys = {}
    for j in ids:
        seeds = derive_mask_seeds(KEYS[j], j, PUBLIC, federation_id=FED, round=r, attempt=0, aggregator_id=AGG_ID,
                                  contributor_ids=ids)
        ys[j] = masked_contribution(enc[j], j, AGG_ID, ids, seeds, self_mask_seed=self_seeds[j])
    dropped = ids[3]
    survivors = [p for p in ids if p != dropped]
    total = unmask_sum(ys[p] for p in survivors)

    # unmask phase: each survivor opens its bundles and reveals b-shares of survivors, esk-shares of the dropout
    revealed_b: dict[bytes, list] = {p: [] for p in survivors}
    revealed_sk: list = []
    for k in survivors:
        for j, blob in inbox[k].items():
            b_share, sk_share = shamir.unpack_shares(aead.open_bundle(
                KEYS[k], PUBLIC[j], blob, federation_id=FED, round=r, sender_id=j, recipient_id=k))
            if j == dropped:
                revealed_sk.append(sk_share)
            else:
                revealed_b[j].append(b_share)
    terms = [(-1, shamir.reconstruct_bytes(revealed_b[j][:t])) for j in survivors]
    dropped_keys = EpochKeys.from_private_bytes(shamir.reconstruct_bytes(revealed_sk[:t]))
    for j in survivors:  # survivor j added sigma_jD PRG(s_jD); remove it
        s = mask_seed(dropped_keys.shared_secret(PUBLIC[j]), federation_id=FED, round=r, attempt=0,
                      aggregator_id=AGG_ID, id_j=dropped, id_k=j)
        terms.append((-mask_sign(j, dropped), s))
    assert np.array_equal(apply_prg_terms(total, terms), ring_sum(enc[p] for p in survivors))
    assert shamir.reconstruct_bytes(revealed_b[survivors[0]][:t]) == self_seeds[survivors[0]]
    with pytest.raises(aead.BundleDecryptionError):  # the aggregator cannot reflect a bundle back to its sender
        j, k = ids[0], ids[1]
        aead.open_bundle(KEYS[j], PUBLIC[k], inbox[k][j], federation_id=FED, round=r, sender_id=k, recipient_id=j)
