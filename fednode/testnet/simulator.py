"""Deterministic discrete-event simulator of a federation of :class:`GossipNode` state machines.

A seeded virtual clock drives N real state machines (real Ed25519 signatures, real
envelopes, real verification) over a simulated network with injectable delay, loss,
duplication, reordering, node crashes and late joins. Local training is a cheap
callable (for example :class:`fednode.testnet.problems.LeastSquares`), so hundreds of
nodes run in seconds. Same seed, same run: every random choice comes from one
``numpy.random.Generator`` and event ties break by insertion order.

Fast mode (``signed=False``) gives every machine the :data:`~fednode.security.codec.LOCAL`
envelope codec: the same messages, round machine and receive checks (round window, timestamp,
replay, duplicate, layout, finiteness, ...), minus the Ed25519 signature and the payload's
SHA-256, and the envelope is handed over as its parsed header and payload views rather than
bytes (no packing, framing or parsing per message): those were most of the cost at 1,000 nodes. Being
deterministic, a seeded run gives the same models in both modes (tests/test_simulator_fast.py).
Plaintext rounds only: secure aggregation needs signed HELLOs. ``on_round_end`` receives every
commit/abort model instead of (or besides) ``keep_models``, so a large run need not keep all of
them (1,000 nodes x 100 rounds x 80 KB is 8 GB).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fednode.gossip.config import RoundConfig
from fednode.gossip.events import (Abort, AdoptModel, Broadcast, Commit, Finished, LocalStepDone,
                                   PeerJoined, PeerLeft, Send, SetTimer, StartLocalStep, TimerFired)
from fednode.gossip.overlay import Overlay, RandomRegularOverlay
from fednode.gossip.round import GossipNode
from fednode.security.arrays import Model, ModelSpec
from fednode.security.codec import LOCAL, SIGNED
from fednode.security.identity import AllowList, Identity

LocalStep = Callable[[int, Model], Model]
"""(node index, x^r) -> x^{r+1/2}."""
RoundEnd = Callable[[int, int, str, Model], None]
"""(round, node index, "commit" or abort reason, model x^{r+1})."""


class _NonceStream:
    """``rng.bytes`` served from 4 KiB blocks: the same bytes as one ``rng.bytes(k)`` call per
    request for any k that is a multiple of 8 (the machine asks for 16), at a fraction of the cost."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf = b""
        self._pos = 0

    def __call__(self, k: int) -> bytes:
        if k % 8:
            raise ValueError("the simulator's nonce stream serves multiples of 8 bytes")
        if self._pos + k > len(self._buf):
            self._buf = self._buf[self._pos:] + self._rng.bytes(max(4096, k))
            self._pos = 0
        out = self._buf[self._pos:self._pos + k]
        self._pos += k
        return out


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a run (see :meth:`Simulator.run`), back as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def identity_from_seed(seed: bytes) -> Identity:
    """A deterministic identity for simulations (never for real nodes)."""
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fednode/sim/key" + seed).digest())
    return Identity(key)


def node_identities(n: int, seed: int) -> list[Identity]:
    """The identities of the n nodes of ``Simulator(n, seed=seed)``, in index order."""
    return [identity_from_seed(seed.to_bytes(8, "big") + i.to_bytes(4, "big")) for i in range(n)]


@dataclass(frozen=True)
class NetworkConditions:
    """What the simulated network does to every message."""

    delay: float = 0.01
    """Base one-way delay (s)."""
    jitter: float = 0.005
    """Uniform extra delay in [0, jitter) (s): enough to reorder messages sent close together."""
    loss: float = 0.0
    """Independent drop probability per message copy."""
    duplicate: float = 0.0
    """Probability that a message is delivered twice."""
    reorder: float = 0.0
    """Probability that a message gets an extra delay of up to ``reorder_delay``."""
    reorder_delay: float = 0.5
    membership_delay: float = 0.05
    """Time for liveliness to report a join or a crash to the others."""


@dataclass
class NodeRecord:
    """What happened at one simulated node."""

    index: int
    peer_id: bytes
    machine: GossipNode
    alive: bool = False
    started_at: float | None = None
    crashed_at: float | None = None
    finished: bool = False
    round_ends: list[tuple[int, float, str]] = field(default_factory=list)   # (round, time, "commit"/reason)
    round_starts: dict[int, float] = field(default_factory=dict)
    adopted: list[tuple[int, float]] = field(default_factory=list)
    timer_deadline: float | None = None


@dataclass
class RoundSummary:
    """Federation-wide view of one round, over the nodes that reported it."""

    round: int
    nodes: int
    mean: np.ndarray
    disagreement: float
    """||X - JX||_F over the reporting nodes."""


