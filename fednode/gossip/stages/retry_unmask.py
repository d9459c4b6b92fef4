"""Mode A ("retry"), aggregator side: collect one complete masked attempt, UNMASK it, or re-mask.

Once every y of attempt a is in, UNMASK(a, U) -> each j reveals b_j^a -> S_i = dec(sum y -
sum PRG(b^a)), checked for plausibility (PROTOCOL §3 step 9). A missing contribution makes a RETRY over
the survivors (fresh seeds and self-masks); the dangling attempt is never unmasked. A missing reveal
is retried only when its sender is gone (its reveal can never arrive); otherwise the round aborts,
since a slow reveal arriving after a retry would expose a difference.
The contributor side (reveal b^a for the attempt answered last only) is in ``masked_contribute``.
"""

from __future__ import annotations

from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action, Log
from fednode.gossip.stages.masked_sum import conclude_sum
from fednode.gossip.stages.masked_setup import MaskedSetup
from fednode.gossip.state import AGGREGATE, Concluded, RoundState
from fednode.security.envelope import Message, MsgType, Reject


class RetryAggregator:
    def __init__(self, ctx: NodeContext, setup: MaskedSetup) -> None:
        self.ctx = ctx
        self.setup = setup
        self.start = setup.start

    def on_contribution(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        ex = rnd.exchange
        if (self.ctx.phase == AGGREGATE and not rnd.masked.unmask_sent and msg.sender in rnd.masked.members
                and msg.attempt == ex.attempt and msg.sender not in ex.contributions):
            ex.contributions[msg.sender] = msg.arrays

    def on_reveal(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        seed, sa = msg.meta.get("b"), rnd.masked
        if not (isinstance(seed, bytes) and len(seed) == 32):
            self.ctx.inbox.reject(out, Reject("bad_meta", sender=msg.sender, detail="reveal"))
        elif sa.unmask_sent and msg.sender in sa.members and msg.attempt == rnd.exchange.attempt:
            sa.reveals.setdefault(msg.sender, seed)

    def advance(self, rnd: RoundState, now: float, out: list[Action]) -> Concluded | None:
        ctx, sa, ex = self.ctx, rnd.masked, rnd.exchange
        assert ex.deadline is not None
        if not sa.unmask_sent:
            missing = sa.members - set(ex.contributions)
            gone = missing & rnd.gone
            if missing - gone and now < ex.deadline:
                return None
            if missing:  # the attempt is dangling; never unmask it, re-mask over the survivors
                return self.retry(rnd, missing, now, out, "contribution")
            sa.unmask_sent = True
            sa.reveal_deadline = now + ctx.config.t_commit
            for peer in sorted(sa.members):
                ctx.outbox.post(out, MsgType.UNMASK, peer, rnd.number, now, "unmask", attempt=ex.attempt,
                                meta={"u": sorted(sa.members)})
        missing = sa.members - set(sa.reveals)
        if missing and now < (sa.reveal_deadline or now) and not (missing <= rnd.gone):
            return None
        if missing:
            if missing <= rnd.gone:
                # A gone peer's reveal can never arrive any more (its link delivered everything before it
                # closed), so this attempt can never be unmasked: retrying over the others is safe.
                return self.retry(rnd, missing, now, out, "reveal")
            return Concluded(frozenset(), "reveal_missing")  # a slow reveal could still expose a difference
        members = sorted(sa.members)
        ring_total = secagg.unmask([ex.contributions[p] for p in members], ctx.ring_spec,
                                   [sa.reveals[p] for p in members])
        return conclude_sum(ctx, rnd, ring_total, out)

    def retry(self, rnd: RoundState, missing: frozenset[bytes] | set[bytes], now: float, out: list[Action],
              what: str) -> Concluded | None:
        cfg, sa, ex = self.ctx.config, rnd.masked, rnd.exchange
        survivors = sa.members - missing
        if ex.attempt >= cfg.max_retries or len(survivors) < cfg.u_min:
            return Concluded(frozenset(), "retries_exhausted" if len(survivors) >= cfg.u_min
                             else "too_few_contributions")
        out.append(Log("info", f"round {rnd.number}: {len(missing)} {what}(s) missing; retry {ex.attempt + 1} "
                               f"over {len(survivors)} survivors"))
        ex.attempt += 1
        sa.members = frozenset(survivors)
        ex.contributions = {}
        sa.unmask_sent = False
        sa.reveals = {}
        sa.reveal_deadline = None
        ex.deadline = now + cfg.t_agg
        self.setup.send_setup(rnd, now, out)
        return None

    def deadline(self, rnd: RoundState) -> float | None:
        return rnd.masked.reveal_deadline if rnd.masked.unmask_sent else rnd.exchange.deadline
