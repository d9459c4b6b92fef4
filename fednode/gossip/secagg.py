"""The masked-round steps of secure aggregation, as pure functions the round machine calls.

Roles in round r (see docs/protocol.md §7 and docs/security.md). Aggregator i wants
S_i = sum_{j in U} W_ij x_j^{r+1/2} over its contributor set U (its edges) and nothing else:

1. SETUP(r, a, U)      i -> each j in U. Carries U, i's proposed set N_i and degree, and the signed
                       HELLOs that every k in U sent to i (each holds k's X25519 key for aggregator i),
                       relayed so j can check every key it masks with (signatures stop substitution).
2. CONTRIBUTE(r, a)    j -> i. y_j = enc(W_ij x_j) + sum_{k in M(j)} sigma_jk PRG(s_jk) + PRG(b_j^a),
                       '<u8' payload. s_jk is fresh per (round, attempt, aggregator); b_j^a is a random
                       self-mask seed that j alone knows.
3. UNMASK(r, a, U)     i -> each j in U, once every y_j of attempt a is in.
4. REVEAL(r, a, b)     j -> i: b_j^a. j reveals only for an attempt it never superseded, and after revealing
                       it answers no later attempt of i in this round.
   i computes S_i = dec(sum y_j - sum PRG(b_j^a)) and checks ||S_i||_inf <= B_max * sum W_ij (PROTOCOL §3
   step 9) before using it.

A missing contribution at the attempt's deadline makes i send SETUP(r, a + 1, survivors): fresh seeds,
fresh self-masks (mode A, "retry"). The dangling attempt is never unmasked: its pairwise masks do not
cancel and its self-masks are never revealed.

Why the self-mask and the reveal step: without them, an aggregator that retries after a contributor k
seemed to drop, and then receives k's late attempt-a contribution anyway, would hold two complete
sums, over U and over U minus {k}, whose difference is W_ik x_k in the clear. With self-masks an attempt's
sum is readable only after every contributor revealed b^a, and a contributor that revealed never
answers a later attempt (and one that answered a later attempt never reveals an earlier one), so i can
unmask at most one attempt per round.

In mode B ("secagg+", Bonawitz et al. with Bell et al. sparse masks) the self-mask seed and the
contributor's epoch key are additionally Shamir-shared among U so that a contributor that drops after
sending its y does not cost a retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack
import numpy as np

from fednode.security.arrays import Model, ModelSpec
from fednode.security.envelope import Message, MsgType, Reject, VerifyContext, open_envelope
from fednode.security.identity import AllowList
from fednode.security.kdf import X25519_KEY_BYTES
from fednode.security.masking import apply_prg_terms, mask_partners, masked_contribution
from fednode.security.replay import ReplayGuard
from fednode.security import shamir
from fednode.security.ring import B_MAX, FRAC_BITS, decode, encode

MODES = ("off", "retry", "secagg+")
"""Secure-aggregation modes: plaintext gossip, mode A (retry over survivors), mode B (SecAgg+)."""
RING_DTYPE = "<u8"


@dataclass(frozen=True)
class RelayedKey:
    """A contributor's X25519 public key for one aggregator, from a HELLO that contributor signed."""

    sender: bytes
    epk: bytes
    cpk: bytes | None = None
    """Mode B: the contributor's separate X25519 key for share encryption (never secret-shared)."""


def hello_epk(msg: Message, field: str = "epk") -> bytes | None:
    """The 32-byte X25519 public key a HELLO carries (``epk``: masking, ``cpk``: share encryption), or None."""
    epk = msg.meta.get(field)
    return epk if isinstance(epk, bytes) and len(epk) == X25519_KEY_BYTES else None


def verify_relayed_hello(raw: bytes, *, aggregator: bytes, expected_sender: bytes | None, round: int,
                         federation: str,
                         allow_list: AllowList, now: float, timestamp_window_s: float = 60.0,
                         max_bytes: int = 64 * 1024) -> RelayedKey | Reject:
    """Check a HELLO that a contributor (``expected_sender``, or anyone admitted when None) signed for
    ``aggregator`` and that the aggregator relayed.

    The signature, federation, round, recipient (the aggregator) and timestamp are checked like any
    envelope's; replay is not (the same HELLO is legitimately relayed to every contributor).
    """
    if not isinstance(raw, bytes):
        return Reject("malformed", detail="relayed hello is not bytes")
    ctx = VerifyContext(self_id=aggregator, federation=federation, allow_list=allow_list, current_round=round,
                        now_ms=int(now * 1000), replay=ReplayGuard(), rounds_behind=0, rounds_ahead=0,
                        unbounded_future_types=frozenset(), unbounded_past_types=frozenset(),
                        timestamp_window_ms=int(timestamp_window_s * 1000), max_message_bytes=max_bytes,
                        broadcast_types=frozenset())
    result = open_envelope(raw, ctx)
    if isinstance(result, Reject):
        return result
    if result.msg_type != MsgType.HELLO or result.round != round or (
            expected_sender is not None and result.sender != expected_sender):
        return Reject("relayed_hello", sender=result.sender, detail="not the expected sender's HELLO of this round")
    epk = hello_epk(result)
    if epk is None:
        return Reject("relayed_hello", sender=result.sender, detail="HELLO without an epoch key")
    return RelayedKey(result.sender, epk, hello_epk(result, "cpk"))


