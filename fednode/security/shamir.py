"""t-of-n Shamir secret sharing over GF(p), p = 2^521 - 1 (for SecAgg+ mode B, PROTOCOL section 2).

Mode B shares a contributor's self-mask seed b_j and epoch private key esk_j with its neighbours,
so the aggregator can remove the masks of nodes that drop out. Any t shares determine the secret;
t - 1 shares are consistent with every secret (information-theoretic hiding). The Mersenne prime
2^521 - 1 exceeds every 64-byte secret, so one field element carries a whole key.

Secrets are ints in [0, p) or byte strings of at most 64 bytes. Bytes are embedded as
``int.from_bytes(b"\\x01" + secret, "big")``: the 0x01 marker keeps leading zero bytes, so
:func:`reconstruct_bytes` returns exactly the bytes that were shared.

Wire form of a share: the msgpack array ``[x, y]`` with ``x`` a msgpack integer and ``y`` the
big-endian encoding of the field element in exactly 66 bytes (:data:`Y_BYTES`), because msgpack
integers stop at 64 bits. Decoding is strict (types, lengths, ranges) and never uses pickle:
shares arrive from peers.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

PRIME = 2**521 - 1
"""The field modulus: the Mersenne prime M521."""
Y_BYTES = (PRIME.bit_length() + 7) // 8
"""66: fixed big-endian width of a share's y on the wire."""
MAX_SECRET_BYTES = 64
MAX_SHARES = 2**16 - 1
"""x ranges over 1..n; keeping n below 2^16 bounds the wire size and the interpolation cost."""
_BYTES_MARKER = b"\x01"


class ShamirError(ValueError):
    """Bad parameters, malformed or inconsistent shares."""


@dataclass(frozen=True)
class Share:
    """One share: the point (x, y) of the sharing polynomial, x in [1, MAX_SHARES], y in [0, p)."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if type(self.x) is not int or not 1 <= self.x <= MAX_SHARES:
            raise ShamirError(f"share x must be an int in [1, {MAX_SHARES}]")
        if type(self.y) is not int or not 0 <= self.y < PRIME:
            raise ShamirError("share y must be an int in [0, p)")

    def to_wire(self) -> list[Any]:
        """``[x, y as 66 big-endian bytes]``: msgpack-ready (msgpack ints stop at 64 bits)."""
        return [self.x, self.y.to_bytes(Y_BYTES, "big")]

    @classmethod
    def from_wire(cls, obj: object) -> "Share":
        """Strict inverse of :meth:`to_wire`; raises :class:`ShamirError` on anything else."""
        if type(obj) not in (list, tuple) or len(obj) != 2:  # type: ignore[arg-type]
            raise ShamirError("a share is [x, y]")
        x, y = obj  # type: ignore[misc]
        if type(y) is not bytes or len(y) != Y_BYTES:
            raise ShamirError(f"share y must be {Y_BYTES} bytes")
        return cls(x, int.from_bytes(y, "big"))

    def __repr__(self) -> str:  # shares are secret material
        return f"Share(x={self.x}, y=...)"


def secret_to_int(secret: bytes | int) -> int:
    """The field element of a secret: ints as is, bytes with a 0x01 length-preserving marker."""
    if isinstance(secret, (bytes, bytearray)):
        if len(secret) > MAX_SECRET_BYTES:
            raise ShamirError(f"a byte secret is at most {MAX_SECRET_BYTES} bytes")
        return int.from_bytes(_BYTES_MARKER + bytes(secret), "big")
    if type(secret) is not int or not 0 <= secret < PRIME:
        raise ShamirError("an int secret must be in [0, 2^521 - 1)")
    return secret


def int_to_secret_bytes(value: int) -> bytes:
    """Inverse of the bytes embedding of :func:`secret_to_int`; raises if ``value`` is not one."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    if not raw.startswith(_BYTES_MARKER) or len(raw) > MAX_SECRET_BYTES + 1:
        raise ShamirError("the reconstructed value is not a byte secret (wrong or too few shares?)")
    return raw[1:]


