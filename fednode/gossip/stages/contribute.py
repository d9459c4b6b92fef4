"""Plaintext exchange, contributor side: CONTRIBUTE x^{r+1/2} to every edge, answer RETRYs.

A CONTRIBUTE or RETRY from j is only ever sent to a proposed neighbour and carries j's degree,
so it counts as j's HELLO (*implicit HELLO*): a lost HELLO costs nothing, and an edge found after
the contributions went out is added and served at once (late edge).
"""

from __future__ import annotations

from fednode.aggregation import mh_weight
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.inbox import peer_degree
from fednode.gossip.stages.commit import CommitStage
from fednode.gossip.state import AGGREGATE, RoundState
from fednode.security.envelope import Message, MsgType, Reject


class ContributeStage:
    def __init__(self, ctx: NodeContext, commit: CommitStage) -> None:
        self.ctx = ctx
        self.commit = commit

    def send(self, rnd: RoundState, peer: bytes, now: float, out: list[Action], attempt: int = 0) -> None:
        assert rnd.half is not None
        self.ctx.outbox.post(out, MsgType.CONTRIBUTE, peer, rnd.number, now, "contribute", attempt=attempt,
                             arrays=rnd.half, meta={"d": rnd.degree})

    def start(self, rnd: RoundState, now: float, out: list[Action]) -> None:
        for peer in sorted(rnd.exchange.edges):
            self.send(rnd, peer, now, out)

    def note_implied_hello(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """A CONTRIBUTE or RETRY from j: j lists us, with the degree it carries."""
        degree = peer_degree(msg)
        if degree is not None:
            rnd.hello.implied.setdefault(msg.sender, degree)
            self.late_edge(rnd, msg.sender, degree, now, out)

    def late_edge(self, rnd: RoundState, peer: bytes, degree: int, now: float, out: list[Action]) -> None:
        """An edge discovered after contributions went out (lost or late HELLO)."""
        edges = rnd.exchange.edges
        if self.ctx.phase != AGGREGATE or peer in edges or peer not in rnd.proposed or peer in rnd.gone:
            return
        edges[peer] = mh_weight(rnd.degree, degree)
        self.send(rnd, peer, now, out)

    def answer_retry(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        peer = msg.sender
        if msg.attempt > self.ctx.config.max_retries or peer not in rnd.proposed:
            self.ctx.inbox.reject(out, Reject("bad_retry", sender=peer))
            return
        used = rnd.commit.used
        if used is not None:
            # our aggregation is over: our COMMIT decides; resend it, and the contribution if it is used
            self.commit.send(rnd, peer, now, out)
            if peer in used and rnd.half is not None:
                self.send(rnd, peer, now, out, attempt=msg.attempt)
            return
        if rnd.half is not None and peer in rnd.exchange.edges:
            self.send(rnd, peer, now, out, attempt=msg.attempt)

    def answer_late_retry(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """A RETRY for a round we finished: our COMMIT, and the contribution if we used the sender."""
        used = rnd.commit.used
        if msg.attempt <= self.ctx.config.max_retries and used is not None:
            self.commit.send(rnd, msg.sender, now, out)
            if msg.sender in used and rnd.half is not None:
                self.send(rnd, msg.sender, now, out, attempt=msg.attempt)