def encode_scaled(half: Model, spec: ModelSpec, weight: float, *, bound: float = B_MAX,
                  frac_bits: int = FRAC_BITS) -> np.ndarray:
    """enc(W_ij x_j) as one flat uint64 vector in spec order (raises RingEncodingError out of range)."""
    flat = spec.flatten(half, dtype=np.float64)
    return encode(flat, frac_bits=frac_bits, bound=bound, scale=float(weight))


def mask_encoded(encoded: np.ndarray, ring_spec: ModelSpec, *, self_id: bytes, aggregator: bytes,
                 contributors: Iterable[bytes], seeds: Mapping[bytes, bytes], self_mask_seed: bytes,
                 min_contributors: int) -> Model:
    """The masked contribution y_j as a named '<u8' model (the CONTRIBUTE payload)."""
    masked = masked_contribution(encoded, self_id, aggregator, contributors, seeds,
                                 min_contributors=min_contributors, self_mask_seed=self_mask_seed)
    return ring_spec.unflatten(masked)


def partners(self_id: bytes, contributors: Iterable[bytes]) -> tuple[bytes, ...]:
    """Whom ``self_id`` masks with in this contributor set (dense up to 8, sparse ring above)."""
    return mask_partners(self_id, contributors)


def unmask(masked: Iterable[Model], ring_spec: ModelSpec, self_mask_seeds: Iterable[bytes]) -> np.ndarray:
    """sum y_j - sum PRG(b_j) over one complete attempt: the ring value sum_j enc(W_ij x_j) (flat uint64)."""
    total: np.ndarray | None = None
    for y in masked:
        flat = ring_spec.flatten(y, dtype=np.uint64)
        if total is None:
            total = flat.copy()
        else:
            np.add(total, flat, out=total)
    if total is None:
        raise ValueError("unmask of no contributions")
    return apply_prg_terms(total, [(-1, seed) for seed in self_mask_seeds])


def ring_digest(ring_value: np.ndarray) -> str:
    """SHA-256 of a flat ring vector as little-endian bytes (logs; tests compare it with a wire capture)."""
    return hashlib.sha256(np.ascontiguousarray(ring_value, dtype="<u8").tobytes()).hexdigest()


def plausible(sum_flat: np.ndarray, weight_sum: float, *, bound: float = B_MAX, n: int = 1,
              frac_bits: int = FRAC_BITS) -> bool:
    """PROTOCOL §3 step 9: ||S_i||_inf <= B_max * sum W_ij (plus the encoding error), else discard.

    A wrong self-mask, a contributor that masked over another set, or garbage ring values decode to
    numbers spread over the whole ring, so this catches them with overwhelming probability.
    """
    if sum_flat.size == 0:
        return True
    if not np.isfinite(sum_flat).all():
        return False
    return float(np.max(np.abs(sum_flat))) <= bound * float(weight_sum) + n * 2.0 ** (-frac_bits)


def open_sum(ring_total: np.ndarray, weight_sum: float, *, bound: float = B_MAX, n: int = 1
             ) -> tuple[str, np.ndarray | None]:
    """(digest, S_i) of an unmasked ring sum; S_i is None when it fails :func:`plausible` (discard it)."""
    total = decode(ring_total)
    return ring_digest(ring_total), (total if plausible(total, weight_sum, bound=bound, n=n) else None)


def apply_sum(half: Model, spec: ModelSpec, sum_flat: np.ndarray, weight_sum: float) -> Model:
    """x_i^{r+1} = (1 - sum W_ij) x_i^{r+1/2} + S_i, in the model's own dtypes."""
    own = spec.flatten(half, dtype=np.float64)
    mixed = (1.0 - float(weight_sum)) * own + sum_flat
    out = spec.unflatten(mixed.astype(np.float64))
    return {k: out[k].astype(half[k].dtype) for k in half}


# ---------------------------------------------------------------------------- mode B (SecAgg+)


def share_secrets(b_seed: bytes, mask_private: bytes, holders: Iterable[bytes], threshold: int
                  ) -> dict[bytes, bytes]:
    """t-of-n Shamir shares of the self-mask seed and the masking private key, one bundle per holder.

    Holder k (sorted order, x = 1 + its index) gets ``msgpack([b-share, key-share])``; the caller seals
    each bundle for k with ChaCha20-Poly1305 under the separate encryption key (:mod:`aead`).
    """
    ids = sorted(holders)
    b_shares = shamir.split(b_seed, threshold, len(ids))
    k_shares = shamir.split(mask_private, threshold, len(ids))
    return {k: msgpack.packb([b_shares[i].to_wire(), k_shares[i].to_wire()], use_bin_type=True)
            for i, k in enumerate(ids)}


def open_share_bundle(data: bytes) -> tuple[list, list]:
    """The (b-share, key-share) wire pair of a decrypted bundle; raises ShamirError on anything odd."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=shamir.Y_BYTES, max_str_len=0,
                              max_array_len=4, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 - peer bytes
        raise shamir.ShamirError(f"share bundle is not bounded msgpack: {type(exc).__name__}") from None
    if type(obj) is not list or len(obj) != 2:
        raise shamir.ShamirError("a share bundle is [b-share, key-share]")
    shamir.Share.from_wire(obj[0])
    shamir.Share.from_wire(obj[1])
    return obj[0], obj[1]


def reconstruct_secret(shares_wire: Iterable[object], threshold: int) -> bytes:
    """The shared bytes from at least ``threshold`` wire shares (the first ``threshold`` are used)."""
    shares = [shamir.Share.from_wire(s) for s in shares_wire]
    if len(shares) < threshold:
        raise shamir.ShamirError(f"{len(shares)} shares < threshold {threshold}")
    return shamir.reconstruct_bytes(shares[:threshold])
