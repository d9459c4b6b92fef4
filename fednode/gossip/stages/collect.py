"""Plaintext exchange, aggregator side: gather the edges' contributions, RETRY the missing, fix U_i.

Wait t_agg per attempt; RETRY(attempt + 1, U = surviving edges) the missing ones, at most A_max
times. A peer that left is not waited for, nor one whose COMMIT already says it did not use us, nor one
whose signed contribution had bad content (``Inbox.refused``: it is not used, so waiting is moot).
U_i = received minus those farther than ``max_distance``; |U_i| < u_min aborts (U_i = {}).
"""

from __future__ import annotations

import numpy as np

from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.stages.commit import CommitStage
from fednode.gossip.state import Concluded, RoundState
from fednode.security.clipping import l2_norm
from fednode.security.envelope import Message, MsgType, Reject


class CollectStage:
    def __init__(self, ctx: NodeContext, commit: CommitStage) -> None:
        self.ctx = ctx
        self.commit = commit

    def start(self, rnd: RoundState, now: float, out: list[Action]) -> None:
        rnd.exchange.deadline = now + self.ctx.config.t_agg

    def on_contribution(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        ex, sender = rnd.exchange, msg.sender
        if sender in rnd.proposed and sender not in ex.contributions:
            if rnd.commit.used is None:
                ex.contributions[sender] = msg.arrays
            elif sender not in rnd.commit.used:
                self.commit.send(rnd, sender, now, out)  # tell it promptly it is not used this round

    def advance(self, rnd: RoundState, now: float, out: list[Action]) -> Concluded | None:
        ex, ctx = rnd.exchange, self.ctx
        cfg = ctx.config
        assert ex.deadline is not None
        excluded_us = {p for p, u in rnd.commit.commits.items() if ctx.me not in u}
        refused = ctx.inbox.refused.get(rnd.number, ())
        missing = set(ex.edges).difference(ex.contributions, rnd.gone, excluded_us, refused)
        if missing and now < ex.deadline:
            return None
        if missing and ex.attempt < cfg.max_retries:
            ex.attempt += 1
            ex.deadline = now + cfg.t_agg
            survivors = sorted(set(ex.edges) - rnd.gone)
            for peer in sorted(missing):
                ctx.outbox.post(out, MsgType.RETRY, peer, rnd.number, now, "retry", attempt=ex.attempt,
                                meta={"u": survivors, "d": rnd.degree})
                ctx.stats.retries_sent += 1
            return None
        used = set(ex.contributions) & set(ex.edges)
        if cfg.max_distance is not None and rnd.half is not None:
            for peer in sorted(used):
                diff = {k: ex.contributions[peer][k].astype(np.float64) - rnd.half[k].astype(np.float64)
                        for k in rnd.half}
                if l2_norm(diff) > cfg.max_distance:
                    used.discard(peer)
                    ctx.inbox.reject(out, Reject("distance", sender=peer))
        if len(used) < cfg.min_contributors:
            used = set()
        return Concluded(frozenset(used))

    def deadline(self, rnd: RoundState) -> float | None:
        return rnd.exchange.deadline
