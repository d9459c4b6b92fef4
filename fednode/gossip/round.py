"""The gossip round of PROTOCOL §1 as a sans-I/O state machine: the driver that sequences the stages.

One :class:`GossipNode` per peer. Events go in through :meth:`GossipNode.handle` (bytes received,
peer joined or left, timer, local step finished); actions come out (send, set timer, start local
step, commit, abort). Nothing here does I/O or reads a clock, so every path runs in tests and in
the deterministic simulator.

Round r at node i, and the stage (:mod:`fednode.gossip.stages`) that runs each part::

    TRAIN      HELLO(r, N_i, d_i) to each j in N_i; StartLocalStep(x^r)      hello
               x^{r+1/2} checked and clipped                                 fednode.gossip.update
               edges E_i = {j in N_i : j's HELLO lists i}                    hello
    AGGREGATE  plaintext: CONTRIBUTE x^{r+1/2} to every j in E_i             contribute
               wait t_agg, RETRY the missing up to A_max times, fix U_i      collect
               masked: SETUP -> masked CONTRIBUTE -> UNMASK/REVEAL -> S_i    masked_setup, masked_contribute,
                                                                             retry_unmask | plus_shares, plus_unmask
    COMMIT     COMMIT(U_i) to every j in E_i; F_i = {j in U_i : i in U_j}    commit
               x^{r+1} = (1 - sum_F W_ij) x^{r+1/2} + sum_F W_ij x_j^{r+1/2} fednode.gossip.mix
    SYNC       join, skip ahead, resync by model fetch                       catchup

The driver owns the phase and the rounds: it starts and ends rounds, moves the phase when a stage
reports it is done (:class:`~fednode.gossip.state.Concluded`, :class:`~fednode.gossip.state.RoundEnd`),
and routes every verified message to the stage that handles its type. Each stage keeps its own typed
state (:mod:`fednode.gossip.state`); envelopes are sealed only in :mod:`~fednode.gossip.outbox` and
opened only in :mod:`~fednode.gossip.inbox`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from fednode.gossip.config import RoundConfig
from fednode.gossip.context import NodeContext
from fednode.gossip.events import (Abort, Action, Commit, Event, Finished, LocalStepDone, Log, MessageReceived,
                                   PeerJoined, PeerLeft, RoundStats, SetTimer, StartLocalStep, TimerFired)
from fednode.gossip.inbox import Inbox
from fednode.gossip.mix import ContributionFilter
from fednode.gossip.outbox import Outbox
from fednode.gossip.overlay import Overlay, RandomRegularOverlay
from fednode.gossip.stages.modes import build_stages
from fednode.gossip.state import (AGGREGATE, COMMITTING, DONE, SYNC, TRAIN, Concluded, HelloState, NodeStats,
                                  RoundEnd, RoundState)
from fednode.gossip.update import accept_local_step
from fednode.security.arrays import Model, ModelSpec
from fednode.security.codec import SIGNED, EnvelopeCodec
from fednode.security.envelope import Message, MsgType
from fednode.security.identity import AllowList, Identity
from fednode.security.noise import make_rng

__all__ = ["AGGREGATE", "COMMITTING", "DONE", "SYNC", "TRAIN", "GossipNode", "NodeStats"]

_HELLO, _MODEL_REQUEST, _MODEL_REPLY, _STATUS = MsgType.HELLO, MsgType.MODEL_REQUEST, MsgType.MODEL_REPLY, MsgType.STATUS
"""Read per message: an enum class attribute costs a metaclass lookup, a module global does not."""

class GossipNode:
    """One peer's round logic. Feed :meth:`start` once, then every event to :meth:`handle`."""

    def __init__(self, identity: Identity, allow_list: AllowList, spec: ModelSpec, model: Model,
                 config: RoundConfig, *, overlay: Overlay | None = None, start_round: int = 0,
                 members: Iterable[bytes] = (), nonce_source: Callable[[int], bytes] = os.urandom,
                 joining: bool = False, codec: EnvelopeCodec = SIGNED) -> None:
        if not spec.matches(model):
            raise ValueError("initial model does not match the model spec")
        if not codec.signed and config.secure:  # relayed HELLOs are verified by third parties: keys need signatures
            raise ValueError("unsigned envelopes (simulator fast mode) cannot run secure aggregation")
        self.codec, self.identity, self.me, self.allow_list = codec, identity, identity.peer_id, allow_list
        self.spec, self.config = spec, config
        self.overlay: Overlay = overlay or RandomRegularOverlay(config.federation, config.degree)
        self.round_number = int(start_round)
        self.model: Model = {k: np.array(v, copy=True) for k, v in model.items()}
        self.stats = NodeStats()
        self.ctx = ctx = NodeContext(
            identity, allow_list, spec, config, self.stats,
            Outbox(identity, config, spec, self.stats, nonce_source, codec),
            Inbox(self.me, allow_list, config, spec, self.stats, codec),
            members=frozenset(m for m in members if m != self.me and m in allow_list), phase=SYNC if joining else TRAIN,
            dp_rng=make_rng() if config.dp_distributed is not None else None)
        self._prev: RoundState | None = None
        self._timer: float | None = None
        self._started, self._now = False, float("-inf")
        self.stages = st = build_stages(ctx)
        self.hello, self.commit, self.catchup, self.aggregator = st.hello, st.commit, st.catchup, st.aggregator

    # ------------------------------------------------------------------ public API

    @property
    def round(self) -> int:
        return self.round_number

    @property
    def phase(self) -> str:
        return self.ctx.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._enter(value)

    def _enter(self, phase: str) -> None:
        """Every phase change goes through here (the table is ``state.PHASE_TRANSITIONS``)."""
        self.ctx.phase = phase

    @property
    def members(self) -> frozenset[bytes]:
        return self.ctx.members

    @property
    def contribution_filter(self) -> ContributionFilter | None:
        """Validation-score filter, injected by the runtime when ``config.validation_filter`` (plaintext
        only): (own x^{r+1/2}, neighbours' models, W_ij) -> the weights to mix with (:mod:`~fednode.gossip.mix`)."""
        return self.ctx.contribution_filter

    @contribution_filter.setter
    def contribution_filter(self, value: ContributionFilter | None) -> None:
        self.ctx.contribution_filter = value

    @property
    def _buffer(self) -> dict[int, list[Message]]:
        return self.catchup.state.buffer

    def start(self, now: float) -> list[Action]:
        """Begin: a joining node first asks the federation for its round and model, others start round r."""
        if self._started:
            return []
        self._started = True
        self._now = now
        out: list[Action] = []
        if self.ctx.phase == SYNC:
            self.catchup.begin(self.round_number, now, out)
        else:
            self._begin_round(self.round_number, now, out)
        self._advance(now, out)
        return self._finish(out)

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, MessageReceived):
            return self.receive(event.data, event.now)
        out: list[Action] = []
        now = event.now
        self._now = max(self._now, now)
        if isinstance(event, PeerJoined):
            if event.peer != self.me and event.peer in self.allow_list:
                self.ctx.add_member(event.peer)
                if self.ctx.phase == SYNC and self._started and self.catchup.state.target is None:
                    self.catchup.ask_any(self.round_number, now, out)
        elif isinstance(event, PeerLeft):
            self.ctx.drop_member(event.peer)
            for rnd in (self.ctx.current, self._prev):
                if rnd is not None:
                    rnd.gone.add(event.peer)
        elif isinstance(event, LocalStepDone):
            self._on_local_step(event, out)
        elif isinstance(event, TimerFired):
            pass
        else:  # pragma: no cover - typing guard
            raise TypeError(f"unknown event {event!r}")
        if self._started:
            self._advance(now, out)
        return self._finish(out)

    def receive(self, data: bytes, now: float) -> list[Action]:
        """``handle(MessageReceived(data, now))`` without building the event (the simulator's per-message call)."""
        out: list[Action] = []
        if now > self._now:
            self._now = now
        self._on_bytes(data, now, out)
        if self._started:
            self._advance(now, out)
        return self._finish(out)

    def next_deadline(self) -> float | None:
        """The earliest time the machine wants a :class:`TimerFired` (None: only events matter)."""
        return self._deadline()

    # ------------------------------------------------------------------ round lifecycle

    def _begin_round(self, number: int, now: float, out: list[Action], *, step_round: int | None = None,
                     half: Model | None = None) -> None:
        if self.config.max_rounds is not None and number >= self.config.max_rounds:
            self._enter(DONE)
            self.round_number = number
            out.append(Finished(number))
            return
        self._prev = self.ctx.current
        self.round_number = number
        proposed = self.overlay.neighbours(self.me, self.ctx.inbox.exclusions.view(self.ctx.members, number), number)
        rnd = RoundState(number=number, started=now, base=self.model, proposed=frozenset(proposed),
                         step_round=number if step_round is None else step_round,
                         hello=HelloState(deadline=now + self.config.t_hello))
        self.ctx.current = rnd
        self._enter(TRAIN)
        self.hello.send(rnd, now, out)
        if half is not None:
            rnd.half = half
            rnd.step_done_at = now
        elif step_round is None:
            out.append(StartLocalStep(number, self.model))
        early = self.catchup.take(number)  # messages that arrived early for this round
        for key in [k for k in self.ctx.hello_raw if k[0] < number - 1]:
            del self.ctx.hello_raw[key]
        if len(self.ctx.relayed_ok) > 4096:
            self.ctx.relayed_ok.clear()
        for msg in early:
            self._dispatch(msg, now, out)

    def _end_round(self, rnd: RoundState, now: float, out: list[Action], end: RoundEnd) -> None:
        contributed = rnd.exchange.contributed_at or now
        step_done = rnd.step_done_at or now
        aggregated = rnd.commit.aggregated_at or now
        stats = RoundStats(
            round=rnd.number, started=rnd.started, local_step_s=max(0.0, step_done - rnd.started),
            hello_wait_s=max(0.0, contributed - step_done), aggregate_s=max(0.0, aggregated - contributed),
            commit_s=max(0.0, now - aggregated), total_s=max(0.0, now - rnd.started),
            neighbours=tuple(sorted(rnd.exchange.edges)), attempts=rnd.exchange.attempt + 1,
            contributions=len(rnd.exchange.contributions))
        self.model = end.model
        self.stats.rounds_completed += 1
        if end.abort is not None:
            self.stats.rounds_aborted += 1
            self.stats.aborts[end.abort] += 1
            out.append(Abort(rnd.number, end.model, end.abort, stats))
        else:
            self.stats.rounds_averaged += 1
            self_weight = 1.0 - sum(end.used.values())
            out.append(Commit(rnd.number, end.model, tuple(sorted(end.used)), dict(end.used), self_weight, stats,
                              end.drift, end.digest))
        self.stats.drift_events += len(end.drift)
        self._begin_round(rnd.number + 1, now, out)

    def _on_local_step(self, event: LocalStepDone, out: list[Action]) -> None:
        rnd = self.ctx.current
        if rnd is None or self.ctx.phase != TRAIN or event.round != rnd.step_round or rnd.half is not None:
            return  # a step for a round we left (resync) or a duplicate
        half, reason = accept_local_step(self.spec, rnd.base, event.model, self.config.update_clip)
        rnd.step_done_at = event.now
        if half is None:
            out.append(Log("error", f"local step of round {rnd.number} rejected: {reason}; keeping x^r"))
            self._end_round(rnd, event.now, out, RoundEnd(rnd.base, {}, reason))
            return
        rnd.half = half
        if self.ctx.secure:
            pending, rnd.contributor.pending = rnd.contributor.pending, {}
            for msg in pending.values():
                self.stages.answer_setup(rnd, msg, event.now, out)

    # ------------------------------------------------------------------ sequencing

    def _advance(self, now: float, out: list[Action]) -> None:
        """Move the current round forward as far as the known facts allow."""
        ctx = self.ctx
        for _ in range(8):  # a handful of phase transitions per event at most
            phase, number = ctx.phase, self.round_number
            self._step(now, out)
            if (ctx.phase == phase and self.round_number == number) or ctx.phase == DONE:
                return

    def _step(self, now: float, out: list[Action]) -> None:
        rnd = self.ctx.current
        if self.ctx.phase == SYNC:
            target = self.catchup.due(self.round_number, now, out)
            if target is not None:
                self._begin_round(target, now, out)
            return
        if rnd is None:
            return
        if self.ctx.phase == TRAIN:
            edges = self.hello.advance(rnd, now, out)
            if edges is None:
                return
            if not edges:
                assert rnd.half is not None
                reason = "alone" if not rnd.proposed else "no_neighbours"
                self._end_round(rnd, now, out, RoundEnd(rnd.half, {}, reason))
                return
            rnd.exchange.edges = edges
            rnd.exchange.contributed_at = now
            self._enter(AGGREGATE)
            self._conclude(rnd, self.stages.start_exchange(rnd, now, out), now, out)
        elif self.ctx.phase == AGGREGATE:
            self._conclude(rnd, self.aggregator.advance(rnd, now, out), now, out)
        elif self.ctx.phase == COMMITTING:
            end = self.commit.advance(rnd, now, out)
            if end is not None:
                self._end_round(rnd, now, out, end)

    def _conclude(self, rnd: RoundState, result: Concluded | None, now: float, out: list[Action]) -> None:
        if result is not None:
            self.commit.enter(rnd, result.used, result.abort, now, out)
            self._enter(COMMITTING)

    # ------------------------------------------------------------------ routing

    def _on_bytes(self, data: bytes, now: float, out: list[Action]) -> None:
        ctx = self.ctx
        msg = ctx.inbox.receive(out, data, now, current_round=self.round_number, syncing=ctx.phase == SYNC)
        if msg is None:
            return
        sender = msg.sender
        if sender == self.me:
            return
        if sender not in ctx.members:
            ctx.add_member(sender)  # a verified message proves liveness and admission
        if ctx.secure and msg.msg_type == _HELLO:
            ctx.hello_raw.setdefault((msg.round, sender), data)
        self._dispatch(msg, now, out)

    def _dispatch(self, msg: Message, now: float, out: list[Action]) -> None:
        t, ctx = msg.msg_type, self.ctx
        if t == _MODEL_REQUEST:
            self.catchup.serve(msg, self.round_number, self.model, now, out)
            return
        if t == _MODEL_REPLY:
            self._on_model_reply(msg, now, out)
            return
        if t == _STATUS:
            return
        phase = ctx.phase
        if phase == SYNC:
            if t == _HELLO:
                self.catchup.on_hello(msg, self.round_number, now, out)
            return
        r, current = msg.round, ctx.current
        if r > self.round_number:
            if t == _HELLO and self.catchup.should_jump(msg, self.round_number, current):
                self._jump(msg, now, out)
                return
            self.catchup.buffer(msg)
            return
        if r == self.round_number and current is not None and phase != DONE:
            self._on_current(current, msg, now, out)
        else:
            for old in (current if phase == DONE else None, self._prev):
                if old is not None and r == old.number:
                    for handler in self.stages.previous.get(t, ()):  # slower peers still need our answers
                        handler(old, msg, now, out)
                    return

    def _on_current(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        if msg.msg_type == _HELLO:
            degree = self.hello.on_hello(rnd, msg, now, out)
            if degree is not None and self.stages.late_edge is not None:
                self.stages.late_edge(rnd, msg.sender, degree, now, out)
            return
        for handler in self.stages.current.get(msg.msg_type, ()):
            handler(rnd, msg, now, out)

    # ------------------------------------------------------------------ catch-up glue

    def _jump(self, msg: Message, now: float, out: list[Action]) -> None:
        """Far ahead: resync by model fetch. A little behind: skip ahead keeping our model, reusing the
        local step already under way."""
        gap = msg.round - self.round_number
        rnd = self.ctx.current
        if gap > self.config.rounds_ahead:
            self.stats.resyncs += 1
            self._enter(SYNC)
            self.catchup.request(msg.sender, msg.round, self.round_number, now, out)
            return
        out.append(Log("info", f"behind by {gap} round(s): skipping to round {msg.round}"))
        step_round = rnd.step_round if rnd is not None else None
        half = rnd.half if rnd is not None else None
        if rnd is not None:
            self.stats.aborts["behind"] += 1
        self._begin_round(msg.round, now, out, step_round=step_round if half is None else None, half=half)
        if self.ctx.current is not None and self.ctx.current.number == msg.round:
            self._on_current(self.ctx.current, msg, now, out)

    def _on_model_reply(self, msg: Message, now: float, out: list[Action]) -> None:
        if self.ctx.phase != SYNC:
            return
        self._prev = None
        number, adopted = self.catchup.on_reply(msg, self.round_number, out)
        if adopted is not None:
            self.model = adopted
        self._begin_round(number, now, out)

    # ------------------------------------------------------------------ timers

    def _deadline(self) -> float | None:
        rnd = self.ctx.current
        if self.ctx.phase == SYNC:
            return self.catchup.state.deadline
        if rnd is None or self.ctx.phase == DONE:
            return None
        if self.ctx.phase == TRAIN:
            return self.hello.deadline(rnd, self._now)
        if self.ctx.phase == AGGREGATE:
            return self.aggregator.deadline(rnd)
        if self.ctx.phase == COMMITTING:
            return self.commit.deadline(rnd)
        return None

    def _finish(self, out: list[Action]) -> list[Action]:
        deadline = self._deadline()
        if deadline is not None and deadline != self._timer:
            out.append(SetTimer(deadline))
        self._timer = deadline
        return out
