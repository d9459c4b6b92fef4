"""Parallel runs of the simulator: the nodes split over worker processes, one core each.

A :class:`~fednode.testnet.simulator.Simulator` is built as usual, then ``run_parallel(sim, workers)``
forks ``workers - 1`` copies of it; worker w owns the nodes ``i % workers == w`` and runs only
their events. Every machine, message and receive check is the serial simulator's own; what a node
sends to a node of another worker crosses in that window's batch (:mod:`fednode.testnet.batches`:
shared memory, payloads read in place).

Conservative time windows (classic parallel discrete-event simulation): no message arrives sooner
than ``NetworkConditions.delay`` after it was sent (the lookahead L), so when every worker has
processed its events before T + L, with T the earliest pending event anywhere, no message still to
come can land in that window. Each worker then sends what it produced for the others, everyone
learns the new T, and the next window starts. A window is one pipe round trip between workers.

Inside a window the nodes do not interact (what one sends lands in a later window), so a worker runs
its window node by node, in index order, each node's events in time order: a node's state is brought
into the cache once per window instead of once per event (about 3.4 events per node and window at
1,000 nodes). What a node schedules for itself inside the window (a timer, a local step's end) joins
its own events there. At 1,000 x 30 this took 9-11 % off the CPU time of the event-by-event order
(two series of three interleaved pairs).

Same seed and worker count, same run. It is not the serial run's event order (node by node, and the
delay draws come from one generator per worker), so with loss or timeouts the models differ from a
serial run; on a lossless network whose timeouts never fire every round uses every edge, and the
models are the serial run's bit for bit (tests/test_simulator_parallel.py). Late joiners and crashes are refused:
their liveliness news would cross workers with a lookahead of their own, and the runs that need
speed (benchmarks/bench_simulator.py) have neither.

``on_round_end`` runs in the worker that owns the node. A hook that must see every node implements
:class:`PartialHook`: each child worker's ``export_partial()`` bytes reach the parent's
``merge_partial`` after the run. A hook that can defer its work implements :class:`IdleWork`: a
worker waiting at a barrier for the others calls its ``idle()`` until their record arrives. Afterwards
the parent's ``Simulator`` holds every node's final model, round ends, starts, adoptions and state,
and the message counters summed over workers.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import signal
import struct
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import heapq
import msgpack
import numpy as np

from fednode.testnet.batches import Batches, shared_regions
from fednode.testnet.simulator import Simulator, gc_paused

_CONTROL = struct.Struct("<qdBbqqQ")
"""Window number, the sender's earliest pending event time, done flag, the slot the batch is in (-1: in
a file), bytes of the batch's message table, bytes of the whole batch (0: nothing sent), and the slots
of the reverse direction this worker has released (bit s: slot s)."""
_INF = math.inf


@runtime_checkable
class PartialHook(Protocol):
    """An ``on_round_end`` hook whose per-worker state can be combined after a parallel run."""

    def export_partial(self) -> bytes:
        """This worker's state (called in every child worker after its run)."""

    def merge_partial(self, blob: bytes) -> None:
        """Fold a child worker's exported state into this (the parent's) hook."""


@runtime_checkable
class IdleWork(Protocol):
    """An ``on_round_end`` hook with deferred work that a worker does while it waits at a window barrier
    (the wait for the other workers is otherwise idle time: 3-9 s per worker at 1,000 x 100)."""

    def idle(self) -> bool:
        """Do a little of the deferred work (tens of microseconds); False when nothing is left to do."""


