"""The simulator's parallel runs (fednode/testnet/parallel.py): the serial run's models on a lossless
network, deterministic on a lossy one, hooks merged, failures reported, nothing left behind."""

from __future__ import annotations

import hashlib
import math
import os
import time

import msgpack
import numpy as np
import pytest

from fednode.gossip.config import RoundConfig
from fednode.gossip.round import GossipNode
from fednode.testnet import batches, parallel
from fednode.testnet.parallel import WorkerFailed, run_parallel
from fednode.testnet.simulator import NetworkConditions, Simulator

# JAX warns on every fork once it is imported (other test modules import it); the steps here are
# numpy functions, so no JAX thread or lock is involved in the forked workers (run_parallel's docstring).
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")


class _CountingHook:
    """Counts reports per round and sums the models (a PartialHook)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.sums: dict[int, np.ndarray] = {}

    def __call__(self, round: int, index: int, label: str, model: dict) -> None:
        self.counts[round] = self.counts.get(round, 0) + 1
        self.sums[round] = self.sums.get(round, 0) + np.asarray(model["w"], dtype=np.float64)

    def export_partial(self) -> bytes:
        return msgpack.packb([[r, c, self.sums[r].tobytes()] for r, c in self.counts.items()])

    def merge_partial(self, blob: bytes) -> None:
        for r, c, raw in msgpack.unpackb(blob):
            self.counts[r] = self.counts.get(r, 0) + c
            self.sums[r] = self.sums.get(r, 0) + np.frombuffer(raw)


def _sim(n: int = 13, rounds: int = 6, conditions: NetworkConditions = NetworkConditions(), step=None,
         train_time: float = 0.05, **kw) -> Simulator:
    rng = np.random.default_rng(11)
    X0 = rng.normal(size=(n, 9))
    targets = rng.normal(size=(n, 9))
    if step is None:
        def step(i: int, model: dict) -> dict:
            return {k: v + 0.25 * (targets[i] - v) for k, v in model.items()}
    cfg = RoundConfig(federation="par", max_rounds=rounds, degree=4, t_hello=2.0, t_agg=1.0, t_commit=1.0)
    return Simulator(n, config=cfg, initial_models=[{"w": X0[i].copy()} for i in range(n)], local_step=step,
                     conditions=conditions, seed=4, train_time=train_time, signed=kw.pop("signed", False), **kw)


def _digest(sim: Simulator) -> list[str]:
    return [f"{len(rec.round_ends)}:{hashlib.sha256(rec.machine.model['w'].tobytes()).hexdigest()}"
            for rec in sim.nodes]


@pytest.mark.parametrize("workers", [2, 3])
def test_lossless_parallel_run_gives_the_serial_models_bit_for_bit(workers: int) -> None:
    serial, parallel = _sim(), _sim()
    serial.run()
    run_parallel(parallel, workers)
    assert _digest(parallel) == _digest(serial)
    assert [[(r, lab) for r, _, lab in rec.round_ends] for rec in parallel.nodes] == \
           [[(r, lab) for r, _, lab in rec.round_ends] for rec in serial.nodes]
    assert all(rec.finished and rec.alive for rec in parallel.nodes)
    assert parallel.messages_sent == serial.messages_sent
    stats = parallel.parallel_stats
    assert stats.windows > 6 and len(stats.events) == len(stats.busy_s) == len(stats.exchange_s) == workers
    assert all(e > 0 for e in stats.events)
    assert {r: set(v) for r, v in parallel.models_by_round.items()} == \
           {r: set(v) for r, v in serial.models_by_round.items()}
    for r, by_node in serial.models_by_round.items():
        for i, vec in by_node.items():
            assert np.array_equal(parallel.models_by_round[r][i], vec)


def test_a_node_runs_its_events_of_a_window_in_time_order(monkeypatch) -> None:
    """A worker runs a window node by node. What a node schedules for itself inside the window (here the end
    of its 2 ms local step, inside the 10 ms window) must still run before its later events there (messages
    delayed 10-30 ms arrive all over the window): every machine sees time go forward only (checked in
    every worker; a worker that sees it go back fails)."""
    last: dict[int, float] = {}

    def forward(machine: GossipNode, now: float) -> None:
        if now < last.get(id(machine), -math.inf):
            raise AssertionError(f"a machine got an event at {now} after one at {last[id(machine)]}")
        last[id(machine)] = now

    real_receive, real_handle, real_schedule = GossipNode.receive, GossipNode.handle, parallel._Worker._schedule
    before_others = []

    def schedule(worker, at: float, node: int, item: object) -> None:
        if node == worker._node and at < worker._bound and any(e[0] > at for e in worker._own):
            before_others.append(at)  # the node has later events in this window: the case in question
        real_schedule(worker, at, node, item)

    monkeypatch.setattr(GossipNode, "receive", lambda m, data, now: (forward(m, now), real_receive(m, data, now))[1])
    monkeypatch.setattr(GossipNode, "handle", lambda m, event: (forward(m, event.now), real_handle(m, event))[1])
    monkeypatch.setattr(parallel._Worker, "_schedule", schedule)
    jittery = NetworkConditions(delay=0.01, jitter=0.02)
    serial, par = _sim(conditions=jittery, train_time=0.002), _sim(conditions=jittery, train_time=0.002)
    serial.run()
    run_parallel(par, 2)
    assert before_others  # the case happened (seen in this process's worker alone)
    assert _digest(par) == _digest(serial)  # lossless, no timeout fires: the serial run's models


def test_batches_too_large_for_shared_memory_go_through_files(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(batches, "SLOT_BYTES", 256)  # every batch with a payload is larger
    serial, par = _sim(rounds=3), _sim(rounds=3)
    serial.run()
    run_parallel(par, 2, exchange_dir=str(tmp_path))
    assert _digest(par) == _digest(serial)
    assert list(tmp_path.iterdir()) == []
    assert all(n > 0 for n in par.parallel_stats.batches_in_files)


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_payloads_read_in_place_are_never_overwritten_while_held(monkeypatch, tmp_path, slots: int) -> None:
    """Few slots: a slot whose payloads a node still holds (contributions live about two rounds) must not
    be written again; the batch then goes through a file. Any payload overwritten while held would
    change the models, which must stay the serial run's bit for bit."""
    monkeypatch.setattr(batches, "SLOTS", slots)
    serial, par = _sim(n=16, rounds=8), _sim(n=16, rounds=8)
    serial.run()
    run_parallel(par, 2, exchange_dir=str(tmp_path))
    assert _digest(par) == _digest(serial)
    in_files = par.parallel_stats.batches_in_files
    assert all(n > 0 for n in in_files)  # slots were held when the next batches came
    assert sum(in_files) < 2 * par.parallel_stats.windows  # and others were free: both paths ran
    assert list(tmp_path.iterdir()) == []