def _rand_field(rng: Any) -> int:
    """Uniform in [0, p) from ``rng.randbelow`` (the secrets module) or ``rng.randrange``."""
    draw = getattr(rng, "randbelow", None)
    return draw(PRIME) if draw is not None else rng.randrange(PRIME)


def _eval_poly(coeffs: Sequence[int], x: int) -> int:
    """Horner evaluation of sum coeffs[i] x^i mod p."""
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes | int, t: int, n: int, rng: Any = secrets) -> list[Share]:
    """n shares at x = 1..n of a random degree-(t-1) polynomial with constant term the secret.

    Requires 2 <= t <= n: with t = 1 every share would be the secret itself. ``rng`` must be a
    CSPRNG in production (the default); tests may pass a seeded ``random.Random``.
    """
    if type(t) is not int or type(n) is not int or not 2 <= t <= n <= MAX_SHARES:
        raise ShamirError(f"need ints 2 <= t <= n <= {MAX_SHARES}, got t={t!r}, n={n!r}")
    coeffs = [secret_to_int(secret)] + [_rand_field(rng) for _ in range(t - 1)]
    return [Share(x, _eval_poly(coeffs, x)) for x in range(1, n + 1)]


def reconstruct(shares: Iterable[Share]) -> int:
    """Lagrange interpolation at 0 of the given shares (all of them are used).

    With at least t shares of one sharing this is the secret; with fewer it is an unrelated field
    element. Duplicate x values are refused (they would divide by zero or hide an inconsistency).
    """
    pts = list(shares)
    if not pts:
        raise ShamirError("no shares")
    if not all(isinstance(s, Share) for s in pts):
        raise ShamirError("shares must be Share objects")
    xs = [s.x for s in pts]
    if len(set(xs)) != len(xs):
        raise ShamirError("duplicate share x")
    total = 0
    for i, si in enumerate(pts):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - si.x) % PRIME
        total = (total + si.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct_bytes(shares: Iterable[Share]) -> bytes:
    """:func:`reconstruct` of a secret that was shared as bytes."""
    return int_to_secret_bytes(reconstruct(shares))


def threshold(n: int) -> int:
    """t = floor(2n/3) + 1: more than two thirds of the n holders must cooperate.

    Bonawitz et al. (ePrint 2017/281, section 6) need t > (n + n_C)/2 with n_C < n/3 corrupt clients
    against an active server; this t meets that. Against the honest-but-curious aggregator fednode
    claims (no consistency round is run, docs/security.md) any t above the colluders would do; the
    larger t tolerates ceil(n/3) - 1 dropouts per round."""
    if type(n) is not int or n < 2:
        raise ShamirError("threshold needs n >= 2 holders")
    return 2 * n // 3 + 1


def pack_shares(shares: Iterable[Share]) -> bytes:
    """msgpack of ``[[x, y66], ...]``."""
    return msgpack.packb([s.to_wire() for s in shares], use_bin_type=True)


def unpack_shares(data: bytes, *, max_shares: int = 1024) -> list[Share]:
    """Strict, bounded inverse of :func:`pack_shares` for peer-supplied bytes (no pickle, no ext types)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_bin_len=Y_BYTES,
                              max_str_len=0, max_array_len=max(max_shares, 2), max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise ShamirError(f"share bundle is not bounded msgpack: {type(exc).__name__}") from None
    if type(obj) is not list or len(obj) > max_shares:
        raise ShamirError("share bundle is not a list of at most max_shares shares")
    return [Share.from_wire(item) for item in obj]


__all__ = [
    "MAX_SECRET_BYTES", "PRIME", "Share", "ShamirError", "Y_BYTES", "int_to_secret_bytes", "pack_shares",
    "reconstruct", "reconstruct_bytes", "secret_to_int", "split", "threshold", "unpack_shares",
]
