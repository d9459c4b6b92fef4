"""Secure aggregation, setup: the aggregator fixes its contributor set U, each contributor checks it.

Aggregator i: U = its edges whose signed HELLO it holds; |U| < u_min keeps the own model (never
plaintext). SETUP (attempt 0) or RETRY (attempt > 0) to each j in U carries U, N_i, d_i and the
signed HELLOs k -> i of U, relayed so that j can verify every key it will mask with.

Contributor j refuses (counted in ``setups_refused``) unless: i is a proposed neighbour; U is a subset
of the N_i that i signed (and equal to its HELLO's list when known); |U| >= u_min; i is not in U;
attempt <= A_max (mode B: 0); a retry's set is a subset of the previous one; every relayed HELLO
verifies (signature, round, recipient i). A SETUP that arrives before the local step is kept until then.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fednode.aggregation import mh_weight
from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.inbox import peer_degree, peer_set
from fednode.gossip.state import Concluded, RoundState
from fednode.security.envelope import Message, MsgType, Reject
from fednode.security.shamir import threshold as shamir_threshold


@dataclass(frozen=True)
class SetupRequest:
    """A checked SETUP/RETRY: mask (or share) for ``aggregator`` over ``members`` at weight W_ij."""

    msg: Message
    aggregator: bytes
    attempt: int
    members: frozenset[bytes]
    keys: dict[bytes, secagg.RelayedKey]
    weight: float


class MaskedSetup:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ aggregator

    def start(self, rnd: RoundState, now: float, out: list[Action]) -> Concluded | None:
        """Attempt 0 over U = the edges with a signed HELLO; an abort when fewer than u_min."""
        ctx = self.ctx
        rnd.exchange.deadline = now + ctx.config.t_agg
        rnd.masked.members = frozenset(p for p in rnd.exchange.edges if (rnd.number, p) in ctx.hello_raw)
        if len(rnd.masked.members) < ctx.config.u_min:
            return Concluded(frozenset(), "neighbourhood_below_u_min")
        if ctx.plus:
            rnd.plus.threshold = shamir_threshold(len(rnd.masked.members))
        self.send_setup(rnd, now, out)
        return None

    def send_setup(self, rnd: RoundState, now: float, out: list[Action]) -> None:
        """SETUP (attempt 0) or RETRY (attempt > 0) to every contributor of the attempt's set U."""
        ctx, attempt = self.ctx, rnd.exchange.attempt
        members = sorted(rnd.masked.members)
        relayed = [ctx.hello_raw[(rnd.number, p)] for p in members if (rnd.number, p) in ctx.hello_raw]
        msg_type = MsgType.SETUP if attempt == 0 else MsgType.RETRY
        for peer in members:
            ctx.outbox.post(out, msg_type, peer, rnd.number, now, "setup" if attempt == 0 else "retry",
                            attempt=attempt,
                            meta={"u": members, "n": sorted(rnd.proposed), "d": rnd.degree, "h": relayed})
            if attempt:
                ctx.stats.retries_sent += 1

    # ------------------------------------------------------------------ contributor

    def refuse(self, out: list[Action], msg: Message, reason: str) -> None:
        self.ctx.stats.setups_refused[reason] += 1
        self.ctx.inbox.reject(out, Reject("bad_setup", sender=msg.sender, detail=reason))

    def check(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> SetupRequest | None:
        """The request if we should answer it now; None when refused, already answered or kept for later."""
        ctx = self.ctx
        cfg, mine = ctx.config, rnd.contributor
        agg, attempt = msg.sender, msg.attempt
        members, their_n, their_d = peer_set(msg, "u"), peer_set(msg, "n"), peer_degree(msg)
        relayed = msg.meta.get("h")
        if members is None or their_n is None or their_d is None or not isinstance(relayed, list):
            return self.refuse(out, msg, "malformed")
        if agg not in rnd.proposed or agg not in rnd.hello.epoch_keys:
            return self.refuse(out, msg, "not_a_neighbour")
        if attempt > (0 if ctx.plus else cfg.max_retries):
            return self.refuse(out, msg, "attempt_above_max")
        if ctx.me not in members or agg in members or len(members) < cfg.u_min:
            return self.refuse(out, msg, "bad_contributor_set")
        known = rnd.hello.received.get(agg)
        if not members <= their_n or (known is not None and known[0] != their_n) or their_d < len(their_n):
            return self.refuse(out, msg, "not_subset_of_neighbours")
        previous = mine.answered.get(agg)
        if previous is not None:
            if attempt <= previous[0]:
                return None  # a duplicate or an older attempt: answered already
            if not members <= previous[1]:
                return self.refuse(out, msg, "retry_not_subset")
        if rnd.half is None:
            mine.pending[agg] = msg  # answered when the local step is done
            return None
        keys: dict[bytes, secagg.RelayedKey] = {}
        for raw in relayed:
            key = hashlib.sha256(raw).digest() if isinstance(raw, bytes) else b""
            checked = ctx.relayed_ok.get(key)
            if checked is None and isinstance(raw, bytes):
                result = secagg.verify_relayed_hello(
                    raw, aggregator=agg, expected_sender=None, round=rnd.number, federation=cfg.federation,
                    allow_list=ctx.allow_list, now=now, timestamp_window_s=cfg.timestamp_window_s)
                if isinstance(result, Reject):
                    return self.refuse(out, msg, f"relayed_hello:{result.reason}")
                checked = ctx.relayed_ok[key] = result
            if checked is not None and checked.sender in members:
                keys[checked.sender] = checked
        return SetupRequest(msg, agg, attempt, members, keys, mh_weight(rnd.degree, their_d))