def test_signed_envelopes_cross_workers_as_bytes() -> None:
    serial, parallel = _sim(n=8, rounds=3, signed=True), _sim(n=8, rounds=3, signed=True)
    serial.run()
    run_parallel(parallel, 2)
    assert _digest(parallel) == _digest(serial)


def test_lossy_parallel_run_is_deterministic_and_finishes() -> None:
    lossy = NetworkConditions(loss=0.1, duplicate=0.05, reorder=0.1, jitter=0.02)
    a, b = _sim(conditions=lossy), _sim(conditions=lossy)
    run_parallel(a, 2)
    run_parallel(b, 2)
    assert _digest(a) == _digest(b)
    assert a.messages_dropped > 0 and a.messages_dropped == b.messages_dropped
    assert all(rec.finished for rec in a.nodes)
    assert sum(rec.machine.stats.rejects.get("replay_nonce", 0) for rec in a.nodes if rec.index % 2 == 0) > 0  # duplicates


def test_partial_hooks_of_the_workers_are_merged() -> None:
    hook, ref = _CountingHook(), _CountingHook()
    sim, serial = _sim(on_round_end=hook), _sim(on_round_end=ref)
    run_parallel(sim, 3)
    serial.run()
    assert hook.counts == ref.counts == {r: 13 for r in range(6)}
    for r in ref.sums:
        assert np.allclose(hook.sums[r], ref.sums[r], rtol=0, atol=1e-12)


