"""Fixed-point encoding of real vectors into the ring Z_{2^64} (PROTOCOL section 2, "Encoding").

Masked secure aggregation needs exact arithmetic: masks only cancel if addition is exact and
wraps, which float addition is not. A value v becomes ``enc(v) = uint64 view of
int64(rint(v * 2^f))`` and a sum of encodings decodes as ``int64 view / 2^f``. Two's complement
makes the uint64 wrap-around sum equal the int64 sum whenever the true sum fits an int64, which
:func:`check_no_overflow` certifies from the public bound, weights and contributor count.

Encoding refuses instead of wrapping: a NaN, an infinity or ``|v| >= bound`` raises
:class:`RingEncodingError`, because a silently wrapped value would corrupt every neighbour's
aggregate and could not be detected after masking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction

import numpy as np

from fednode.security.arrays import Model

FRAC_BITS = 32
"""Default fractional bits f: rounding error 2^-33 per encoded value."""
B_MAX = 2.0**20
"""Default magnitude bound B_max; it is also the divergence guard on plaintext payloads."""
RING_DTYPE = "<u8"
"""Wire dtype of ring elements (explicit little-endian, as in :mod:`fednode.security.arrays`)."""
MAX_FRAC_BITS = 62


class RingEncodingError(ValueError):
    """A value cannot be encoded without wrapping (non-finite or out of bound)."""


def _check_params(frac_bits: int, bound: float) -> None:
    """Refuse parameters for which ``rint(v * 2^f)`` might not fit an int64 even when ``|v| < bound``."""
    if not isinstance(frac_bits, (int, np.integer)) or isinstance(frac_bits, bool) \
            or not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise ValueError(f"frac_bits must be an int in [0, {MAX_FRAC_BITS}]")
    if not (bound > 0 and bound <= 2.0 ** (63 - int(frac_bits))):
        raise ValueError(f"bound must be in (0, 2^{63 - int(frac_bits)}] for frac_bits={frac_bits}")


def encode(v: np.ndarray | float, *, frac_bits: int = FRAC_BITS, bound: float = B_MAX,
           scale: float = 1.0) -> np.ndarray:
    """``uint64`` view of ``int64(rint(scale * v * 2^f))``; raises :class:`RingEncodingError` rather than wrap.

    The scaling by a power of two is exact in float64, so the only error is the final rounding:
    ``|dec(enc(v)) - scale * v| <= 2^-(f+1)``. Integer inputs are converted to float64 first.
    ``scale`` (a contributor's mixing weight) is folded into the same multiplication: the result is
    bit-identical to ``encode(scale * v)`` at one pass less over the data.
    """
    _check_params(frac_bits, bound)
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiub":
        raise RingEncodingError(f"cannot ring-encode dtype {arr.dtype}")
    factor = float(np.ldexp(float(scale), int(frac_bits)))
    if not np.isfinite(factor):
        raise RingEncodingError("non-finite scale")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes inf and is refused just below
        scaled = np.multiply(arr, factor, dtype=np.float64)  # exact: factor is scale times a power of two
    if scaled.size:
        hi, lo = float(np.max(scaled)), float(np.min(scaled))  # NaN propagates into both
        limit = float(np.ldexp(bound, int(frac_bits)))
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise RingEncodingError("non-finite value (NaN or Inf) cannot be ring-encoded")
        if not (hi < limit and lo > -limit):
            magnitude = max(abs(hi), abs(lo)) / float(np.ldexp(1.0, int(frac_bits)))
            raise RingEncodingError(f"value of magnitude {magnitude:.6g} >= bound {bound:.6g}")
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64).view(np.uint64)


def decode(u: np.ndarray, *, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """float64 of the two's-complement (int64) reading of ``u``, divided by ``2^f``.

    Exact while the integer fits 53 bits (|value| < 2^(53-f)); beyond that float64 rounding adds at
    most half an ulp of the result.
    """
    _check_params(frac_bits, 1.0)
    arr = np.asarray(u)
    if arr.dtype.kind != "u" or arr.dtype.itemsize != 8:
        raise RingEncodingError(f"ring elements are uint64, got {arr.dtype}")
    return np.ldexp(arr.astype(np.uint64, copy=False).view(np.int64).astype(np.float64), -int(frac_bits))


def ring_sum(values: Iterable[np.ndarray]) -> np.ndarray:
    """Elementwise sum mod 2^64 of equally shaped uint64 arrays (numpy array addition wraps silently)."""
    total: np.ndarray | None = None
    for v in values:
        arr = np.asarray(v)
        if arr.dtype.kind != "u" or arr.dtype.itemsize != 8:
            raise RingEncodingError(f"ring elements are uint64, got {arr.dtype}")
        if total is None:
            total = arr.astype(np.uint64, copy=True)
        elif arr.shape != total.shape:
            raise ValueError(f"shape {arr.shape} differs from {total.shape}")
        else:
            np.add(total, arr, out=total)
    if total is None:
        raise ValueError("ring_sum of no arrays")
    return total


def check_no_overflow(bound: float, weight_sum: float, n: int, frac_bits: int = FRAC_BITS) -> bool:
    """True when ``B * sum(W) + n * 2^-(f+1) < 2^(63-f)``, so a sum of ``n`` encodings cannot wrap.

    Each sender encodes its pre-scaled value ``W_ij x_j`` with ``|x_j| < B``; the integer sum is at
    most ``2^f * B * sum(W) + n/2`` in magnitude. Evaluated in exact rationals, so the boundary
    case is decided correctly.
    """
    if n < 0 or weight_sum < 0 or not bound > 0:
        raise ValueError("bound must be > 0, weight_sum and n >= 0")
    lhs = Fraction(bound) * Fraction(weight_sum) + Fraction(int(n), 2 ** (int(frac_bits) + 1))
    return lhs < Fraction(2) ** (63 - int(frac_bits))


def encode_model(model: Mapping[str, np.ndarray], *, frac_bits: int = FRAC_BITS, bound: float = B_MAX) -> Model:
    """:func:`encode` of every array of a named model: same names and shapes, dtype ``'<u8'``."""
    out: Model = {}
    for name in sorted(model):
        try:
            out[name] = encode(model[name], frac_bits=frac_bits, bound=bound)
        except RingEncodingError as exc:
            raise RingEncodingError(f"array {name!r}: {exc}") from None
    return out


def decode_model(model: Mapping[str, np.ndarray], *, frac_bits: int = FRAC_BITS) -> Model:
    """:func:`decode` of every array of a ring-encoded named model (float64 arrays)."""
    return {name: decode(model[name], frac_bits=frac_bits) for name in sorted(model)}


def ring_sum_models(models: Iterable[Mapping[str, np.ndarray]]) -> Model:
    """:func:`ring_sum` per name over models with identical names and shapes."""
    models = list(models)
    if not models:
        raise ValueError("ring_sum_models of no models")
    names = set(models[0])
    if any(set(m) != names for m in models):
        raise ValueError("models have different array names")
    return {name: ring_sum(m[name] for m in models) for name in sorted(names)}


__all__ = [
    "B_MAX", "FRAC_BITS", "RING_DTYPE", "RingEncodingError", "check_no_overflow", "decode", "decode_model",
    "encode", "encode_model", "ring_sum", "ring_sum_models",
]
