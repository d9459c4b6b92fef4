"""The mask PRG: the ChaCha20 keystream (RFC 8439) of a 32-byte seed, read as little-endian uint64.

``PRG(s)`` is ChaCha20 keyed with ``s``, block counter 0 and nonce 0^12. A zero nonce is safe only
because each seed is used for exactly one stream (:mod:`fednode.security.kdf` binds round, attempt
and aggregator into the seed). Reading ``8n`` keystream bytes as ``'<u8'`` gives uniform ring
elements with no modulo bias and the same value on every platform. A longer stream extends a
shorter one (prefix consistency), so ``mask_stream(s, n)[:m] == mask_stream(s, m)``.

Not numpy's Philox (documented as a weakened cipher) and not a seed folded into a 32-bit
``RandomState`` state: the mask is only as strong as this PRG.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32
BLOCK_BYTES = 64
MAX_ELEMENTS = (2**32 * BLOCK_BYTES) // 8
"""The 32-bit block counter covers 2^32 blocks of 64 bytes: at most 2^35 uint64 per seed."""
_NONCE16 = bytes(16)  # cryptography's 16-byte nonce = counter_le32 (0) || nonce12 (0)
_CHUNK_BYTES = 1 << 22  # zero source reused for large streams (bounded extra memory)
_ZEROS_VIEW = memoryview(bytes(_CHUNK_BYTES))


def _encryptor(seed: bytes):
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ValueError("a PRG seed is 32 bytes")
    return Cipher(algorithms.ChaCha20(bytes(seed), _NONCE16), mode=None).encryptor()


class Keystream:
    """An incremental reader of ``PRG(seed)``: successive reads continue the same stream.

    Lets a caller consume several streams block by block (cache-sized) instead of materialising
    each whole stream; ``read_into`` of n1 then n2 elements equals the first n1 + n2 of the stream.
    """

    def __init__(self, seed: bytes) -> None:
        self._enc = _encryptor(seed)
        self._bytes = 0

    def read_into(self, out: np.ndarray) -> np.ndarray:
        """Overwrite the C-contiguous uint64 array ``out`` with the next ``out.size`` elements; returns it."""
        if not isinstance(out, np.ndarray) or out.dtype.kind != "u" or out.dtype.itemsize != 8 \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writable C-contiguous uint64 array")
        view = memoryview(out).cast("B")
        total = view.nbytes
        if self._bytes + total > MAX_ELEMENTS * 8:
            raise ValueError("a ChaCha20 stream with a 32-bit counter is at most 256 GiB")
        for start in range(0, total, _CHUNK_BYTES):
            stop = min(start + _CHUNK_BYTES, total)
            # encrypting zeros with update_into avoids update()'s allocation and copy (several times faster)
            self._enc.update_into(_ZEROS_VIEW[:stop - start], view[start:stop])
        self._bytes += total
        if out.dtype.byteorder == ">" or (out.dtype.byteorder == "=" and not np.little_endian):
            out.byteswap(inplace=True)  # the stream is defined as little-endian uint64
        return out


def mask_stream_into(seed: bytes, out: np.ndarray) -> np.ndarray:
    """Overwrite the uint64 array ``out`` with ``PRG(seed)[:out.size]``; returns ``out``.

    ``out`` must be C-contiguous uint64 (any byte order: values are the '<u8' reading of the stream).
    """
    return Keystream(seed).read_into(out)


def mask_stream(seed: bytes, n: int) -> np.ndarray:
    """``PRG(seed)``: the first ``n`` uint64 of the ChaCha20 keystream, read as ``'<u8'``."""
    if isinstance(n, bool) or int(n) != n or not 0 <= n <= MAX_ELEMENTS:
        raise ValueError(f"n must be an int in [0, {MAX_ELEMENTS}]")
    return Keystream(seed).read_into(np.empty(int(n), dtype="<u8"))


__all__ = ["Keystream", "MAX_ELEMENTS", "SEED_BYTES", "mask_stream", "mask_stream_into"]
