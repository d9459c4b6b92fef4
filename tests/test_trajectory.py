"""The per-round model trajectory file and the round history: round trips, a torn tail, a restart."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fednode.node.history import RoundRecord, expand_history, history_from_json, history_to_json
from fednode.node.trajectory import TrajectoryError, TrajectoryWriter, flatten, read_trajectory
from fednode.testnet.series import disagreement, federation_series


def _model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}


def test_records_round_trip_in_model_spec_order(tmp_path):
    path = tmp_path / "trajectory.bin"
    w = TrajectoryWriter(path, 17)
    for r in range(3):
        w.append(r, _model(r))
    w.close()
    got = read_trajectory(path)
    assert sorted(got) == [0, 1, 2]
    m = _model(1)
    assert np.array_equal(got[1], np.concatenate([m["b"], m["w"].ravel()]))  # sorted names: b, w
    assert np.array_equal(got[2], flatten(_model(2)))


def test_a_torn_last_record_is_skipped_and_a_restart_truncates_it(tmp_path):
    path = tmp_path / "trajectory.bin"
    w = TrajectoryWriter(path, 17)
    w.append(0, _model(0))
    w.append(1, _model(1))
    w.close()
    full = path.stat().st_size
    os.truncate(path, full - 9)  # SIGKILL in the middle of the second record
    assert sorted(read_trajectory(path)) == [0]
    # a corrupt (not just short) tail is also refused: flip one byte of the last record's values
    w = TrajectoryWriter(path, 17)  # the restart cuts the torn tail ...
    record = (full - 12) // 2  # header 12 bytes, then two records
    assert path.stat().st_size == 12 + record
    w.append(1, _model(11))  # ... and redoes round 1 after its checkpoint
    w.append(2, _model(2))
    w.close()
    got = read_trajectory(path)
    assert sorted(got) == [0, 1, 2] and np.array_equal(got[1], flatten(_model(11)))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert sorted(read_trajectory(path)) == [0, 1]


def test_a_later_record_for_the_same_round_wins_and_other_files_are_refused(tmp_path):
    path = tmp_path / "trajectory.bin"
    w = TrajectoryWriter(path, 17)
    w.append(4, _model(0))
    w.append(4, _model(1))
    w.close()
    assert np.array_equal(read_trajectory(path)[4], flatten(_model(1)))
    with pytest.raises(TrajectoryError):
        TrajectoryWriter(path, 17).append(5, {"x": np.zeros(3, np.float32)})
    (tmp_path / "junk.bin").write_bytes(b"not a trajectory at all")
    with pytest.raises(TrajectoryError):
        read_trajectory(tmp_path / "junk.bin")
    w = TrajectoryWriter(path, 5)  # another model size (task changed): the file starts over
    w.append(0, {"x": np.ones(5, np.float32)})
    w.close()
    assert list(read_trajectory(path)) == [0]


def test_history_json_keeps_full_peer_ids_compactly():
    a, b = b"\x01" * 32, b"\x02" * 32
    recs = [RoundRecord(0, "commit", 0.5, 1.0, 2, t_end=100.0, round_time_s=0.5, bytes_sent=10,
                        bytes_received=20, peers=(a, b)),
            RoundRecord(1, "alone", 0.6, 0.9, 0, t_end=101.0, round_time_s=0.4, bytes_sent=15, bytes_received=25),
            RoundRecord(2, "commit", None, None, 1, t_end=102.0, round_time_s=0.3, bytes_sent=30,
                        bytes_received=40, peers=(b,))]
    items, table = history_to_json(recs)
    assert table == [a.hex(), b.hex()] and items[2]["peers"] == [1] and items[0]["neighbours"] == 2
    assert history_from_json(items, table) == [RoundRecord(**{**r.__dict__, "timings": {}}) for r in recs]
    assert [h["peers"] for h in expand_history({"history": items, "history_peers": table})] == \
        [[a.hex(), b.hex()], [], [b.hex()]]
    old = history_from_json([{"round": 3, "outcome": "commit", "accuracy": 0.9, "loss": 0.1, "neighbours": 1}], None)
    assert old[0].t_end is None and old[0].peers == ()


def test_series_disagreement_is_measured_over_the_nodes_that_have_the_round():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    trajectories = [{0: x, 1: x}, {0: x + 2, 1: x}, {0: x - 2}]
    per_node = [[{"round": 0, "t_s": 1.0, "accuracy": 0.5, "loss": 1.0, "bytes_sent": 5, "round_time_s": 1.0}],
                [{"round": 0, "t_s": 3.0, "accuracy": 0.7, "loss": 2.0, "bytes_sent": 7, "round_time_s": 2.0}],
                []]
    s = federation_series(per_node, trajectories)
    assert s["round"] == [0, 1] and s["nodes"] == [2, 0]
    assert s["consensus_disagreement"][0] == pytest.approx(np.sqrt(3 * 4 + 3 * 4))
    assert s["consensus_disagreement"][1] == 0.0
    assert s["accuracy_min"] == [0.5, None] and s["accuracy_median"][0] == pytest.approx(0.6)
    assert s["bytes_sent_total"] == [12, None] and s["t_s"] == [2.0, None]
    d, rel = disagreement([x, x + 2, x - 2])
    assert rel == pytest.approx(d / (np.linalg.norm(x) * np.sqrt(3)))
