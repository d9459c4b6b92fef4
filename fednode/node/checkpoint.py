"""Crash-safe node state: round counter, model and optimizer state, written atomically every round.

File format (no pickle): msgpack map ``{"v", "sha256", "body"}`` where ``body`` is a msgpack
map holding the round, restart count, metadata and each model as ``[layout, raw bytes]``.
A write goes to a temporary file in the same directory, is fsynced, renamed over the old
file, and the directory is fsynced: after a crash at any instant the file is either the old
checkpoint or the new one, never a mix. The round counter never goes backwards: saving a
lower round than the one on disk is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from fednode.security.arrays import Model, ModelSpec, decode_arrays, encode_arrays
from fednode.security.files import atomic_write

FORMAT_VERSION = 1
_LIMITS = dict(max_bin_len=2**31 - 1, max_str_len=1 << 20, max_array_len=1 << 20, max_map_len=1 << 16)


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be used (corrupt, wrong version, wrong model)."""


@dataclass
class Checkpoint:
    round: int
    """The next round to run (rounds 0..round-1 are done)."""
    model: Model
    optimizer: Model = field(default_factory=dict)
    restarts: int = 0
    meta: dict = field(default_factory=dict)


def _pack_model(model: Model) -> list:
    spec, payload = encode_arrays(model)
    return [spec.to_layout(), payload]


def _unpack_model(item: object) -> Model:
    if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], bytes):
        raise CheckpointError("checkpoint model entry is malformed")
    spec = ModelSpec.from_layout(item[0])
    return {k: v.copy() for k, v in decode_arrays(item[1], spec).items()}


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Atomically persist ``ckpt``; refuses to move the on-disk round counter backwards."""
    path = Path(path)
    if path.exists():
        try:
            on_disk = peek_round(path)
        except CheckpointError:
            on_disk = None
        if on_disk is not None and ckpt.round < on_disk:
            raise CheckpointError(f"refusing to save round {ckpt.round} over round {on_disk}: rounds never go back")
    body = msgpack.packb({
        "round": int(ckpt.round), "restarts": int(ckpt.restarts), "meta": ckpt.meta,
        "model": _pack_model(ckpt.model), "optimizer": _pack_model(ckpt.optimizer),
    }, use_bin_type=True)
    blob = msgpack.packb({"v": FORMAT_VERSION, "sha256": hashlib.sha256(body).digest(), "body": body},
                         use_bin_type=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, blob)


def _read_body(path: Path) -> dict:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        outer = msgpack.unpackb(raw, raw=False, strict_map_key=True, **_LIMITS)
        if not isinstance(outer, dict) or outer.get("v") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has an unknown format version")
        body = outer["body"]
        if hashlib.sha256(body).digest() != outer["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
        data = msgpack.unpackb(body, raw=False, strict_map_key=True, **_LIMITS)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("round"), int):
        raise CheckpointError(f"checkpoint {path} is malformed")
    return data


def peek_round(path: Path) -> int:
    return int(_read_body(path)["round"])


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    if not Path(path).exists():
        return None
    data = _read_body(path)
    try:
        return Checkpoint(round=int(data["round"]), model=_unpack_model(data["model"]),
                          optimizer=_unpack_model(data["optimizer"]), restarts=int(data.get("restarts", 0)),
                          meta=dict(data.get("meta") or {}))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is malformed ({exc})") from None
