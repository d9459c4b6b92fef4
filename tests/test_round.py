"""Paths of the sans-I/O round state machine, driven directly or through the simulator."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.gossip.config import RoundConfig
from fednode.gossip.events import (Abort, AdoptModel, Commit, LocalStepDone, MessageReceived, PeerJoined, PeerLeft,
                                   Rejected, Send, StartLocalStep, TimerFired)
from fednode.gossip.round import GossipNode
from fednode.security.arrays import ModelSpec
from fednode.security.envelope import MsgType, seal
from fednode.security.identity import AllowList
from fednode.testnet.simulator import NetworkConditions, Simulator, identity_from_seed

T0 = 1_800_000_000.0


def _nodes(n: int, cfg: RoundConfig, dim: int = 3):
    ids = [identity_from_seed(bytes([i])) for i in range(n)]
    allow = AllowList()
    for ident in ids:
        allow.add(ident.public_key_bytes)
    spec = ModelSpec((("w", "<f8", (dim,)),))
    machines = [GossipNode(ident, allow, spec, {"w": np.full(dim, float(i))}, cfg,
                           members=[o.peer_id for o in ids if o is not ident]) for i, ident in enumerate(ids)]
    return ids, allow, spec, machines


def _model_hash(m: GossipNode) -> str:
    return hashlib.sha256(b"".join(m.model[k].tobytes() for k in sorted(m.model))).hexdigest()


def test_two_nodes_average_exactly():
    cfg = RoundConfig(federation="t", max_rounds=1)
    ids, _, _, (a, b) = _nodes(2, cfg)
    inbox = {a.me: [], b.me: []}

    def run(machine, actions):
        for act in actions:
            if isinstance(act, Send):
                inbox[act.peer].append(act.data)
            elif isinstance(act, StartLocalStep):
                inbox[machine.me].append(("step", act.round, act.model))
        return actions

    ends = []
    run(a, a.start(T0))
    run(b, b.start(T0))
    for _ in range(20):
        for m in (a, b):
            items, inbox[m.me] = inbox[m.me], []
            for item in items:
                ev = LocalStepDone(item[1], item[2], T0 + 0.1) if isinstance(item, tuple) else \
                    MessageReceived(item, T0 + 0.1)
                ends += [x for x in run(m, m.handle(ev)) if isinstance(x, (Commit, Abort))]
    assert len(ends) == 2 and all(isinstance(e, Commit) for e in ends)
    # W_ab = 1/(1+max(1,1)) = 1/2: both end at the mean, 0.5
    assert np.array_equal(a.model["w"], np.full(3, 0.5)) and np.array_equal(b.model["w"], np.full(3, 0.5))


def test_a_provably_bad_contribution_is_not_waited_for():
    """c's signed NaN contribution is refused; a and b end the round on messages alone (no timer
    fires in this loop), use each other only, and never RETRY c."""
    from fednode.node.byzantine import ByzantineInterceptor

    cfg = RoundConfig(federation="t", max_rounds=1, t_agg=5.0, max_retries=2)
    ids, allow, spec, machines = _nodes(3, cfg)
    a, b, c = machines
    liar = ByzantineInterceptor("nan", ids[2], allow, spec)
    inbox = {m.me: [] for m in machines}
    ends = {}
    for m in machines:
        for act in m.start(T0):
            if isinstance(act, StartLocalStep):
                inbox[m.me].append(("step", act.round, act.model))
            elif isinstance(act, Send):
                inbox[act.peer].append(liar.rewrite(act.data) if m is c else act.data)
    for _ in range(30):
        for m in machines:
            items, inbox[m.me] = inbox[m.me], []
            for item in items:
                ev = LocalStepDone(item[1], item[2], T0 + 0.1) if isinstance(item, tuple) else \
                    MessageReceived(item, T0 + 0.1)
                for act in m.handle(ev):
                    if isinstance(act, Send):
                        inbox[act.peer].append(liar.rewrite(act.data) if m is c else act.data)
                    elif isinstance(act, (Commit, Abort)):
                        ends[m.me] = act
    for m in (a, b):
        end = ends[m.me]
        assert isinstance(end, Commit) and c.me not in end.used and len(end.used) == 1
        assert m.stats.rejects["non_finite"] >= 1 and m.stats.retries_sent == 0
        assert np.all(np.isfinite(m.model["w"]))


def test_no_hello_wait_for_a_banned_neighbour():
    """c is banned at a and b (its HELLO would be refused): they agree on their edge and end the
    round on messages alone, without waiting t_hello for c."""
    cfg = RoundConfig(federation="t", max_rounds=1, t_hello=5.0)
    ids, _, _, machines = _nodes(3, cfg)
    a, b, c = machines
    for m in (a, b):
        for k in range(m.ctx.inbox.offenders.threshold):
            m.ctx.inbox.offenders.note(c.me, T0, token=k)
    inbox = {m.me: [] for m in machines}
    ends = {}

    def route(m, actions):
        for act in actions:
            if isinstance(act, StartLocalStep):
                inbox[m.me].append(("step", act.round, act.model))
            elif isinstance(act, Send) and m is not c:
                inbox[act.peer].append(act.data)
            elif isinstance(act, (Commit, Abort)):
                ends[m.me] = act

    for m in (a, b):
        route(m, m.start(T0))
    for _ in range(30):
        for m in (a, b):
            items, inbox[m.me] = inbox[m.me], []
            for item in items:
                route(m, m.handle(LocalStepDone(item[1], item[2], T0 + 0.1) if isinstance(item, tuple)
                                  else MessageReceived(item, T0 + 0.1)))
    for m, other in ((a, b), (b, a)):
        assert isinstance(ends[m.me], Commit) and ends[m.me].used == (other.me,)


def test_silent_crash_costs_retries_then_abort_below_u_min():
    cfg = RoundConfig(federation="t", max_rounds=1, t_hello=1.0, t_agg=1.0, t_commit=1.0, min_contributors=2,
                      max_retries=2)
    sim = Simulator(3, config=cfg, initial_models=[{"w": np.full(2, float(i))} for i in range(3)],
                    conditions=NetworkConditions(membership_delay=1e6), crashes={2: 0.001}, train_time=0.05)
    sim.run(until=30)
    for rec in sim.nodes[:2]:
        assert rec.round_ends[0][2] == "too_few_contributions"
        assert rec.machine.stats.retries_sent == 2
        # contributions went out at ~t_hello (node 2's HELLO never came); then (A_max + 1) * t_agg at most
        assert rec.round_ends[0][1] - sim.start_time <= cfg.round_length_bound(0.05)
        assert np.array_equal(rec.machine.model["w"], np.full(2, float(rec.index)))  # kept its own model


def test_peer_left_stops_the_wait_at_once():
    cfg = RoundConfig(federation="t", max_rounds=1, t_hello=1.0, t_agg=5.0, t_commit=1.0)
    sim = Simulator(3, config=cfg, initial_models=[{"w": np.full(2, float(i))} for i in range(3)],
                    conditions=NetworkConditions(membership_delay=0.01), crashes={2: 0.06}, train_time=0.05)
    sim.run(until=30)
    for rec in sim.nodes[:2]:
        end = rec.round_ends[0]
        assert end[2] == "commit"
        assert end[1] - sim.start_time < 1.5  # no t_agg timeout was needed
    # they used each other (W = 1/3 from the announced degree 2): their joint mass is conserved
    assert np.allclose(sim.nodes[0].machine.model["w"] + sim.nodes[1].machine.model["w"], 1.0, atol=1e-15)
    assert np.allclose(sim.nodes[0].machine.model["w"], 1 / 3)


def test_rejected_bytes_never_raise_and_leave_the_model_unchanged():
    cfg = RoundConfig(federation="t")
    ids, allow, spec, (a, b) = _nodes(2, cfg)
    a.start(T0)
    before = _model_hash(a)
    good = seal(ids[1], msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=0,
                arrays={"w": np.full(3, 7.0)}, spec=spec, meta={"d": 1}, now_ms=int(T0 * 1000))
    bad_inputs = [b"", b"\x00", good[:-1], bytes(len(good)), good[:40] + bytes([good[40] ^ 1]) + good[41:]]
    nan = seal(ids[1], msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=0,
               arrays={"w": np.array([np.nan, 0, 0])}, spec=spec, meta={"d": 1}, now_ms=int(T0 * 1000))
    wrong_shape = seal(ids[1], msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=0,
                       arrays={"w": np.zeros(4)}, meta={"d": 1}, now_ms=int(T0 * 1000))
    stranger = identity_from_seed(b"stranger")
    foreign = seal(stranger, msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=0,
                   arrays={"w": np.zeros(3)}, spec=spec, meta={"d": 1}, now_ms=int(T0 * 1000))
    for data in [*bad_inputs, nan, wrong_shape, foreign]:
        out = a.handle(MessageReceived(data, T0 + 0.01))
        assert any(isinstance(x, Rejected) for x in out)
        assert _model_hash(a) == before
    assert sum(a.stats.rejects.values()) == len(bad_inputs) + 3


@settings(derandomize=True, max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_machine_survives_arbitrary_bytes(data):
    cfg = RoundConfig(federation="t")
    _, _, _, (a, _) = _nodes(2, cfg)
    a.start(T0)
    before = _model_hash(a)
    out = a.handle(MessageReceived(data, T0))
    assert any(isinstance(x, Rejected) for x in out)
    assert _model_hash(a) == before


def test_messages_for_the_next_rounds_are_buffered_not_lost():
    cfg = RoundConfig(federation="t")
    ids, allow, spec, (a, b) = _nodes(2, cfg)
    a.start(T0)
    now = seal(ids[1], msg_type=MsgType.HELLO, recipient=a.me, federation="t", round=0,
               meta={"n": [a.me], "d": 1, "epk": b""}, now_ms=int(T0 * 1000))
    a.handle(MessageReceived(now, T0))
    early = seal(ids[1], msg_type=MsgType.HELLO, recipient=a.me, federation="t", round=2,
                 meta={"n": [a.me], "d": 1, "epk": b""}, now_ms=int(T0 * 1000))
    a.handle(MessageReceived(early, T0))
    assert 2 in a._buffer and len(a._buffer[2]) == 1 and a.round == 0
    too_far = seal(ids[1], msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=3,
                   arrays={"w": np.zeros(3)}, spec=spec, meta={"d": 1}, now_ms=int(T0 * 1000))
    out = a.handle(MessageReceived(too_far, T0))
    assert [x.reason for x in out if isinstance(x, Rejected)] == ["future_round"]


def test_far_ahead_hello_fetches_the_model_and_jumps():
    cfg = RoundConfig(federation="t")
    ids, allow, spec, (a, b) = _nodes(2, cfg)
    b.round_number = 40
    a.start(T0)
    hello = seal(ids[1], msg_type=MsgType.HELLO, recipient=a.me, federation="t", round=40,
                 meta={"n": [a.me], "d": 1, "epk": b""}, now_ms=int(T0 * 1000))
    out = a.handle(MessageReceived(hello, T0 + 0.1))
    requests = [x for x in out if isinstance(x, Send) and x.kind == "model_request"]
    assert len(requests) == 1 and requests[0].peer == b.me
    b.start(T0)
    replies = [x for x in b.handle(MessageReceived(requests[0].data, T0 + 0.2))
               if isinstance(x, Send) and x.kind == "model_reply"]
    out = a.handle(MessageReceived(replies[0].data, T0 + 0.3))
    adopted = [x for x in out if isinstance(x, AdoptModel)]
    assert adopted and adopted[0].round == 40 and a.round == 40
    assert np.array_equal(a.model["w"], b.model["w"])


def test_round_counter_never_goes_backwards_on_stale_model_reply():
    cfg = RoundConfig(federation="t")
    ids, allow, spec, (a, b) = _nodes(2, cfg)
    a.round_number = 10
    a.phase = "sync"
    a.start(T0)
    reply = seal(ids[1], msg_type=MsgType.MODEL_REPLY, recipient=a.me, federation="t", round=9,
                 arrays={"w": np.full(3, 99.0)}, spec=spec, meta={"r": 9}, now_ms=int(T0 * 1000))
    out = a.handle(MessageReceived(reply, T0 + 0.1))
    assert not any(isinstance(x, AdoptModel) for x in out)
    assert a.round == 10 and np.array_equal(a.model["w"], np.zeros(3))  # kept its own, fresher state


def test_unknown_peer_membership_is_ignored():
    cfg = RoundConfig(federation="t")
    _, _, _, (a, _) = _nodes(2, cfg)
    a.start(T0)
    a.handle(PeerJoined(b"\x01" * 32, T0))
    assert b"\x01" * 32 not in a.members
    a.handle(PeerLeft(b"\x01" * 32, T0))
    a.handle(TimerFired(T0 + 100))


def _drive(machines, rewrite, rounds_until: float, t0: float = T0) -> dict:
    """Run ``machines`` on a virtual clock with instant delivery (``rewrite`` maps a sender's bytes);
    time jumps to the next deadline when nothing is in flight. Returns me -> list of round ends."""
    inbox = {m.me: [] for m in machines}
    ends: dict[bytes, list] = {m.me: [] for m in machines}
    proposed: dict[bytes, list] = {m.me: [] for m in machines}
    now = t0

    def route(m, actions):
        for act in actions:
            if isinstance(act, StartLocalStep):
                inbox[m.me].append(("step", act.round, act.model))
            elif isinstance(act, Send):
                inbox[act.peer].append(rewrite(m, act.data))
            elif isinstance(act, (Commit, Abort)):
                ends[m.me].append(act)
        if m.ctx.current is not None and (not proposed[m.me] or proposed[m.me][-1][0] != m.ctx.current.number):
            proposed[m.me].append((m.ctx.current.number, m.ctx.current.proposed))

    for m in machines:
        route(m, m.start(now))
    for _ in range(200_000):
        if now > rounds_until:
            break
        busy = False
        for m in machines:
            items, inbox[m.me] = inbox[m.me], []
            for item in items:
                busy = True
                route(m, m.handle(LocalStepDone(item[1], item[2], now) if isinstance(item, tuple)
                                  else MessageReceived(item, now)))
        if not busy:
            deadlines = [d for d in (m.next_deadline() for m in machines) if d is not None]
            if not deadlines:
                break
            now = max(now, min(deadlines)) + 1e-3
            for m in machines:
                route(m, m.handle(TimerFired(now)))
    return {"ends": ends, "proposed": proposed}


def test_a_proven_liar_leaves_the_overlay_and_the_honest_nodes_keep_their_degree():
    """Node 5 signs NaN contributions. Each honest node that receives one takes node 5 out of its
    overlay view for ``exclude_rounds``; once all have, the re-drawn overlay gives the honest nodes
    honest neighbours only and nobody proposes node 5 any more. Without exclusion, node 5 keeps being
    proposed (and its edges wasted) in every round."""
    from fednode.node.byzantine import ByzantineInterceptor

    def run(exclude_rounds: int):
        cfg = RoundConfig(federation="t", max_rounds=12, degree=2, t_hello=1.0, t_agg=1.0, t_commit=1.0,
                          exclude_rounds=exclude_rounds)
        ids, allow, spec, machines = _nodes(6, cfg)
        liar = ByzantineInterceptor("nan", ids[5], allow, spec)
        res = _drive(machines, lambda m, data: liar.rewrite(data) if m is machines[5] else data, T0 + 120)
        return machines, res

    def late_proposals_and_edges(machines, res):
        bad = machines[5].me
        late = sum(1 for m in machines[:5] for r, p in res["proposed"][m.me] if r >= 7 and bad in p)
        edges = sum(len(e.used) for m in machines[:5] for e in res["ends"][m.me] if isinstance(e, Commit))
        return late, edges

    machines, res = run(exclude_rounds=20)
    bad = machines[5].me
    for m in machines[:5]:
        assert all(bad not in e.used for e in res["ends"][m.me] if isinstance(e, Commit))
        assert len(res["ends"][m.me]) == 12
        # the first NaN (signed for round R, arriving in R or late in R + 1) excludes the liar after R + 1
        if bad in m.ctx.inbox.exclusions.until:
            first = m.ctx.inbox.exclusions.until[bad] - 20
            assert m.stats.exclusions[bad] == 1
            assert not [r for r, p in res["proposed"][m.me] if r > first + 1 and bad in p]
        else:
            assert not m.stats.rejects["non_finite"]
    late, edges = late_proposals_and_edges(machines, res)
    assert late == 0

    machines0, res0 = run(exclude_rounds=0)  # the teeth: without exclusion the liar stays in the overlay
    late0, edges0 = late_proposals_and_edges(machines0, res0)
    assert late0 >= 10 and not any(m.stats.exclusions for m in machines0[:5])
    assert edges > edges0  # the honest nodes averaged over more (honest) edges


def test_an_exclusion_expires_after_exclude_rounds():
    cfg = RoundConfig(federation="t", exclude_rounds=3)
    ids, allow, spec, (a, b) = _nodes(2, cfg)
    a.start(T0)
    nan = seal(ids[1], msg_type=MsgType.CONTRIBUTE, recipient=a.me, federation="t", round=0,
               arrays={"w": np.array([np.nan, 0, 0])}, spec=spec, meta={"d": 1}, now_ms=int(T0 * 1000))
    a.handle(MessageReceived(nan, T0 + 0.01))
    ex = a.ctx.inbox.exclusions
    assert ex.view({b.me}, 3) == set() and a.stats.exclusions[b.me] == 1
    assert ex.view({b.me}, 4) == {b.me} and not ex.until


def test_a_hello_from_a_peer_we_do_not_propose_is_answered_so_it_does_not_wait():
    """b has excluded a, so b's view (and its HELLO) leaves a out while a still proposes b. b answers
    a's HELLO with its own, which does not list a: a ends its HELLO wait on messages alone (no timer
    fires in this loop) and averages with c only. Without the answer a waits t_hello for b."""
    cfg = RoundConfig(federation="t", max_rounds=1, t_hello=5.0)
    ids, _, _, machines = _nodes(3, cfg)
    a, b, c = machines
    b.ctx.inbox.exclusions.until[a.me] = 100
    inbox = {m.me: [] for m in machines}
    ends = {}

    def route(m, actions):
        for act in actions:
            if isinstance(act, StartLocalStep):
                inbox[m.me].append(("step", act.round, act.model))
            elif isinstance(act, Send):
                inbox[act.peer].append(act.data)
            elif isinstance(act, (Commit, Abort)):
                ends[m.me] = act

    for m in machines:
        route(m, m.start(T0))
    assert a.me not in b.ctx.current.proposed and b.me in a.ctx.current.proposed
    for _ in range(30):
        for m in machines:
            items, inbox[m.me] = inbox[m.me], []
            for item in items:
                route(m, m.handle(LocalStepDone(item[1], item[2], T0 + 0.1) if isinstance(item, tuple)
                                  else MessageReceived(item, T0 + 0.1)))
    assert isinstance(ends.get(a.me), Commit) and ends[a.me].used == (c.me,)
    assert isinstance(ends.get(b.me), Commit) and ends[b.me].used == (c.me,)
    assert not any(a.stats.rejects.values()) and not any(b.stats.rejects.values())
