"""Pairwise additive masking of ring-encoded contributions (PROTOCOL section 2, "Masks").

Contributor j sends aggregator i

    y_{j->i} = enc(W_ij x_j) + sum_{k in M_i(j)} sigma_jk * PRG(s_jk)   (mod 2^64)

with ``sigma_jk = +1`` if ``id_j < id_k`` else ``-1``. Every mask appears once with each sign when
the partner relation is symmetric (k in M(j) iff j in M(k)), so summing y over the contributor set
U gives ``sum enc(.)`` bit-exactly while each single y is uniformly distributed.

``M_i(j)`` is ``U minus {j}`` for up to ``dense_limit`` (8) contributors. Above that, SecAgg+-style
sparse masking (Bell et al., ePrint 2020/704) keeps the cost constant: j masks only with its ring
neighbours at offsets +-1..+-``offsets`` in the sorted contributor ids. Offsets come in +- pairs,
so the relation stays symmetric.

Dropouts, mode A (default): an attempt with a missing contributor leaves its partners' masks
dangling and decodes to garbage; the aggregator retries over the survivors with attempt + 1, so
every seed (bound to the attempt by :mod:`fednode.security.kdf`) and every mask is fresh. Fewer
than ``min_contributors`` (u_min = 3) contributors abort: with one contributor its masked value
carries no mask at all, with two the aggregator would learn a two-party sum.

Mode B (SecAgg+) adds a self-mask ``PRG(b_j)`` (``self_mask_seed``); the aggregator removes the
survivors' self-masks and the dropped nodes' dangling pairwise masks with :func:`apply_prg_terms`
after reconstructing those seeds from Shamir shares (:mod:`fednode.security.shamir`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fednode.security.arrays import Model, ModelSpec
from fednode.security.kdf import EpochKeys, mask_seed
from fednode.security.prg import Keystream
from fednode.security.ring import FRAC_BITS, decode, ring_sum

DENSE_LIMIT = 8
"""Up to this many contributors every pair masks with each other."""
SPARSE_OFFSETS = 3
"""Above DENSE_LIMIT, each contributor masks with its ring neighbours at +-1..+-3 (6 partners)."""
U_MIN = 3
"""Smallest contributor set an aggregation may run over (PROTOCOL u_min)."""
BLOCK_ELEMENTS = 1 << 15
"""Masking works on 256 KiB blocks: a keystream block is added while it is still in L2 cache."""

PrgTerm = tuple[int, bytes]
"""(sign, seed): the ring vector ``sign * PRG(seed)`` with sign in {+1, -1}."""


class TooFewContributorsError(ValueError):
    """The contributor set is smaller than u_min: masking would protect nothing, so the attempt aborts."""


def sorted_contributors(contributor_ids: Iterable[bytes]) -> tuple[bytes, ...]:
    """The contributor ids, validated (non-empty bytes, no duplicates) and sorted bytewise."""
    ids = [bytes(c) if isinstance(c, (bytes, bytearray)) else c for c in contributor_ids]
    if not all(isinstance(c, bytes) and c for c in ids):
        raise ValueError("contributor ids must be non-empty bytes")
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate contributor id")
    return tuple(sorted(ids))


def mask_partners(self_id: bytes, contributor_ids: Iterable[bytes], dense_limit: int = DENSE_LIMIT,
                  offsets: int = SPARSE_OFFSETS) -> tuple[bytes, ...]:
    """M(j): whom ``self_id`` masks with, sorted. Symmetric: j in M(k) iff k in M(j).

    Dense (everyone else) for ``|U| <= dense_limit``; otherwise ring offsets +-1..+-offsets over the
    sorted ids, which is symmetric because ``k = j + o (mod n)`` iff ``j = k - o (mod n)``.
    """
    ids = sorted_contributors(contributor_ids)
    if self_id not in ids:
        raise ValueError("self_id is not in the contributor set")
    if dense_limit < 0 or offsets < 1:
        raise ValueError("dense_limit must be >= 0 and offsets >= 1")
    n = len(ids)
    if n <= dense_limit:
        return tuple(c for c in ids if c != self_id)
    pos = ids.index(self_id)
    picked = {ids[(pos + sign * o) % n] for o in range(1, offsets + 1) for sign in (1, -1)}
    picked.discard(self_id)
    return tuple(sorted(picked))


def mask_sign(self_id: bytes, peer_id: bytes) -> int:
    """sigma_jk: +1 if id_j < id_k else -1, so the pair's two masks cancel."""
    if self_id == peer_id:
        raise ValueError("a node does not mask with itself")
    return 1 if self_id < peer_id else -1


def pairwise_terms(self_id: bytes, partners: Iterable[bytes], seeds: Mapping[bytes, bytes]) -> list[PrgTerm]:
    """(sigma_jk, s_jk) for every partner k; a missing seed is an error, never a skipped mask."""
    terms = []
    for k in partners:
        seed = seeds.get(k)
        if seed is None:
            raise KeyError(f"no mask seed for partner {bytes(k).hex()[:12]}")
        terms.append((mask_sign(self_id, k), seed))
    return terms


