"""A node's model trajectory: its model after every round, appended to ``<state_dir>/trajectory.bin``.

Written only when ``record_trajectory`` is on (the testnet turns it on), so that the report can
compute consensus disagreement per round across nodes. Not a checkpoint: no fsync; a SIGKILL may
tear the last record, which the reader skips and the next writer (a restart) truncates away.

File format (all little-endian):
    header  : b"FNTJ" magic, uint32 version (1), uint32 n (float32 values per record)
    record* : uint32 magic 0x52544A46 (b"FJTR"), uint32 round, n x float32 (the model's arrays
              flattened in ModelSpec order, i.e. sorted array names), uint32 CRC-32 of round + values
A record is valid only when complete and its CRC matches; reading stops at the first invalid one.
A round may appear twice (a restart redoes rounds after its checkpoint): the last record wins.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

FILE_MAGIC = b"FNTJ"
RECORD_MAGIC = 0x52544A46
_HEADER = struct.Struct("<4sII")
_RECORD_HEAD = struct.Struct("<II")
_CRC = struct.Struct("<I")
VERSION = 1


class TrajectoryError(Exception):
    """The file is not a trajectory, or its vector length differs from this model's."""


def flatten(model: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model as one float32 vector in canonical (sorted-name, ModelSpec) order."""
    return np.concatenate([np.asarray(model[k], dtype="<f4").ravel() for k in sorted(model)])


def _record_size(n: int) -> int:
    return _RECORD_HEAD.size + 4 * n + _CRC.size


def _valid_prefix(data: bytes | np.ndarray) -> tuple[int, int]:
    """(n, length of the valid prefix) of a trajectory file's bytes."""
    if len(data) < _HEADER.size:
        raise TrajectoryError("trajectory file has no complete header")
    magic, version, n = _HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC or version != VERSION:
        raise TrajectoryError("not a fednode trajectory file (bad magic or version)")
    size, off = _record_size(n), _HEADER.size
    while off + size <= len(data):
        rec_magic, _rnd = _RECORD_HEAD.unpack_from(data, off)
        body = memoryview(data[off + 4: off + size - _CRC.size])
        (crc,) = _CRC.unpack_from(data, off + size - _CRC.size)
        if rec_magic != RECORD_MAGIC or zlib.crc32(body) != crc:
            break
        off += size
    return n, off


class TrajectoryWriter:
    """Appends one record per round; on open, cuts a torn tail left by a killed predecessor."""

    def __init__(self, path: Path, n: int) -> None:
        self.path = Path(path)
        self.n = int(n)
        if self.path.exists() and self.path.stat().st_size > 0:
            keep = _HEADER.size
            try:
                old_n, keep = _valid_prefix(self.path.read_bytes())
            except TrajectoryError:
                old_n = -1
            if old_n != self.n:  # another model (task changed) or garbage: start the file over
                self.path.unlink()
            else:
                os.truncate(self.path, keep)
        if not self.path.exists():
            self.path.write_bytes(_HEADER.pack(FILE_MAGIC, VERSION, self.n))
        self._fh = open(self.path, "ab")

    def append(self, rnd: int, model: Mapping[str, np.ndarray]) -> None:
        vec = flatten(model)
        if vec.size != self.n:
            raise TrajectoryError(f"model has {vec.size} values, the trajectory {self.n}")
        body = struct.pack("<I", int(rnd)) + vec.tobytes()
        self._fh.write(struct.pack("<I", RECORD_MAGIC) + body + _CRC.pack(zlib.crc32(body)))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_trajectory(path: Path) -> dict[int, np.ndarray]:
    """round -> float32 vector of every complete record (a torn or corrupt tail is skipped).

    The vectors are read-only views of a memory map, so long runs need not fit in memory at once.
    """
    if Path(path).stat().st_size < _HEADER.size:
        raise TrajectoryError("trajectory file has no complete header")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    n, end = _valid_prefix(mm)
    size, out = _record_size(n), {}
    for off in range(_HEADER.size, end, size):
        (rnd,) = struct.unpack_from("<I", mm, off + 4)
        out[int(rnd)] = mm[off + _RECORD_HEAD.size: off + _RECORD_HEAD.size + 4 * n].view("<f4")
    return out
