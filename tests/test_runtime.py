"""The node runtime over the in-memory transport: real trainer, real loop, checkpoints, resume."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fednode.gossip.transports.memory import MemoryHub, MemoryTransport
from fednode.node.checkpoint import load_checkpoint
from fednode.node.config import NodeConfig
from fednode.node.runtime import NodeRuntime
from fednode.security.identity import AllowList, Identity

trainer_mod = pytest.importorskip("fednode.node.trainer")


def _make(tmp_path, n, rounds, hub, idents, allow):
    task = trainer_mod.resolve_task("digits")
    runtimes = []
    for i in range(n):
        cfg = NodeConfig(federation="mem", state_dir=tmp_path / f"n{i}", rounds=rounds, node_index=i,
                         node_count=n, seed=0, t_hello=2.0, t_agg=2.0, t_commit=1.0, linger_s=1.0,
                         min_peers=n - 1, wait_peers_s=10)
        cfg.state_dir.mkdir(exist_ok=True)
        trainer = trainer_mod.Trainer(task, seed=0, node_index=i, node_count=n)

        def factory(ident=idents[i], **cb):
            return MemoryTransport(hub, ident.peer_id, **cb)

        runtimes.append(NodeRuntime(cfg, trainer=trainer, identity=idents[i], allow_list=allow,
                                    transport_factory=factory))
    return runtimes


def _run_all(runtimes, timeout=120):
    threads = [threading.Thread(target=rt.run, daemon=True) for rt in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a runtime did not finish"


def test_three_runtimes_learn_together_and_resume_from_checkpoints(tmp_path):
    n, rounds = 3, 6
    idents = [Identity.generate() for _ in range(n)]
    allow = AllowList()
    for ident in idents:
        allow.add(ident.public_key_bytes)
    hub = MemoryHub()
    try:
        runtimes = _make(tmp_path, n, rounds, hub, idents, allow)
        _run_all(runtimes)
        for i, rt in enumerate(runtimes):
            ckpt = load_checkpoint(tmp_path / f"n{i}" / "checkpoint.fnck")
            assert ckpt.round == rounds and ckpt.restarts == 0
            assert sum(1 for r in rt.history if r.outcome == "commit") >= rounds - 1
            assert rt.last_eval is not None and rt.last_eval[0] >= 0.85
        models = [load_checkpoint(tmp_path / f"n{i}" / "checkpoint.fnck").model for i in range(n)]
        spread = max(float(np.abs(models[0][k] - m[k]).max()) for m in models[1:] for k in m)
        assert spread < 0.5
        # a second run with more rounds resumes from the checkpoints: rounds go on from 6, never back
        runtimes2 = _make(tmp_path, n, rounds + 3, hub, idents, allow)
        _run_all(runtimes2)
        for i, rt in enumerate(runtimes2):
            ckpt = load_checkpoint(tmp_path / f"n{i}" / "checkpoint.fnck")
            assert ckpt.round == rounds + 3 and ckpt.restarts == 1
            recorded = [r.round for r in rt.history]
            assert recorded == sorted(set(recorded)) and recorded[:rounds] == list(range(rounds))
    finally:
        hub.close()


def test_a_lone_runtime_keeps_training(tmp_path):
    ident = Identity.generate()
    allow = AllowList()
    allow.add(ident.public_key_bytes)
    hub = MemoryHub()
    try:
        cfg = NodeConfig(federation="mem", state_dir=tmp_path / "solo", rounds=3, t_hello=1.0, t_agg=1.0,
                         t_commit=1.0, linger_s=0.1)
        cfg.state_dir.mkdir()
        trainer = trainer_mod.Trainer(trainer_mod.resolve_task("digits"), seed=0, node_index=0, node_count=1)
        rt = NodeRuntime(cfg, trainer=trainer, identity=ident, allow_list=allow,
                         transport_factory=lambda **cb: MemoryTransport(hub, ident.peer_id, **cb))
        t0 = time.time()
        rt.run()
        assert [r.outcome for r in rt.history] == ["alone"] * 3
        assert time.time() - t0 < 60
        assert load_checkpoint(cfg.checkpoint_path).round == 3
    finally:
        hub.close()


def test_trajectory_and_round_records_survive_a_torn_tail_and_a_restart(tmp_path):
    import os

    from fednode.node.trajectory import flatten, read_trajectory
    ident = Identity.generate()
    allow = AllowList()
    allow.add(ident.public_key_bytes)
    hub = MemoryHub()

    def run(rounds: int) -> NodeRuntime:
        cfg = NodeConfig(federation="mem", state_dir=tmp_path / "solo", rounds=rounds, t_hello=1.0, t_agg=1.0,
                         t_commit=1.0, linger_s=0.1, record_trajectory=True)
        cfg.state_dir.mkdir(exist_ok=True)
        trainer = trainer_mod.Trainer(trainer_mod.resolve_task("digits"), seed=0, node_index=0, node_count=1)
        rt = NodeRuntime(cfg, trainer=trainer, identity=ident, allow_list=allow,
                         transport_factory=lambda **cb: MemoryTransport(hub, ident.peer_id, **cb))
        rt.run()
        return rt

    try:
        rt = run(3)
        path = rt.config.trajectory_path
        assert sorted(read_trajectory(path)) == [0, 1, 2]
        assert all(r.t_end is not None and r.round_time_s > 0 and r.peers == () for r in rt.history)
        os.truncate(path, path.stat().st_size - 100)  # as if SIGKILLed while writing round 2
        assert sorted(read_trajectory(path)) == [0, 1]
        rt = run(5)
        got = read_trajectory(path)
        assert sorted(got) == [0, 1, 3, 4]  # round 2 was torn; the restart resumed after its checkpoint
        assert np.array_equal(got[4], flatten(load_checkpoint(rt.config.checkpoint_path).model))
        assert [r.round for r in rt.history] == [0, 1, 2, 3, 4] and rt.history[0].t_end < rt.history[-1].t_end
    finally:
        hub.close()
