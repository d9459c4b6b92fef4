"""Crash-safe checkpoints: atomic replace, corruption detection, rounds never go back."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fednode.node.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def _ckpt(r: int) -> Checkpoint:
    return Checkpoint(round=r, model={"w": np.arange(6, dtype=np.float32).reshape(2, 3) * r,
                                      "b": np.ones(3, dtype=np.float32)},
                      optimizer={"step": np.array([r], dtype=np.int64)}, restarts=2, meta={"task": "digits"})


def test_round_trip_and_mode(tmp_path):
    p = tmp_path / "c.fnck"
    save_checkpoint(p, _ckpt(5))
    got = load_checkpoint(p)
    assert got.round == 5 and got.restarts == 2 and got.meta["task"] == "digits"
    assert np.array_equal(got.model["w"], _ckpt(5).model["w"]) and got.model["w"].dtype == np.float32
    assert np.array_equal(got.optimizer["step"], [5])
    assert (os.stat(p).st_mode & 0o777) == 0o600
    assert load_checkpoint(tmp_path / "absent") is None


def test_rounds_never_go_backwards(tmp_path):
    p = tmp_path / "c.fnck"
    save_checkpoint(p, _ckpt(7))
    with pytest.raises(CheckpointError, match="never go back"):
        save_checkpoint(p, _ckpt(6))
    save_checkpoint(p, _ckpt(7))
    save_checkpoint(p, _ckpt(8))
    assert load_checkpoint(p).round == 8


def test_corruption_is_detected_with_a_clear_message(tmp_path):
    p = tmp_path / "c.fnck"
    save_checkpoint(p, _ckpt(3))
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_no_temporary_files_left_behind(tmp_path):
    p = tmp_path / "c.fnck"
    for r in range(5):
        save_checkpoint(p, _ckpt(r))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.fnck"]