@dataclass
class ParallelStats:
    """Where a parallel run's time went, per worker (index = worker); ``Simulator.parallel_stats``."""

    windows: int
    events: list[int]
    busy_s: list[float]
    """Wall seconds spent processing events."""
    exchange_s: list[float]
    """Wall seconds at the window barriers: writing and reading the batches, waiting for slower workers."""
    idle_work_s: list[float]
    """Of ``exchange_s``, the seconds spent on an :class:`IdleWork` hook's deferred work while waiting."""
    batches_in_files: list[int]
    """Batches sent through a file (larger than a slot, or every slot still held) instead of shared memory."""


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message carries its traceback when it had one."""


def run_parallel(sim: Simulator, workers: int = 2, *, until: float | None = None,
                 max_events: int = 50_000_000, exchange_dir: str | None = None) -> None:
    """Run ``sim`` to its end (or ``until`` seconds of virtual time) on ``workers`` processes.

    The workers are forked (``os.fork``), so the nodes' local steps must not use JAX or other
    threaded runtimes: a forked child inherits their locks but not their threads. The simulator's
    steps are numpy functions; JAX's own warning on fork also appears when JAX was loaded in the
    same process (a test session that ran the trainer's tests) and is harmless while the workers
    do not call it.
    """
    if workers < 2:
        raise ValueError("run_parallel needs at least 2 workers (use Simulator.run for one)")
    if workers > len(sim.nodes):
        raise ValueError(f"{workers} workers for {len(sim.nodes)} nodes")
    if sim.crash_at or sim.late_at:
        raise ValueError("parallel runs take no crashes or late joiners (their liveliness news would cross workers)")
    lookahead = sim.conditions.delay
    if not lookahead > 0:
        raise ValueError("parallel runs need NetworkConditions.delay > 0: it is the lookahead between workers")
    if sim.now != sim.start_time:
        raise ValueError("the simulator has run already")
    base = Path(exchange_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()))
    workdir = Path(tempfile.mkdtemp(prefix="fednode-sim-", dir=base))
    pipes = {(a, b): os.pipe() for a in range(workers) for b in range(workers) if a != b}
    shared = shared_regions(list(pipes))
    children: dict[int, int] = {}
    try:
        for w in range(1, workers):
            pid = os.fork()
            if pid == 0:  # the child never returns into the caller's code
                code = 1
                try:
                    _keep_own_fds(pipes, w)
                    worker = _Worker(sim, w, workers, pipes, shared, workdir, lookahead)
                    worker.run(until, max_events)
                    (workdir / f"result-{w}").write_bytes(_export_results(sim, worker))
                    code = 0
                except BaseException:  # noqa: BLE001 - reported to the parent through the file
                    (workdir / f"error-{w}").write_text(traceback.format_exc())
                finally:
                    os._exit(code)
            children[w] = pid
        _keep_own_fds(pipes, 0)
        own = _Worker(sim, 0, workers, pipes, shared, workdir, lookahead)
        try:
            own.run(until, max_events)
        except _PeerGone as exc:
            raise WorkerFailed(_child_error(workdir, exc.worker)) from None
        for w, pid in list(children.items()):
            _, status = os.waitpid(pid, 0)
            del children[w]
            if os.waitstatus_to_exitcode(status) != 0:
                raise WorkerFailed(_child_error(workdir, w))
        stats = ParallelStats(own.window, [own.events], [own.busy_s], [own.exchange_s], [own.idle_work_s],
                              [own.batches.in_files])
        for w in range(1, workers):
            _merge_results(sim, msgpack.unpackb((workdir / f"result-{w}").read_bytes(), raw=False,
                                                strict_map_key=False), stats)
        sim.parallel_stats = stats
    finally:
        for hook in ("_arrive", "_schedule"):  # the worker's hooks: no sim <-> worker cycle is left behind
            vars(sim).pop(hook, None)
        for pid in children.values():  # only on failure: the children we forked, by PID
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for fds in pipes.values():
            for fd in fds:
                _close(fd)
        for region in shared.values():
            try:
                region.close()
            except BufferError:  # a view still held by a traceback: freed with it
                pass
        shutil.rmtree(workdir, ignore_errors=True)


class _PeerGone(Exception):
    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.worker = worker


def _child_error(workdir: Path, w: int) -> str:
    err = workdir / f"error-{w}"
    return f"simulator worker {w} failed:\n" + (err.read_text() if err.exists() else "(it died without a traceback)")


def _keep_own_fds(pipes: dict[tuple[int, int], tuple[int, int]], me: int) -> None:
    """Close every pipe end this worker does not use, so that a dead worker is an EOF, not a hang."""
    for (a, b), (r, w) in pipes.items():
        if b != me:
            _close(r)
        if a != me:
            _close(w)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _Worker:
    """One worker's share of the run: its nodes' events, window by window."""

    def __init__(self, sim: Simulator, me: int, workers: int, pipes: dict, shared: dict, workdir: Path,
                 lookahead: float) -> None:
        self.sim, self.me, self.workers, self.lookahead = sim, me, workers, lookahead
        self.pipes = pipes
        self.batches = Batches(me, workers, shared, workdir)
        self.owner = [i % workers for i in range(len(sim.nodes))]
        self.outbound: list[list] = [[] for _ in range(workers)]
        self.window = 0
        self.events, self.busy_s, self.exchange_s, self.idle_work_s = 0, 0.0, 0.0, 0.0  # ParallelStats
        hook = sim.on_round_end
        self.idle = hook.idle if isinstance(hook, IdleWork) else None
        # every worker's copy of the generator is in the same state: one draw, then one stream per worker
        sim.rng = np.random.default_rng([int(sim.rng.integers(2**63)), me, workers])
        own = [(at, seq, idx, item) for at, seq, idx, item in sim._other if self.owner[idx] == me]
        heapq.heapify(own)
        sim._other, sim._queue = own, []
        sim._unstarted = sum(1 for i in range(len(sim.nodes)) if self.owner[i] == me)
        sim._alive_unfinished = 0
        # instance attributes: the simulator's deliveries go through the partition, and what a node
        # schedules for itself inside the window being run joins that node's own events
        sim._arrive, sim._schedule = self._arrive, self._schedule
        self._node, self._bound, self._own = -1, -_INF, []

    def _arrive(self, at: float, target: int, data: Any) -> None:
        dest = self.owner[target]
        if dest == self.me:
            heapq.heappush(self.sim._queue, (at, next(self.sim._seq), target, ("msg", data)))
        else:
            self.outbound[dest].append((at, target, data))

    def _schedule(self, at: float, node: int, item: object) -> None:
        """``Simulator._schedule`` for this worker: an event (a timer, a local step's end) that the node being
        run schedules for itself before the window's end goes among its own events still to run there."""
        if node == self._node and at < self._bound:
            heapq.heappush(self._own, (at, next(self.sim._seq), node, item))
        else:
            heapq.heappush(self.sim._other, (at, next(self.sim._seq), node, item))

    def run(self, until: float | None, max_events: int) -> None:
        with gc_paused():  # as Simulator.run: nothing per event forms a cycle
            self._run(until, max_events)

    def _run(self, until: float | None, max_events: int) -> None:
        sim = self.sim
        limit = _INF if until is None else sim.start_time + until
        budget = max_events
        horizon = self._exchange()  # the earliest event anywhere (everyone's start events)
        clock, pop, step = time.perf_counter, heapq.heappop, sim._step
        while horizon is not None and horizon <= limit:
            started = clock()
            bound = min(horizon + self.lookahead, math.nextafter(limit, _INF))
            q, o = sim._queue, sim._other
            by_node: dict[int, list] = {}
            while True:  # Simulator._pop, inlined: the earlier head of the two heaps, if before the bound
                heap = o if o and (not q or o[0] < q[0]) else q
                if not heap or heap[0][0] >= bound:
                    break
                event = pop(heap)
                events = by_node.get(event[2])
                if events is None:
                    by_node[event[2]] = [event]
                else:
                    events.append(event)  # popped in (time, sequence) order: the list is a heap already
            self._bound = bound
            for idx in sorted(by_node):  # node by node (see the module docstring): its state stays in cache
                events = self._own = by_node[idx]
                self._node = idx
                while events:
                    budget -= 1
                    if budget < 0:
                        raise RuntimeError("simulation did not finish within max_events")
                    at, _, _, item = pop(events)
                    sim.now = at
                    step(idx, item)
            self._node = -1
            exchanging = clock()
            horizon = self._exchange()
            self.busy_s += exchanging - started
            self.exchange_s += clock() - exchanging
        self.events = max_events - budget

    def _exchange(self) -> float | None:
        """Send this window's cross-worker messages, receive the others'; the next horizon, None when done."""
        sim, me, k = self.sim, self.me, self.window
        q, o = sim._queue, sim._other
        earliest = min(q[0][0] if q else _INF, o[0][0] if o else _INF)
        sent = {}
        for dest in range(self.workers):
            batch = self.outbound[dest]
            if dest == me or not batch:
                sent[dest] = (0, 0, 0)
                continue
            earliest = min(earliest, min(m[0] for m in batch))
            sent[dest] = self.batches.send(dest, k, batch)
            batch.clear()
        done = sim._all_done()
        for dest in range(self.workers):
            if dest != me:
                os.write(self.pipes[(me, dest)][1], _CONTROL.pack(k, earliest, done, *sent[dest],
                                                                  self.batches.released(dest)))
        horizons, all_done = [earliest], done
        for src in range(self.workers):
            if src == me:
                continue
            fd = self.pipes[(src, me)][0]
            if self.idle is not None:
                self._idle_until_readable(fd)
            record = _read_exactly(fd, _CONTROL.size, src)
            window, their_earliest, their_done, slot, table_len, total, released = _CONTROL.unpack(record)
            if window != k:
                raise RuntimeError(f"worker {src} is at window {window}, this one at {k}")
            horizons.append(their_earliest)
            all_done = all_done and bool(their_done)
            self.batches.note_released(src, released, k)
            if total:
                self.batches.receive(src, k, slot, table_len, total, sim._queue, sim._seq)
        self.window += 1
        horizon = min(horizons)
        return None if all_done or horizon == _INF else horizon

    def _idle_until_readable(self, fd: int) -> None:
        """The hook's deferred work, a piece at a time, until the other worker's record is there (or none is left)."""
        clock, idle, started = time.perf_counter, self.idle, time.perf_counter()
        ready = select.poll()  # not select(): that refuses descriptors beyond FD_SETSIZE
        ready.register(fd, select.POLLIN)
        try:
            while not ready.poll(0) and idle():  # type: ignore[misc]
                pass
        finally:
            self.idle_work_s += clock() - started


def _read_exactly(fd: int, n: int, src: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise _PeerGone(src)
        out += chunk
    return out


def _export_results(sim: Simulator, worker: _Worker) -> bytes:
    """What the parent needs of this worker's nodes, the hook's partial state and the worker's stats."""
    nodes = []
    for rec in sim.nodes:
        if worker.owner[rec.index] != worker.me:
            continue
        model = rec.machine.model
        nodes.append({
            "index": rec.index, "alive": rec.alive, "finished": rec.finished, "started_at": rec.started_at,
            "round_ends": rec.round_ends, "round_starts": list(rec.round_starts.items()), "adopted": rec.adopted,
            "model": [(name, str(a.dtype), list(a.shape), np.ascontiguousarray(a).tobytes())
                      for name, a in model.items()],
        })
    kept = [(r, i, v.tobytes()) for r, by_node in sim.models_by_round.items() for i, v in by_node.items()]
    hook = sim.on_round_end
    partial = hook.export_partial() if isinstance(hook, PartialHook) else None
    return msgpack.packb({"nodes": nodes, "sent": sim.messages_sent, "dropped": sim.messages_dropped,
                          "kept": kept, "partial": partial,
                          "stats": [worker.events, worker.busy_s, worker.exchange_s, worker.idle_work_s,
                                    worker.batches.in_files]},
                         use_bin_type=True)


def _merge_results(sim: Simulator, res: dict, stats: ParallelStats) -> None:
    for node in res["nodes"]:
        rec = sim.nodes[node["index"]]
        rec.alive, rec.finished, rec.started_at = node["alive"], node["finished"], node["started_at"]
        rec.round_ends = [tuple(x) for x in node["round_ends"]]
        rec.round_starts = {r: t for r, t in node["round_starts"]}
        rec.adopted = [tuple(x) for x in node["adopted"]]
        rec.machine.model = {name: np.frombuffer(raw, dtype=np.dtype(dt)).reshape(shape).copy()
                             for name, dt, shape, raw in node["model"]}
    sim.messages_sent += res["sent"]
    sim.messages_dropped += res["dropped"]
    for r, i, raw in res["kept"]:
        sim.models_by_round.setdefault(r, {})[i] = np.frombuffer(raw, dtype=np.float64).copy()
    if res["partial"] is not None:
        sim.on_round_end.merge_partial(res["partial"])  # type: ignore[union-attr]
    events, busy, exchange, idle_work, in_files = res["stats"]
    stats.events.append(events)
    stats.busy_s.append(busy)
    stats.exchange_s.append(exchange)
    stats.idle_work_s.append(idle_work)
    stats.batches_in_files.append(in_files)


__all__ = ["IdleWork", "ParallelStats", "PartialHook", "WorkerFailed", "run_parallel"]
