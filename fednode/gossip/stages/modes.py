"""Which stages each mode runs, and which stage handles each message type (the driver's routing table).

Plaintext: contribute + collect. Mode A ("retry"): masked_setup + masked_contribute + retry_unmask (+ masked_sum).
Mode B ("secagg+"): masked_setup + masked_contribute + plus_shares + plus_unmask (+ masked_sum). Every mode: hello,
commit, catchup. A message of the current round goes to ``current[type]`` (handlers run in order);
one of the round before (or the last round, once done) to ``previous[type]``: slower peers still need
our COMMIT, our contribution or our reveal. Types not listed are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.stages.catchup import CatchUp
from fednode.gossip.stages.collect import CollectStage
from fednode.gossip.stages.commit import CommitStage
from fednode.gossip.stages.contribute import ContributeStage
from fednode.gossip.stages.hello import HelloStage
from fednode.gossip.stages.masked_contribute import MaskedContribute
from fednode.gossip.stages.masked_setup import MaskedSetup
from fednode.gossip.stages.plus_shares import PlusContributor
from fednode.gossip.stages.plus_unmask import PlusAggregator
from fednode.gossip.stages.retry_unmask import RetryAggregator
from fednode.gossip.state import Concluded, RoundState
from fednode.security.envelope import Message, MsgType

Handler = Callable[[RoundState, Message, float, list[Action]], None]
Routes = dict[MsgType, tuple[Handler, ...]]


class Aggregation(Protocol):
    """The stage that runs AGGREGATE: collect (plaintext), retry_unmask (mode A) or plus_unmask (mode B)."""

    def advance(self, rnd: RoundState, now: float, out: list[Action]) -> Concluded | None: ...

    def deadline(self, rnd: RoundState) -> float | None: ...


@dataclass
class Stages:
    hello: HelloStage
    commit: CommitStage
    catchup: CatchUp
    aggregator: Aggregation
    start_exchange: Callable[[RoundState, float, list[Action]], Concluded | None]
    """Entering AGGREGATE once the edges are known (may conclude at once)."""
    current: Routes
    previous: Routes
    answer_setup: Handler | None = None
    """Secure aggregation: a SETUP/RETRY (also one kept until the local step was done)."""
    late_edge: Callable[[RoundState, bytes, int, float, list[Action]], None] | None = None
    """Plaintext: serve an edge found after the contributions went out."""


def build_stages(ctx: NodeContext) -> Stages:
    hello, commit, catchup = HelloStage(ctx), CommitStage(ctx), CatchUp(ctx)
    if not ctx.secure:
        contribute, collect = ContributeStage(ctx, commit), CollectStage(ctx, commit)

        def start_exchange(rnd: RoundState, now: float, out: list[Action]) -> Concluded | None:
            contribute.start(rnd, now, out)
            collect.start(rnd, now, out)
            return None

        current: Routes = {MsgType.CONTRIBUTE: (contribute.note_implied_hello, collect.on_contribution),
                           MsgType.RETRY: (contribute.note_implied_hello, contribute.answer_retry),
                           MsgType.COMMIT: (commit.on_commit,)}
        previous: Routes = {MsgType.RETRY: (contribute.answer_late_retry,), MsgType.COMMIT: (commit.on_previous,)}
        return Stages(hello, commit, catchup, collect, start_exchange, current, previous,
                      late_edge=contribute.late_edge)
    setup = MaskedSetup(ctx)
    masked = MaskedContribute(ctx, setup)
    agg: RetryAggregator | PlusAggregator
    con: MaskedContribute | PlusContributor
    if ctx.plus:
        agg, con = PlusAggregator(ctx, setup), PlusContributor(ctx, setup, masked)
    else:
        agg, con = RetryAggregator(ctx, setup), masked

    def answer_setup(rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """Contributor: check the aggregator's request, then mask (mode A) or share secrets (mode B)."""
        req = setup.check(rnd, msg, now, out)
        if req is not None:
            con.on_setup(rnd, req, now, out)

    current = {MsgType.SETUP: (answer_setup,), MsgType.RETRY: (answer_setup,),
               MsgType.UNMASK: (con.answer_unmask,), MsgType.CONTRIBUTE: (agg.on_contribution,),
               MsgType.REVEAL: (agg.on_reveal,), MsgType.COMMIT: (commit.on_commit,)}
    previous = {MsgType.SETUP: (answer_setup,), MsgType.RETRY: (answer_setup,),
                MsgType.UNMASK: (con.answer_unmask,), MsgType.COMMIT: (commit.on_previous,)}
    if isinstance(agg, PlusAggregator) and isinstance(con, PlusContributor):
        current[MsgType.SHARES] = (agg.on_shares,)
        current[MsgType.RELAY] = previous[MsgType.RELAY] = (con.on_relay,)
    return Stages(hello, commit, catchup, agg, agg.start, current, previous, answer_setup=answer_setup)
