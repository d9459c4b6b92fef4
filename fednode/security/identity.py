"""Node identity (one Ed25519 key) and admission (a pinned allow-list of public keys).

A peer is named by ``peer_id = SHA256(b"fednode/v1/peer" + pk)``: a fixed-size, domain-separated
digest, so ids never collide with other hashes in the protocol and do not depend on the key's
encoding. The key file is the only secret a node has, so it is written atomically with mode 0600
from the first byte and refused on load when anyone else could read it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fednode.security.files import atomic_write

PEER_DOMAIN = b"fednode/v1/peer"
PUBLIC_KEY_BYTES = 32
PEER_ID_BYTES = 32


class IdentityError(Exception):
    """A bad key or allow-list file; the message is one line that says what to do."""


def peer_id_from_public_key(pk: bytes) -> bytes:
    """The 32-byte peer id of a raw Ed25519 public key."""
    if not isinstance(pk, bytes) or len(pk) != PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key is 32 raw bytes")
    return hashlib.sha256(PEER_DOMAIN + pk).digest()


def short_id(peer_id: bytes) -> str:
    """A short printable id for humans and logs (first 6 bytes, 12 lowercase hex chars)."""
    return bytes(peer_id[:6]).hex()


def peer_id_hex(peer_id: bytes) -> str:
    """The full id as 64 lowercase hex chars (for files and machine-readable output)."""
    return bytes(peer_id).hex()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)




@dataclass(frozen=True, eq=False, repr=False)
class Identity:
    """This node's Ed25519 signing key and the ids derived from it."""

    private_key: Ed25519PrivateKey
    public_key_bytes: bytes = field(init=False)
    peer_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise TypeError("Identity needs an Ed25519PrivateKey")
        pk = _raw_public(self.private_key.public_key())
        object.__setattr__(self, "public_key_bytes", pk)
        object.__setattr__(self, "peer_id", peer_id_from_public_key(pk))

    @property
    def short_id(self) -> str:
        return short_id(self.peer_id)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature (deterministic, RFC 8032)."""
        return self.private_key.sign(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.public_key_bytes == self.public_key_bytes

    def __hash__(self) -> int:
        return hash(self.public_key_bytes)

    def __repr__(self) -> str:  # never print key material
        return f"Identity({self.short_id})"

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as unencrypted PKCS8 PEM, atomically, mode 0600."""
        pem = self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        atomic_write(Path(path), pem, 0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Identity":
        """Read a key written by :meth:`save`; refuses missing, unreadable, foreign or exposed files."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise IdentityError(f"identity key file {path} does not exist (create one with `fednode keygen`)") from None
        except OSError as exc:
            raise IdentityError(f"cannot read identity key file {path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IdentityError(f"identity key file {path} is not a regular file")
            if os.name == "posix" and st.st_mode & 0o077:
                raise IdentityError(f"identity key file {path} is accessible by group/others "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with: chmod 600 {path}")
            if st.st_size > 64 * 1024:
                raise IdentityError(f"identity key file {path} is too large to be an Ed25519 key")
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            raise IdentityError(f"cannot read identity key file {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except Exception:
            raise IdentityError(f"identity key file {path} is not an unencrypted PEM (PKCS8) private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"identity key file {path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)


@dataclass(frozen=True)
class _Admitted:
    public_key: Ed25519PublicKey
    public_key_bytes: bytes
    name: str | None


class AllowList:
    """The pinned set of admitted Ed25519 public keys, looked up by peer id.

    File format (text): one 64-hex-char public key per line, optionally followed by whitespace and
    a human name; ``#`` starts a comment; blank lines are ignored.
    """

    def __init__(self) -> None:
        self._peers: dict[bytes, _Admitted] = {}

    def add(self, pk_bytes: bytes, name: str | None = None) -> bytes:
        """Admit a raw 32-byte public key (re-adding updates the name); returns its peer id."""
        if not isinstance(pk_bytes, bytes) or len(pk_bytes) != PUBLIC_KEY_BYTES:
            raise IdentityError("an allow-list entry must be a 32-byte Ed25519 public key")
        if name is not None and (not isinstance(name, str) or "#" in name or any(c in name for c in "\r\n")
                                 or name != name.strip()):
            raise IdentityError(f"bad allow-list name {name!r}: no '#', newlines or surrounding spaces")
        try:
            key = Ed25519PublicKey.from_public_bytes(pk_bytes)
        except Exception:
            raise IdentityError(f"{pk_bytes.hex()} is not a valid Ed25519 public key") from None
        pid = peer_id_from_public_key(pk_bytes)
        self._peers[pid] = _Admitted(key, pk_bytes, name or None)
        return pid

    def public_key(self, peer_id: bytes) -> Ed25519PublicKey | None:
        entry = self._peers.get(peer_id) if isinstance(peer_id, bytes) else None
        return entry.public_key if entry else None

    def public_key_bytes(self, peer_id: bytes) -> bytes | None:
        entry = self._peers.get(peer_id) if isinstance(peer_id, bytes) else None
        return entry.public_key_bytes if entry else None

    def name(self, peer_id: bytes) -> str | None:
        entry = self._peers.get(peer_id) if isinstance(peer_id, bytes) else None
        return entry.name if entry else None

    @property
    def peer_ids(self) -> tuple[bytes, ...]:
        """Admitted peer ids in insertion (file) order."""
        return tuple(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, bytes) and peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[bytes]:
        return iter(tuple(self._peers))

    def __repr__(self) -> str:
        return f"AllowList({len(self)} peers)"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "AllowList":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise IdentityError(f"allow-list {path} does not exist") from None
        except UnicodeDecodeError:
            raise IdentityError(f"allow-list {path} is not UTF-8 text") from None
        except OSError as exc:
            raise IdentityError(f"cannot read allow-list {path}: {exc.strerror or exc}") from None
        out = cls()
        first_line: dict[bytes, int] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            key_hex, name = parts[0], (parts[1].strip() if len(parts) > 1 else None)
            if len(key_hex) != 2 * PUBLIC_KEY_BYTES or any(c not in "0123456789abcdefABCDEF" for c in key_hex):
                raise IdentityError(f"{path}:{lineno}: expected a 64-hex-char Ed25519 public key, got {key_hex[:70]!r}")
            pk = bytes.fromhex(key_hex)
            pid = peer_id_from_public_key(pk)
            if pid in first_line:
                raise IdentityError(f"{path}:{lineno}: duplicate key (first listed on line {first_line[pid]})")
            try:
                out.add(pk, name)
            except IdentityError as exc:
                raise IdentityError(f"{path}:{lineno}: {exc}") from None
            first_line[pid] = lineno
        return out

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the list atomically (mode 0644: public keys are not secret)."""
        lines = ["# fednode allow-list: <ed25519 public key hex> [name]"]
        for entry in self._peers.values():
            lines.append(entry.public_key_bytes.hex() + (f" {entry.name}" if entry.name else ""))
        atomic_write(Path(path), ("\n".join(lines) + "\n").encode("utf-8"), 0o644)