def apply_prg_terms(value_u64: np.ndarray, terms: Iterable[PrgTerm]) -> np.ndarray:
    """``value + sum sign * PRG(seed)`` mod 2^64 over the flattened array; returns a new array, same shape.

    Works block by block (:data:`BLOCK_ELEMENTS`) with one reader per stream, so each keystream
    block is added while it is still in cache and no full-length mask is ever materialised.
    """
    value = np.asarray(value_u64)
    if value.dtype.kind != "u" or value.dtype.itemsize != 8:
        raise ValueError(f"ring elements are uint64, got {value.dtype}")
    readers = []
    for sign, seed in terms:
        if sign not in (1, -1):
            raise ValueError("a PRG term's sign is +1 or -1")
        readers.append((np.add if sign == 1 else np.subtract, Keystream(seed)))
    out = np.array(value, dtype=np.uint64, order="C", copy=True).reshape(-1)
    buf = np.empty(min(out.size, BLOCK_ELEMENTS), dtype=np.uint64)
    for start in range(0, out.size, BLOCK_ELEMENTS):
        chunk = out[start:start + BLOCK_ELEMENTS]
        block = buf[:chunk.size]
        for op, reader in readers:
            op(chunk, reader.read_into(block), out=chunk)
    return out.reshape(value.shape)


def _check_contributor_set(self_id: bytes, aggregator_id: bytes, ids: Sequence[bytes], min_contributors: int) -> None:
    if self_id not in ids:
        raise ValueError("self_id is not in the contributor set")
    if aggregator_id in ids:
        raise ValueError("the aggregator adds its own value in plaintext; it is not a contributor")
    if len(ids) < min_contributors:
        raise TooFewContributorsError(f"{len(ids)} contributors < u_min = {min_contributors}: abort")


def masked_contribution(value_u64: np.ndarray, self_id: bytes, aggregator_id: bytes,
                        contributor_ids: Iterable[bytes], seeds: Mapping[bytes, bytes], *,
                        dense_limit: int = DENSE_LIMIT, offsets: int = SPARSE_OFFSETS,
                        min_contributors: int = U_MIN, self_mask_seed: bytes | None = None) -> np.ndarray:
    """y_{j->i} = value + sum_{k in M(j)} sigma_jk PRG(s_jk) (+ PRG(b_j) in mode B), mod 2^64.

    ``seeds`` maps each partner id to s_jk for this (round, attempt, aggregator); seeds for
    non-partners are ignored. Raises :class:`TooFewContributorsError` below ``min_contributors``.
    """
    ids = sorted_contributors(contributor_ids)
    _check_contributor_set(self_id, aggregator_id, ids, min_contributors)
    terms = pairwise_terms(self_id, mask_partners(self_id, ids, dense_limit, offsets), seeds)
    if self_mask_seed is not None:
        terms.append((1, self_mask_seed))
    return apply_prg_terms(value_u64, terms)


def masked_model_contribution(model_u64: Mapping[str, np.ndarray], self_id: bytes, aggregator_id: bytes,
                              contributor_ids: Iterable[bytes], seeds: Mapping[bytes, bytes],
                              **kwargs) -> Model:
    """:func:`masked_contribution` of a named ring-encoded model, one mask stream over the flattened
    arrays in the canonical (sorted-name) spec order, so it matches the wire payload's layout."""
    spec = ModelSpec.of(model_u64)
    if any(dtype != "<u8" for _, dtype, _ in spec.entries):
        raise ValueError("a ring-encoded model has only '<u8' arrays")
    flat = spec.flatten(model_u64, dtype=np.uint64)
    return spec.unflatten(masked_contribution(flat, self_id, aggregator_id, contributor_ids, seeds, **kwargs))


def derive_mask_seeds(keys: EpochKeys, self_id: bytes, peer_public_keys: Mapping[bytes, bytes], *,
                      federation_id: str | bytes, round: int, attempt: int, aggregator_id: bytes,
                      contributor_ids: Iterable[bytes], dense_limit: int = DENSE_LIMIT,
                      offsets: int = SPARSE_OFFSETS) -> dict[bytes, bytes]:
    """s_jk for every partner k of ``self_id``, from the epoch key and the partners' (signed) epoch
    public keys; raises KeyError when a partner's public key is unknown."""
    seeds = {}
    for k in mask_partners(self_id, contributor_ids, dense_limit, offsets):
        pk = peer_public_keys.get(k)
        if pk is None:
            raise KeyError(f"no epoch public key for partner {k.hex()[:12]}")
        seeds[k] = mask_seed(keys.shared_secret(pk), federation_id=federation_id, round=round, attempt=attempt,
                             aggregator_id=aggregator_id, id_j=self_id, id_k=k)
    return seeds


def unmask_sum(contributions: Iterable[np.ndarray]) -> np.ndarray:
    """The aggregator's step: the ring sum of every masked contribution of one attempt.

    Equals the sum of the encodings only when it covers the whole contributor set the masks were
    built for; otherwise dangling masks make it uniformly random garbage (retry, mode A).
    """
    return ring_sum(contributions)


def aggregate(contributions: Iterable[np.ndarray], *, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """``dec(sum y)``: the float64 aggregate S_i of a complete attempt."""
    return decode(unmask_sum(contributions), frac_bits=frac_bits)


__all__ = [
    "DENSE_LIMIT", "PrgTerm", "SPARSE_OFFSETS", "TooFewContributorsError", "U_MIN", "aggregate",
    "apply_prg_terms", "derive_mask_seeds", "mask_partners", "mask_sign", "masked_contribution",
    "masked_model_contribution", "pairwise_terms", "sorted_contributors", "unmask_sum",
]
