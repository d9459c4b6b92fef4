"""ChaCha20-Poly1305 (RFC 8439) for Shamir share bundles relayed through the aggregator (mode B).

In SecAgg+ the shares of j's secrets travel to each peer k through aggregator i, which must not
read or alter them. j and k encrypt under ``k_jk = share_key(X25519(esk_j, epk_k), ...)``
(:func:`fednode.security.kdf.share_key`; a different HKDF label from the mask seeds). The wire
form is ``nonce (12 random bytes) || ciphertext || tag (16 bytes)``.

The key is symmetric in (j, k), so the direction and context go into the associated data
(:func:`bundle_aad`): otherwise the aggregator could reflect j's bundle back to j, or replay it
into another round or federation.
"""

from __future__ import annotations

import os

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fednode.security.kdf import EpochKeys, share_key

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
BUNDLE_AAD_DOMAIN = b"fednode/v1/share-bundle"


class BundleDecryptionError(ValueError):
    """A share bundle failed authentication: wrong key, wrong context (AAD), truncated or tampered."""


def _cipher(key: bytes) -> ChaCha20Poly1305:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
    return ChaCha20Poly1305(bytes(key))


def bundle_aad(*, federation_id: str | bytes, round: int, sender_id: bytes, recipient_id: bytes) -> bytes:
    """Associated data binding a bundle to its federation, round and direction (sender -> recipient)."""
    fid = federation_id.encode("utf-8") if isinstance(federation_id, str) else bytes(federation_id)
    return BUNDLE_AAD_DOMAIN + msgpack.packb([fid, int(round), bytes(sender_id), bytes(recipient_id)],
                                             use_bin_type=True)


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"", *, nonce: bytes | None = None) -> bytes:
    """``nonce || ChaCha20-Poly1305(key, nonce, plaintext, aad)`` with a fresh random 12-byte nonce.

    ``nonce`` is for known-answer tests only: reusing one under the same key breaks confidentiality.
    """
    n = os.urandom(NONCE_BYTES) if nonce is None else bytes(nonce)
    if len(n) != NONCE_BYTES:
        raise ValueError("the nonce is 12 bytes")
    return n + _cipher(key).encrypt(n, bytes(plaintext), bytes(aad))


def decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`BundleDecryptionError` on any authentication failure."""
    cipher = _cipher(key)
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise BundleDecryptionError("share bundle is too short to hold a nonce and a tag")
    blob = bytes(blob)
    try:
        return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], bytes(aad))
    except InvalidTag:
        raise BundleDecryptionError("share bundle failed authentication (wrong key or context, or tampered)") \
            from None


def seal_bundle(keys: EpochKeys, peer_public: bytes, plaintext: bytes, *, federation_id: str | bytes, round: int,
                sender_id: bytes, recipient_id: bytes) -> bytes:
    """Encrypt a bundle from ``sender_id`` (holder of ``keys``) to ``recipient_id`` (owner of ``peer_public``)."""
    key = share_key(keys.shared_secret(peer_public), federation_id=federation_id, round=round,
                    id_j=sender_id, id_k=recipient_id)
    aad = bundle_aad(federation_id=federation_id, round=round, sender_id=sender_id, recipient_id=recipient_id)
    return encrypt(key, plaintext, aad)


def open_bundle(keys: EpochKeys, peer_public: bytes, blob: bytes, *, federation_id: str | bytes, round: int,
                sender_id: bytes, recipient_id: bytes) -> bytes:
    """Decrypt a bundle addressed to ``recipient_id`` (holder of ``keys``) from ``sender_id``."""
    key = share_key(keys.shared_secret(peer_public), federation_id=federation_id, round=round,
                    id_j=sender_id, id_k=recipient_id)
    aad = bundle_aad(federation_id=federation_id, round=round, sender_id=sender_id, recipient_id=recipient_id)
    return decrypt(key, blob, aad)


__all__ = [
    "BundleDecryptionError", "KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "bundle_aad", "decrypt", "encrypt",
    "open_bundle", "seal_bundle",
]
