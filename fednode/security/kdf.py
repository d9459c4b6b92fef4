"""Epoch X25519 keys and the HKDF-SHA256 derivations of pairwise secrets (PROTOCOL section 2, "Masks").

Every pair of contributors (j, k) shares one X25519 secret per epoch; everything else is derived
from it with HKDF-SHA256 (RFC 5869) under distinct, domain-separated labels:

* mask seed  ``s_jk``: info = ``b"fednode/v1/mask"  + msgpack([r, attempt, id_i, min(id_j,id_k), max(id_j,id_k)])``
* share key  ``k_jk``: info = ``b"fednode/v1/share" + msgpack([r, min(id_j,id_k), max(id_j,id_k)])``

with salt = ``SHA256(b"fednode/v1/salt" + federation_id)`` and L = 32. Sorting the pair makes both
symmetric in (j, k), which is what lets pairwise masks cancel; binding round, attempt and
aggregator id makes every mask seed single-use, which is what makes ChaCha20 with a zero nonce
safe (:mod:`fednode.security.prg`) and a retry's masks independent of the failed attempt's.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT_DOMAIN = b"fednode/v1/salt"
MASK_INFO = b"fednode/v1/mask"
SHARE_INFO = b"fednode/v1/share"
SEED_BYTES = 32
X25519_KEY_BYTES = 32
MAX_UINT64 = 2**64 - 1


class KeyAgreementError(ValueError):
    """A peer's X25519 public key is malformed or of low order (the shared secret would be all zero)."""


@dataclass(frozen=True, eq=False)
class EpochKeys:
    """One node's X25519 key pair for an epoch; only the public half ever leaves the node (signed in HELLO)."""

    private_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> "EpochKeys":
        """A fresh key pair from the OS CSPRNG."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> "EpochKeys":
        """Rebuild from 32 raw private bytes (test vectors, Shamir reconstruction of a dropped node's key)."""
        if not isinstance(data, (bytes, bytearray)) or len(data) != X25519_KEY_BYTES:
            raise ValueError("an X25519 private key is 32 raw bytes")
        return cls(X25519PrivateKey.from_private_bytes(bytes(data)))

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte raw public key, as carried in HELLO."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes; only for secret-sharing them in SecAgg+ mode B."""
        return self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption())

    def shared_secret(self, peer_public_bytes: bytes) -> bytes:
        """X25519(own private, peer public); raises :class:`KeyAgreementError` on a bad or low-order key."""
        return x25519_shared_secret(self.private_key, peer_public_bytes)

    def __repr__(self) -> str:  # never print key material
        return f"EpochKeys(public={self.public_bytes.hex()[:12]}...)"


def x25519_shared_secret(private_key: X25519PrivateKey, peer_public_bytes: bytes) -> bytes:
    """The raw 32-byte X25519 output; cryptography's ValueErrors become a clear :class:`KeyAgreementError`."""
    if not isinstance(peer_public_bytes, (bytes, bytearray)) or len(peer_public_bytes) != X25519_KEY_BYTES:
        raise KeyAgreementError("an X25519 public key is 32 raw bytes")
    try:
        peer = X25519PublicKey.from_public_bytes(bytes(peer_public_bytes))
        return private_key.exchange(peer)
    except ValueError as exc:  # OpenSSL refuses an all-zero result, i.e. a low-order point
        raise KeyAgreementError(f"X25519 with this peer key failed (low-order or invalid point): {exc}") from None


def federation_salt(federation_id: str | bytes) -> bytes:
    """``SHA256(b"fednode/v1/salt" + federation_id)``: separates federations that reuse keys."""
    fid = federation_id.encode("utf-8") if isinstance(federation_id, str) else bytes(federation_id)
    return hashlib.sha256(SALT_DOMAIN + fid).digest()


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = SEED_BYTES) -> bytes:
    """RFC 5869 HKDF-SHA256 (extract then expand) via ``cryptography``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _uint(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not a bool")
    v = operator.index(value)
    if not 0 <= v <= MAX_UINT64:
        raise ValueError(f"{name} must be in [0, 2^64)")
    return int(v)


def _peer_id(name: str, value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise ValueError(f"{name} must be non-empty bytes")
    return bytes(value)


def _ikm(shared_secret: bytes) -> bytes:
    if not isinstance(shared_secret, (bytes, bytearray)) or len(shared_secret) != X25519_KEY_BYTES:
        raise ValueError("the shared secret is the 32-byte X25519 output")
    return bytes(shared_secret)


def mask_info(*, round: int, attempt: int, aggregator_id: bytes, id_j: bytes, id_k: bytes) -> bytes:
    """HKDF info of a mask seed: label + msgpack([r, attempt, id_i, min(id_j,id_k), max(id_j,id_k)])."""
    a, b = _peer_id("id_j", id_j), _peer_id("id_k", id_k)
    if a == b:
        raise ValueError("a mask seed needs two distinct contributors")
    body = [_uint("round", round), _uint("attempt", attempt), _peer_id("aggregator_id", aggregator_id),
            min(a, b), max(a, b)]
    return MASK_INFO + msgpack.packb(body, use_bin_type=True)


def mask_seed(shared_secret: bytes, *, federation_id: str | bytes, round: int, attempt: int,
              aggregator_id: bytes, id_j: bytes, id_k: bytes) -> bytes:
    """The 32-byte pairwise mask seed s_jk for one (round, attempt, aggregator); s_jk == s_kj."""
    info = mask_info(round=round, attempt=attempt, aggregator_id=aggregator_id, id_j=id_j, id_k=id_k)
    return hkdf_sha256(_ikm(shared_secret), salt=federation_salt(federation_id), info=info)


def share_key(shared_secret: bytes, *, federation_id: str | bytes, round: int, id_j: bytes, id_k: bytes) -> bytes:
    """The 32-byte ChaCha20-Poly1305 key for Shamir share bundles between j and k in round r.

    A different HKDF label from :func:`mask_seed`, so a key never doubles as a mask seed.
    """
    a, b = _peer_id("id_j", id_j), _peer_id("id_k", id_k)
    if a == b:
        raise ValueError("a share key needs two distinct peers")
    info = SHARE_INFO + msgpack.packb([_uint("round", round), min(a, b), max(a, b)], use_bin_type=True)
    return hkdf_sha256(_ikm(shared_secret), salt=federation_salt(federation_id), info=info)


__all__ = [
    "EpochKeys", "KeyAgreementError", "MASK_INFO", "SALT_DOMAIN", "SEED_BYTES", "SHARE_INFO", "federation_salt",
    "hkdf_sha256", "mask_info", "mask_seed", "share_key", "x25519_shared_secret",
]
