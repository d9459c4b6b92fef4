"""Secure aggregation, contributor side: noise -> encode -> mask -> CONTRIBUTE, to one aggregator only.

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
from fednode.gossip.stages.masked_setup import MaskedSetup
from fednode.gossip.state import RoundState
from fednode.security.envelope import Message, MsgType
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