class Simulator:
    """Run N gossip state machines on a virtual clock."""

    def __init__(self, n: int, *, config: RoundConfig, initial_models: Sequence[Model] | Model,
                 local_step: LocalStep | None = None, overlay_factory: Callable[[list[bytes]], Overlay] | None = None,
                 conditions: NetworkConditions = NetworkConditions(), seed: int = 0, train_time: float = 0.05,
                 train_jitter: float = 0.0, start_time: float = 1_800_000_000.0,
                 late_joiners: dict[int, float] | None = None, crashes: dict[int, float] | None = None,
                 keep_models: bool = True, signed: bool = True, on_round_end: RoundEnd | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.config = config
        self.conditions = conditions
        # default: no training, x^{r+1/2} = x^r as given (the machine copies whatever a step returns)
        self.local_step = local_step or (lambda i, m: m)
        self.train_time = train_time
        self.train_jitter = train_jitter
        self.now = start_time
        self.start_time = start_time
        self.keep_models = keep_models
        self.signed = signed
        self.on_round_end = on_round_end
        self._queue: list[tuple[float, int, int, object]] = []   # messages in flight
        self._other: list[tuple[float, int, int, object]] = []   # timers, steps, joins, crashes
        self._seq = itertools.count()
        identities = node_identities(n, seed)
        self.allow_list = AllowList()
        for ident in identities:
            self.allow_list.add(ident.public_key_bytes)
        self.peer_ids = [ident.peer_id for ident in identities]
        self.index_of = {p: i for i, p in enumerate(self.peer_ids)}
        # one overlay for all: its per-round cache then computes each round's rings once, not once per node
        overlay = overlay_factory(self.peer_ids) if overlay_factory else \
            RandomRegularOverlay(config.federation, config.degree)
        models = list(initial_models) if isinstance(initial_models, Sequence) else [initial_models] * n
        if len(models) != n:
            raise ValueError("need one initial model per node")
        self.spec = ModelSpec.of(models[0])
        late = self.late_at = dict(late_joiners or {})
        self.crash_at = dict(crashes or {})
        initial = [i for i in range(n) if i not in late]
        node_rng = np.random.default_rng(seed + 1)
        self.nodes: list[NodeRecord] = []
        for i, ident in enumerate(identities):
            members = [self.peer_ids[j] for j in initial if j != i] if i in initial else \
                [self.peer_ids[j] for j in initial]
            nonce_rng = np.random.default_rng(node_rng.integers(2**63))
            machine = GossipNode(ident, self.allow_list, self.spec, models[i], config, overlay=overlay,
                                 members=members, nonce_source=_NonceStream(nonce_rng),
                                 joining=i in late, codec=SIGNED if signed else LOCAL)
            self.nodes.append(NodeRecord(i, ident.peer_id, machine))
        for i in initial:
            self._schedule(start_time, i, "start")
        for i, t in late.items():
            self._schedule(start_time + t, i, "start")
        for i, t in self.crash_at.items():
            self._schedule(start_time + t, i, "crash")
        self.models_by_round: dict[int, dict[int, np.ndarray]] = {}
        self.initial_vectors = {i: self.spec.flatten(models[i]) for i in range(n)}
        self.messages_sent = 0
        self.messages_dropped = 0
        self._unstarted = len([i for i in range(n) if i not in self.crash_at])  # counters behind _all_done
        self._alive_unfinished = 0
        self.parallel_stats = None  # set by fednode.testnet.parallel.run_parallel

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, at: float, node: int, item: object) -> None:
        heapq.heappush(self._other, (at, next(self._seq), node, item))

    def _pop(self) -> tuple[float, int, int, object] | None:
        """The next event in (time, sequence) order over both queues, None when both are empty.

        Two heaps, one order: the superseded timers (three per node and round, nearly all of them
        still queued when a run ends) stay out of the messages' heap, which every message goes through.
        """
        q, o = self._queue, self._other
        if o and (not q or o[0] < q[0]):
            return heapq.heappop(o)
        return heapq.heappop(q) if q else None

    def _deliver(self, sender: int, target: int, data: bytes) -> None:
        c = self.conditions
        self.messages_sent += 1
        rand = self.rng.random
        copies = 2 if c.duplicate and rand() < c.duplicate else 1
        for _ in range(copies):
            if c.loss and rand() < c.loss:
                self.messages_dropped += 1
                continue
            delay = c.delay + (rand() * c.jitter if c.jitter else 0.0)
            if c.reorder and rand() < c.reorder:
                delay += rand() * c.reorder_delay
            self._arrive(self.now + delay, target, data)

    def _arrive(self, at: float, target: int, data: object) -> None:
        """Queue a message copy for delivery (a parallel run's worker replaces this for other workers' nodes)."""
        heapq.heappush(self._queue, (at, next(self._seq), target, ("msg", data)))

    # ------------------------------------------------------------------ running

    def run(self, *, until: float | None = None, max_events: int = 50_000_000) -> None:
        """Process events until every live node finished, the queue is empty, or ``until`` (relative s).

        The cyclic garbage collector is off meanwhile: a run allocates millions of short-lived objects
        (headers, messages, actions) next to millions of long-lived ones (models, replay caches), and
        the collector's passes over the latter were a third of a 1,000-node run. Nothing the machines
        allocate per event forms a cycle (a run leaves nothing for ``gc.collect()``): refcounting
        frees it all.
        """
        with gc_paused():
            self._run(until, max_events)

    def _run(self, until: float | None, max_events: int) -> None:
        limit = None if until is None else self.start_time + until
        for _ in range(max_events):
            if (not self._queue and not self._other) or self._all_done():
                return
            at, _, idx, item = self._pop()  # type: ignore[misc]
            if limit is not None and at > limit:
                heapq.heappush(self._queue if type(item) is tuple and item[0] == "msg" else self._other,
                               (at, next(self._seq), idx, item))
                return
            self.now = at
            self._step(idx, item)
        raise RuntimeError("simulation did not finish within max_events")

    def _all_done(self) -> bool:
        """Every node has started (or crashed) and every live one finished its rounds (O(1): counters)."""
        return self._unstarted == 0 and self._alive_unfinished == 0

    def _step(self, idx: int, item: object) -> None:
        rec = self.nodes[idx]
        if type(item) is tuple:  # nearly every event: a message
            if not rec.alive:
                return
            kind, payload = item
            if kind == "msg":
                self._apply(rec, rec.machine.receive(payload, self.now))
                return
            if kind == "joined":
                event = PeerJoined(payload, self.now)
            elif kind == "left":
                event = PeerLeft(payload, self.now)
            elif kind == "timer":
                if rec.timer_deadline is None or payload != rec.timer_deadline:
                    return  # superseded
                event = TimerFired(self.now)
            elif kind == "step":
                rnd, model = payload
                event = LocalStepDone(rnd, model, self.now)
            else:  # pragma: no cover
                raise ValueError(kind)
            self._apply(rec, rec.machine.handle(event))
        elif item == "start":
            if rec.started_at is None and idx not in self.crash_at:
                self._unstarted -= 1
            if not rec.alive and not rec.finished:
                self._alive_unfinished += 1
            rec.alive = True
            rec.started_at = self.now
            # liveliness tells the others; a node that already lists the peer (every initial member does)
            # would only re-add it, so that no-op event is not queued (O(N^2) events at start otherwise)
            for other in self.nodes:
                if other.index != idx and other.alive and rec.peer_id not in other.machine.members:
                    self._schedule(self.now + self.conditions.membership_delay, other.index, ("joined", rec.peer_id))
            self._apply(rec, rec.machine.start(self.now))
        elif item == "crash" and rec.alive:
            rec.alive = False
            rec.crashed_at = self.now
            if not rec.finished:
                self._alive_unfinished -= 1
            for other in self.nodes:
                if other.index != idx and other.alive:
                    self._schedule(self.now + self.conditions.membership_delay, other.index, ("left", rec.peer_id))

    def _apply(self, rec: NodeRecord, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                target = self.index_of.get(action.peer)
                if target is not None:
                    self._deliver(rec.index, target, action.data)
            elif isinstance(action, Broadcast):
                for other in self.nodes:
                    if other.index != rec.index:
                        self._deliver(rec.index, other.index, action.data)
            elif isinstance(action, SetTimer):
                rec.timer_deadline = action.deadline
                self._schedule(max(self.now, action.deadline), rec.index, ("timer", action.deadline))
            elif isinstance(action, StartLocalStep):
                rec.round_starts[action.round] = self.now
                duration = self.train_time * (1.0 + self.train_jitter * self.rng.random())
                model = self.local_step(rec.index, action.model)
                self._schedule(self.now + duration, rec.index, ("step", (action.round, model)))
            elif isinstance(action, (Commit, Abort)):
                label = "commit" if isinstance(action, Commit) else action.reason
                rec.round_ends.append((action.round, self.now, label))
                if self.keep_models:
                    self.models_by_round.setdefault(action.round, {})[rec.index] = self.spec.flatten(action.model)
                if self.on_round_end is not None:
                    self.on_round_end(action.round, rec.index, label, action.model)
            elif isinstance(action, AdoptModel):
                rec.adopted.append((action.round, self.now))
            elif isinstance(action, Finished):
                if not rec.finished and rec.alive:
                    self._alive_unfinished -= 1
                rec.finished = True

    # ------------------------------------------------------------------ analysis

    def live_nodes(self) -> list[NodeRecord]:
        return [rec for rec in self.nodes if rec.alive]

    def final_vectors(self, live_only: bool = True) -> dict[int, np.ndarray]:
        return {rec.index: self.spec.flatten(rec.machine.model) for rec in self.nodes
                if rec.alive or not live_only}

    def summary(self, round: int) -> RoundSummary:
        vecs = self.models_by_round[round]
        X = np.stack([vecs[i] for i in sorted(vecs)])
        mean = X.mean(axis=0)
        return RoundSummary(round, len(vecs), mean, float(np.linalg.norm(X - mean)))

    def round_durations(self, idx: int) -> list[float]:
        """Wall (virtual) seconds of each round node ``idx`` completed, from start to commit/abort."""
        rec = self.nodes[idx]
        out = []
        prev = rec.started_at
        for rnd, t, _ in rec.round_ends:
            if prev is not None:
                out.append(t - prev)
            prev = t
        return out
