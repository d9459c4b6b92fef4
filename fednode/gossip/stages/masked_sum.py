"""Secure aggregation, aggregator side, both modes: the unmasked ring sum becomes S_i, or is discarded.

S_i = dec(sum_j enc(W_ij x_j)) must satisfy ||S_i||_inf <= B_max * sum W_ij (PROTOCOL §3 step 9): a
wrong self-mask, a contributor that masked over another set, or garbage ring values decode to numbers
spread over the whole ring, so an implausible sum aborts the round instead of being mixed.
"""

from __future__ import annotations

import numpy as np

from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action, Log
from fednode.gossip.state import Concluded, RoundState


def conclude_sum(ctx: NodeContext, rnd: RoundState, ring_total: np.ndarray, out: list[Action]) -> Concluded:
    """Decode S_i over the attempt's set; an implausible sum is discarded (abort), never mixed."""
    members = sorted(rnd.masked.members)
    weight_sum = sum(rnd.exchange.edges[p] for p in members)
    rnd.masked.digest, total = secagg.open_sum(ring_total, weight_sum, bound=ctx.config.max_abs or secagg.B_MAX,
                                               n=len(members))
    if total is None:
        out.append(Log("warning", f"round {rnd.number}: unmasked sum fails the plausibility check; discarded"))
        return Concluded(frozenset(), "implausible_sum")
    rnd.masked.total = total
    return Concluded(frozenset(rnd.masked.members))
