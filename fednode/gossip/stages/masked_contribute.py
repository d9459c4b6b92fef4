"""Secure aggregation, contributor side: noise -> encode -> mask -> CONTRIBUTE, to one aggregator only.

:meth:`MaskedContribute.send` does it for both modes (mode B calls it once the shares are relayed);
mode A answers a checked SETUP/RETRY with it at once (:meth:`~MaskedContribute.on_setup`), and
reveals b^a (:meth:`~MaskedContribute.answer_unmask`) only for the attempt it answered last; having
revealed, it answers no later attempt of that aggregator in this round (``masked_setup`` refuses
older and equal attempts), so an aggregator can unmask at most one attempt per round.

y_j = enc(W_ij x_j) + sum_k sigma_jk PRG(s_jk) + PRG(b_j) over the checked set U (mode B: U1), with
pairwise seeds fresh per (round, attempt, aggregator) and a self-mask b_j that only j knows until it
reveals it (mode A) or its shares are reconstructed (mode B). With distributed DP each message carries
a fresh share of the aggregator's Gaussian noise. The '<u8' payload is sealed under the ring spec.
"""

from __future__ import annotations

import os

from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action, Log
from fednode.gossip.inbox import peer_set
from fednode.gossip.stages.masked_setup import MaskedSetup, SetupRequest
from fednode.gossip.state import RoundState
from fednode.security.envelope import Message, MsgType, Reject
from fednode.security.kdf import KeyAgreementError
from fednode.security.masking import TooFewContributorsError, derive_mask_seeds
from fednode.security.noise import add_gaussian, distributed_sigma
from fednode.security.ring import RingEncodingError


class MaskedContribute:
    def __init__(self, ctx: NodeContext, setup: MaskedSetup) -> None:
        self.ctx = ctx
        self.setup = setup

    def send(self, rnd: RoundState, msg: Message, agg: bytes, attempt: int, members: frozenset[bytes],
             epks: dict[bytes, bytes], weight: float, now: float, out: list[Action],
             self_mask: bytes | None = None) -> None:
        """CONTRIBUTE y = enc(W x) + pairwise masks over ``members`` + a self-mask, to ``agg`` only."""
        ctx = self.ctx
        cfg = ctx.config
        assert rnd.half is not None
        try:
            seeds = derive_mask_seeds(rnd.hello.epoch_keys[agg], ctx.me, epks, federation_id=cfg.federation,
                                      round=rnd.number, attempt=attempt, aggregator_id=agg, contributor_ids=members)
            value = rnd.half
            if cfg.dp_distributed is not None:  # our share of the aggregator's noise, fresh per message
                z, clip, colluders = cfg.dp_distributed
                sigma = distributed_sigma(z, clip, len(members), min(colluders, len(members) - 1))
                value = add_gaussian(rnd.half, sigma, ctx.dp_rng)
            encoded = secagg.encode_scaled(value, ctx.spec, weight, bound=cfg.max_abs or secagg.B_MAX)
            self_mask = self_mask or os.urandom(32)
            masked = secagg.mask_encoded(encoded, ctx.ring_spec, self_id=ctx.me, aggregator=agg,
                                         contributors=members, seeds=seeds, self_mask_seed=self_mask,
                                         min_contributors=cfg.u_min)
        except KeyError:
            self.setup.refuse(out, msg, "missing_partner_key")
            return
        except KeyAgreementError:
            self.setup.refuse(out, msg, "bad_partner_key")
            return
        except (RingEncodingError, TooFewContributorsError) as exc:
            out.append(Log("error", f"cannot mask our model for {agg.hex()[:12]}: {exc}"))
            self.setup.refuse(out, msg, "unencodable_model")
            return
        rnd.contributor.answered[agg] = (attempt, members)
        rnd.contributor.self_masks[(agg, attempt)] = self_mask
        data = ctx.outbox.seal(MsgType.CONTRIBUTE, agg, rnd.number, now, attempt=attempt, arrays=masked,
                               spec=ctx.ring_spec, meta={"d": rnd.degree})
        ctx.stats.masked_contributions += 1
        ctx.outbox.send(out, agg, data, "contribute")

    # ------------------------------------------------------------------ mode A

    def on_setup(self, rnd: RoundState, req: SetupRequest, now: float, out: list[Action]) -> None:
        """Mode A: mask over the checked set U at once."""
        self.send(rnd, req.msg, req.aggregator, req.attempt, req.members, {p: k.epk for p, k in req.keys.items()},
                  req.weight, now, out)

    def answer_unmask(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """Mode A: reveal b^a only for the attempt we answered last; older attempts stay dangling forever."""
        agg, mine = msg.sender, rnd.contributor
        answered = mine.answered.get(agg)
        if answered is None or answered[0] != msg.attempt or peer_set(msg, "u") != answered[1]:
            self.ctx.inbox.reject(out, Reject("bad_unmask", sender=agg,
                                              detail="not the attempt we contributed to last"))
            return
        seed = mine.self_masks.get((agg, msg.attempt))
        if seed is None:
            return
        mine.revealed[agg] = msg.attempt
        for key in [k for k in mine.self_masks if k[0] == agg and k[1] != msg.attempt]:
            del mine.self_masks[key]
        self.ctx.outbox.post(out, MsgType.REVEAL, agg, rnd.number, now, "reveal", attempt=msg.attempt,
                             meta={"b": seed})