def test_until_stops_every_worker_at_the_same_virtual_time() -> None:
    sim = _sim(rounds=50)
    run_parallel(sim, 2, until=0.5)
    ends = [t for rec in sim.nodes for _, t, _ in rec.round_ends]
    assert ends and max(ends) <= sim.start_time + 0.5
    assert not any(rec.finished for rec in sim.nodes)


def test_what_parallel_runs_refuse() -> None:
    with pytest.raises(ValueError, match="crashes or late joiners"):
        run_parallel(_sim(crashes={1: 0.3}), 2)
    with pytest.raises(ValueError, match="crashes or late joiners"):
        run_parallel(_sim(late_joiners={2: 0.3}), 2)
    with pytest.raises(ValueError, match="lookahead"):
        run_parallel(_sim(conditions=NetworkConditions(delay=0.0)), 2)
    with pytest.raises(ValueError, match="at least 2"):
        run_parallel(_sim(), 1)
    sim = _sim(rounds=1)
    sim.run()
    with pytest.raises(ValueError, match="has run already"):
        run_parallel(sim, 2)


def test_a_failing_worker_is_reported_and_nothing_is_left_behind(tmp_path) -> None:
    def step(i: int, model: dict) -> dict:
        if i == 5 and os.getpid() != parent:  # node 5 lives in worker 1 (5 % 2), a child process
            raise ArithmeticError("local step of node 5 failed")
        return model

    parent = os.getpid()
    before = _children()
    with pytest.raises(WorkerFailed, match="ArithmeticError: local step of node 5 failed"):
        run_parallel(_sim(step=step), 2, exchange_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert _children() <= before  # the forked worker is gone and reaped (no zombie either)


def _children() -> set[int]:
    """PIDs of this process's children, zombies included (from /proc)."""
    me, out = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    if any(line.split()[1:] == [me] for line in f if line.startswith("PPid:")):
                        out.add(int(entry))
            except OSError:
                pass
    return out


class _DeferringHook(_CountingHook):
    """Sums nothing when called: the reports wait for ``idle()`` (an IdleWork hook), or for the export."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list = []
        self.idle_calls = 0

    def __call__(self, round: int, index: int, label: str, model: dict) -> None:
        self.pending.append((round, index, label, model))

    def idle(self) -> bool:
        self.idle_calls += 1
        if not self.pending:
            return False
        super().__call__(*self.pending.pop(0))
        return True

    def export_partial(self) -> bytes:
        while self.idle():
            pass
        return super().export_partial()


def test_idle_work_is_done_while_workers_wait_and_nothing_is_lost() -> None:
    def step(i: int, model: dict) -> dict:
        if i % 2 and os.getpid() != parent:  # worker 1 lags, so this process (worker 0) waits at its barriers
            time.sleep(0.002)
        return {k: 0.5 * v for k, v in model.items()}

    parent = os.getpid()
    hook, ref = _DeferringHook(), _CountingHook()
    sim, serial = _sim(on_round_end=hook, step=step), _sim(on_round_end=ref, step=step)
    run_parallel(sim, 2)
    serial.run()
    assert isinstance(hook, parallel.IdleWork) and hook.idle_calls > 0
    assert sim.parallel_stats.idle_work_s[0] > 0
    hook.export_partial()  # the parent's own leftovers
    assert hook.counts == ref.counts == {r: 13 for r in range(6)}
    for r in ref.sums:
        assert np.allclose(hook.sums[r], ref.sums[r], rtol=0, atol=1e-12)
