"""Identity keys (file safety, RFC 8032 known answer) and the allow-list file format."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fednode.security.identity import (AllowList, Identity, IdentityError, peer_id_from_public_key, peer_id_hex,
                                       short_id)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")

# RFC 8032 section 7.1, TEST 1 (empty message)
RFC_SK = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PK = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
                        "d25bf5f0595bbe24655141438e7a100b")


def test_rfc8032_test1_known_answer() -> None:
    ident = Identity(Ed25519PrivateKey.from_private_bytes(RFC_SK))
    assert ident.public_key_bytes == RFC_PK
    assert ident.sign(b"") == RFC_SIG
    ident.public_key.verify(RFC_SIG, b"")
    assert ident.peer_id == hashlib.sha256(b"fednode/v1/peer" + RFC_PK).digest()


def test_ids() -> None:
    pid = peer_id_from_public_key(RFC_PK)
    assert len(pid) == 32
    assert short_id(pid) == pid[:6].hex() and len(short_id(pid)) == 12
    assert peer_id_hex(pid) == pid.hex() and len(peer_id_hex(pid)) == 64
    ident = Identity(Ed25519PrivateKey.from_private_bytes(RFC_SK))
    assert ident.short_id == short_id(pid)
    assert "9d61b1" not in repr(ident) and ident.short_id in repr(ident)
    with pytest.raises(ValueError):
        peer_id_from_public_key(RFC_PK[:31])
    with pytest.raises(Exception):
        ident.peer_id = b"x" * 32  # type: ignore[misc]


@posix_only
def test_save_mode_and_roundtrip(tmp_path) -> None:
    ident = Identity.generate()
    path = tmp_path / "identity.pem"
    old_umask = os.umask(0)  # even with a permissive umask the file must be 0600
    try:
        ident.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = Identity.load(path)
    assert loaded == ident and loaded.peer_id == ident.peer_id
    assert loaded.sign(b"m") == ident.sign(b"m")
    # overwriting an exposed file replaces it with a 0600 one; no temp files are left behind
    path.chmod(0o644)
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.pem"]


def test_load_missing(tmp_path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        Identity.load(tmp_path / "nope.pem")


@posix_only
def test_load_refuses_group_or_other_readable(tmp_path) -> None:
    path = tmp_path / "id.pem"
    Identity.generate().save(path)
    for mode in (0o640, 0o604, 0o644, 0o660):
        path.chmod(mode)
        with pytest.raises(IdentityError, match="chmod 600") as exc:
            Identity.load(path)
        assert "\n" not in str(exc.value) and f"{mode:04o}" in str(exc.value)
    path.chmod(0o600)
    Identity.load(path)


@posix_only
def test_load_refuses_unreadable(tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    path = tmp_path / "id.pem"
    Identity.generate().save(path)
    path.chmod(0o000)
    try:
        with pytest.raises(IdentityError, match="cannot read"):
            Identity.load(path)
    finally:
        path.chmod(0o600)


@posix_only
def test_load_refuses_directory(tmp_path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(IdentityError):
        Identity.load(d)


def _write_secret(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def test_load_refuses_non_ed25519(tmp_path) -> None:
    x = X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption())
    cases = {
        "x25519.pem": (x, "not an Ed25519 key"),
        "garbage.pem": (b"hello\n", "not an unencrypted PEM"),
        "empty.pem": (b"", "not an unencrypted PEM"),
        "encrypted.pem": (Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw")), "not an unencrypted PEM"),
    }
    for name, (data, msg) in cases.items():
        path = tmp_path / name
        _write_secret(path, data)
        with pytest.raises(IdentityError, match=msg) as exc:
            Identity.load(path)
        assert "\n" not in str(exc.value)


def test_allow_list_roundtrip(tmp_path) -> None:
    ids = [Identity.generate() for _ in range(3)]
    allow = AllowList()
    allow.add(ids[0].public_key_bytes, name="alice")
    allow.add(ids[1].public_key_bytes)
    allow.add(ids[2].public_key_bytes, name="node 2")
    assert len(allow) == 3 and allow.peer_ids == tuple(i.peer_id for i in ids)
    path = tmp_path / "allow.txt"
    allow.to_file(path)
    back = AllowList.from_file(path)
    assert back.peer_ids == allow.peer_ids
    assert [back.name(i.peer_id) for i in ids] == ["alice", None, "node 2"]
    for i in ids:
        assert i.peer_id in back
        assert back.public_key_bytes(i.peer_id) == i.public_key_bytes
        back.public_key(i.peer_id).verify(i.sign(b"x"), b"x")
    stranger = Identity.generate()
    assert stranger.peer_id not in back and back.public_key(stranger.peer_id) is None
    assert back.name(stranger.peer_id) is None and "x" not in back  # type: ignore[operator]
    # re-adding updates the name, does not duplicate
    back.add(ids[1].public_key_bytes, name="bob")
    assert len(back) == 3 and back.name(ids[1].peer_id) == "bob"


def test_allow_list_comments_and_blank_lines(tmp_path) -> None:
    a, b = Identity.generate(), Identity.generate()
    path = tmp_path / "allow.txt"
    path.write_text(f"# header\n\n  {a.public_key_bytes.hex().upper()}   first node # trailing\n"
                    f"{b.public_key_bytes.hex()}\t# no name\n   \n")
    allow = AllowList.from_file(path)
    assert allow.peer_ids == (a.peer_id, b.peer_id)
    assert allow.name(a.peer_id) == "first node" and allow.name(b.peer_id) is None


@pytest.mark.parametrize("bad, line, msg", [
    ("zz" * 32, 2, "64-hex"),
    ("ab" * 31, 2, "64-hex"),
    ("ab" * 33, 2, "64-hex"),
    ("{a}\n{a} again", 3, "duplicate key"),
])
def test_allow_list_errors_have_line_numbers(tmp_path, bad: str, line: int, msg: str) -> None:
    a = Identity.generate().public_key_bytes.hex()
    path = tmp_path / "allow.txt"
    path.write_text("# comment\n" + bad.format(a=a) + "\n")
    with pytest.raises(IdentityError, match=msg) as exc:
        AllowList.from_file(path)
    assert f":{line}:" in str(exc.value)


def test_allow_list_missing_and_bad_names(tmp_path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        AllowList.from_file(tmp_path / "missing.txt")
    allow = AllowList()
    for name in ("a#b", "a\nb", " padded"):
        with pytest.raises(IdentityError):
            allow.add(Identity.generate().public_key_bytes, name=name)
    with pytest.raises(IdentityError):
        allow.add(b"short")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(IdentityError, match="UTF-8"):
        AllowList.from_file(tmp_path / "bin.txt")
