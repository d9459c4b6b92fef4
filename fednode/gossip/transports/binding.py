"""Identity binding for the libp2p transport: one Ed25519 key is both the fednode and the libp2p identity.

The libp2p key pair *is* the node's fednode Ed25519 key (the same 32-byte seed), so

    libp2p peer id = base58(multihash-identity(protobuf{Ed25519, pk}))   (the key itself, inlined)
    fednode peer id = SHA-256("fednode/v1/peer" || pk)

are both functions of the public key ``pk``. Noise proves possession of the key behind the remote
libp2p peer id on every connection; :func:`fednode_id_of` maps that peer id back to ``pk`` and to
the fednode id, which must be on the allow-list, and :func:`envelope_sender` lets the transport
check that every envelope arriving on the connection names that same id as its sender. A peer
can therefore neither connect under another node's identity nor speak for one over its own
connection. Reusing one key for both signatures is safe because both are domain-separated:
libp2p's Noise signs ``"noise-libp2p-static-key:" || static key``, fednode signs
``"fednode/v1/sig\\0" || header``.

Pure except :func:`libp2p_key_pair` (imports libp2p lazily), so the launcher can compute peer ids
for bootstrap addresses without the optional dependency.
"""

from __future__ import annotations

import msgpack
from cryptography.hazmat.primitives import serialization

from fednode.security.identity import AllowList, Identity, peer_id_from_public_key

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# multihash identity (0x00) of 36 bytes: protobuf PublicKey{Type=Ed25519 (1), Data=<32 bytes>}
_ED25519_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        i = _B58.find(c)
        if i < 0:
            raise ValueError(f"not base58: {c!r}")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def libp2p_peer_id(public_key: bytes) -> str:
    """The libp2p peer id (base58 text, ``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return _b58encode(_ED25519_PREFIX + bytes(public_key))


def public_key_of(libp2p_id: str | bytes) -> bytes | None:
    """The Ed25519 public key inlined in a libp2p peer id (text or bytes); None for any other id."""
    try:
        raw = _b58decode(libp2p_id) if isinstance(libp2p_id, str) else bytes(libp2p_id)
    except ValueError:
        return None
    if len(raw) != len(_ED25519_PREFIX) + 32 or not raw.startswith(_ED25519_PREFIX):
        return None
    return raw[len(_ED25519_PREFIX):]


def fednode_id_of(libp2p_id: str | bytes, allow_list: AllowList | None = None) -> bytes | None:
    """The fednode peer id bound to a libp2p peer id; None when the id inlines no Ed25519 key or
    (with ``allow_list``) when that key is not admitted."""
    pk = public_key_of(libp2p_id)
    if pk is None:
        return None
    fid = peer_id_from_public_key(pk)
    if allow_list is not None and allow_list.public_key_bytes(fid) != pk:
        return None
    return fid


def libp2p_key_pair(identity: Identity):
    """The libp2p ``KeyPair`` for this node: the very same Ed25519 key (imports libp2p)."""
    from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pPrivateKey
    from libp2p.crypto.keys import KeyPair
    seed = identity.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption())
    sk = Libp2pPrivateKey.new(seed)
    if sk.get_public_key().to_bytes() != identity.public_key_bytes:  # never: same seed, same key
        raise RuntimeError("libp2p derived another public key from the node's seed")
    return KeyPair(sk, sk.get_public_key())


def envelope_sender(raw: bytes) -> bytes | None:
    """The sender field of a signed envelope's header, without verifying anything (None if malformed).

    Envelope = msgpack([header_bytes, payload, sig]), header = msgpack([v, type, sender, ...]).
    Only the outer array head and the header are parsed (bounded, no extension types); the payload
    is not copied. The signature is still checked later by the round; this only binds the claimed
    sender to the connection.
    """
    try:
        outer = msgpack.Unpacker(raw=False, max_buffer_size=len(raw) + 16, max_bin_len=len(raw),
                                 max_str_len=0, max_array_len=3, max_map_len=0, max_ext_len=0)
        outer.feed(raw)
        if outer.read_array_header() != 3:
            return None
        header_bytes = outer.unpack()
        if type(header_bytes) is not bytes or len(header_bytes) > 1 << 20:
            return None
        head = msgpack.Unpacker(raw=False, max_buffer_size=len(header_bytes) + 16,
                                max_bin_len=len(header_bytes), max_str_len=1 << 16, max_array_len=1 << 16,
                                max_map_len=1 << 12, max_ext_len=0)
        head.feed(header_bytes)
        if head.read_array_header() < 3:
            return None
        head.skip()  # version
        head.skip()  # type
        sender = head.unpack()
    except Exception:
        return None
    return sender if type(sender) is bytes and len(sender) == 32 else None
