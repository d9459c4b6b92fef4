"""Known-answer vectors (PROTOCOL 6, item 10): ChaCha20, X25519, HKDF, ChaCha20-Poly1305, low-order keys.

Ed25519 (RFC 8032 TEST 1) is checked in test_identity.py.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fednode.security import aead
from fednode.security.kdf import EpochKeys, KeyAgreementError, hkdf_sha256
from fednode.security.prg import mask_stream

SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")


def _hex(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# RFC 8439 section 2.4.2: key 00..1f, nonce 00:00:00:00:00:00:00:4a:00:00:00:00, initial counter 1
RFC8439_242_CIPHERTEXT = _hex("""
    6e 2e 35 9a 25 68 f9 80 41 ba 07 28 dd 0d 69 81 e9 7e 7a ec 1d 43 60 c2 0a 27 af cc fd 9f ae 0b
    f9 1b 65 c5 52 47 33 ab 8f 59 3d ab cd 62 b3 57 16 39 d6 24 e6 51 52 ab 8f 53 0c 35 9f 08 61 d8
    07 ca 0d bf 50 0d 6a 61 56 a3 8e 08 8a 22 b6 5e 52 bc 51 4d 16 cc f8 06 81 8c e9 1a b7 79 37 36
    5a f9 0b bf 74 a3 5b e6 b4 0b 8e ed f2 78 5e 42 87 4d""")

# RFC 8439 appendix A.1, test vector #1: all-zero key, counter 0, all-zero nonce -- exactly PRG(0^32)
RFC8439_A1_KEYSTREAM = _hex("""
    76 b8 e0 ad a0 f1 3d 90 40 5d 6a e5 53 86 bd 28 bd d2 19 b8 a0 8d ed 1a a8 36 ef cc 8b 77 0d c7
    da 41 59 7c 51 57 48 8d 77 24 e0 3f b8 d8 4a 37 6a 43 b8 f4 15 18 a1 1c c3 87 b6 69 b2 ee 65 86""")

# RFC 7748 section 6.1
ALICE_SK = _hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = _hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = _hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = _hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_K = _hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_chacha20_rfc8439_section_2_4_2() -> None:
    key, nonce12 = bytes(range(32)), _hex("000000000000004a00000000")
    enc = Cipher(algorithms.ChaCha20(key, (1).to_bytes(4, "little") + nonce12), mode=None).encryptor()
    ct = enc.update(SUNSCREEN)
    assert ct[:16].hex() == "6e2e359a2568f98041ba0728dd0d6981"
    assert ct == RFC8439_242_CIPHERTEXT


def test_prg_is_rfc8439_keystream_counter0_nonce0() -> None:
    got = mask_stream(bytes(32), 8)
    assert got.tobytes() == RFC8439_A1_KEYSTREAM  # '<u8' on the wire: the raw keystream bytes
    assert int(got[0]) == int.from_bytes(RFC8439_A1_KEYSTREAM[:8], "little")


def test_prg_matches_rfc8439_section_2_4_2_keystream_after_first_block() -> None:
    """The 2.4.2 keystream (counter 1) is our PRG's stream from block 1 on, once the nonce is zeroed:
    checks counter placement in cryptography's 16-byte nonce (counter_le32 || nonce12)."""
    key = bytes(range(32))
    ks_ctr1 = Cipher(algorithms.ChaCha20(key, (1).to_bytes(4, "little") + bytes(12)), mode=None).encryptor() \
        .update(bytes(128))
    assert mask_stream(key, 24)[8:].tobytes() == ks_ctr1


def test_x25519_rfc7748_section_6_1() -> None:
    alice, bob = EpochKeys.from_private_bytes(ALICE_SK), EpochKeys.from_private_bytes(BOB_SK)
    assert alice.public_bytes == ALICE_PK
    assert bob.public_bytes == BOB_PK
    assert alice.shared_secret(BOB_PK) == SHARED_K
    assert bob.shared_secret(ALICE_PK) == SHARED_K
    assert SHARED_K.hex().startswith("4a5d9d5b") and SHARED_K.hex().endswith("1e161742")


def test_x25519_rfc7748_section_5_2_first_vector() -> None:
    scalar = EpochKeys.from_private_bytes(_hex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"))
    u = _hex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert scalar.shared_secret(u) == _hex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


LOW_ORDER_POINTS = [
    bytes(32),                                                                   # 0 (order 4 multiple)
    (1).to_bytes(32, "little"),                                                  # 1 (order 1)
    _hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),    # order 8
    _hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),    # order 8
    _hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),    # p - 1 (order 2)
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_public_keys_are_rejected(point: bytes) -> None:
    with pytest.raises(KeyAgreementError, match="low-order"):
        EpochKeys.generate().shared_secret(point)


@pytest.mark.parametrize("bad", [b"", b"\x09" * 31, b"\x09" * 33, "not bytes"])
def test_malformed_public_keys_are_rejected(bad) -> None:
    with pytest.raises(KeyAgreementError):
        EpochKeys.generate().shared_secret(bad)


def test_hkdf_sha256_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm == _hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_chacha20_poly1305_rfc8439_section_2_8_2() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = _hex("070000004041424344454647")
    aad = _hex("50515253c0c1c2c3c4c5c6c7")
    blob = aead.encrypt(key, SUNSCREEN, aad, nonce=nonce)
    assert blob[:12] == nonce
    assert blob[12:28].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert blob[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert aead.decrypt(key, blob, aad) == SUNSCREEN


def test_epoch_keys_repr_hides_private_key() -> None:
    keys = EpochKeys.from_private_bytes(ALICE_SK)
    assert ALICE_SK.hex() not in repr(keys)
    assert keys.private_bytes() == ALICE_SK
