"""Mode B (SecAgg+), contributor side: share the secrets, open the relayed bundles, mask, reveal shares.

On a checked SETUP, j sends SHARES: t-of-|U| Shamir shares of its self-mask seed b_j and of its
masking key for this aggregator, one bundle per other contributor sealed under the separate
share-encryption keys (never the shared one). On RELAY (U1 fixed, the bundles addressed to j) it
masks over U1. On UNMASK it reveals, for each j' of U1, the self-mask share if j' survived and the
key share if it dropped, never both, and only once per aggregator and round.
"""

from __future__ import annotations

import os

from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.inbox import peer_set
from fednode.gossip.stages.masked_contribute import MaskedContribute
from fednode.gossip.stages.masked_setup import MaskedSetup, SetupRequest
from fednode.gossip.state import RoundState
from fednode.security.aead import BundleDecryptionError, open_bundle, seal_bundle
from fednode.security.envelope import Message, MsgType, Reject
from fednode.security.kdf import KeyAgreementError
from fednode.security.shamir import ShamirError
from fednode.security.shamir import threshold as shamir_threshold


class PlusContributor:
    def __init__(self, ctx: NodeContext, setup: MaskedSetup, contribute: MaskedContribute) -> None:
        self.ctx = ctx
        self.setup = setup
        self.contribute = contribute

    def on_setup(self, rnd: RoundState, req: SetupRequest, now: float, out: list[Action]) -> None:
        """SHARES to the aggregator: our secrets, t-of-|U| shared, one sealed bundle per other contributor."""
        ctx, agg, msg, keys = self.ctx, req.aggregator, req.msg, req.keys
        others = req.members - {ctx.me}
        if not all(p in keys and keys[p].cpk is not None for p in others):
            self.setup.refuse(out, msg, "missing_partner_key")
            return
        b_seed = os.urandom(32)
        t = shamir_threshold(len(req.members))
        bundles = secagg.share_secrets(b_seed, rnd.hello.epoch_keys[agg].private_bytes(), req.members, t)
        enc = rnd.hello.enc_keys[agg]
        sealed = []
        try:
            for peer in sorted(others):
                sealed.append([peer, seal_bundle(enc, keys[peer].cpk, bundles[peer],
                                                 federation_id=ctx.config.federation, round=rnd.number,
                                                 sender_id=ctx.me, recipient_id=peer)])
        except KeyAgreementError:
            self.setup.refuse(out, msg, "bad_partner_key")
            return
        rnd.contributor.answered[agg] = (0, req.members)
        rnd.contributor.own[agg] = {"b": b_seed, "own": bundles[ctx.me], "keys": keys, "w": req.weight, "t": t,
                                    "setup": msg}
        ctx.outbox.post(out, MsgType.SHARES, agg, rnd.number, now, "shares", meta={"s": sealed})

    def on_relay(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """The aggregator relays the bundles addressed to us and fixes U1 (who shared): now mask over U1."""
        ctx, agg, mine = self.ctx, msg.sender, rnd.contributor
        own = mine.own.get(agg)
        u1, relayed = peer_set(msg, "u1"), msg.meta.get("s")
        if own is None or agg in mine.held or u1 is None or not isinstance(relayed, list):
            return
        members = mine.answered[agg][1]
        if ctx.me not in u1 or not u1 <= members or len(u1) < max(ctx.config.u_min, own["t"]):
            self.setup.refuse(out, msg, "bad_share_set")
            return
        held: dict[bytes, tuple] = {ctx.me: secagg.open_share_bundle(own["own"])}
        for item in relayed:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in u1 and isinstance(item[1], bytes)):
                continue
            sender, blob = item
            try:
                plain = open_bundle(rnd.hello.enc_keys[agg], own["keys"][sender].cpk, blob,
                                    federation_id=ctx.config.federation, round=rnd.number, sender_id=sender,
                                    recipient_id=ctx.me)
                held[sender] = secagg.open_share_bundle(plain)
            except (BundleDecryptionError, ShamirError, KeyAgreementError, KeyError):
                ctx.inbox.reject(out, Reject("bad_shares", sender=sender, detail="bundle failed to open"))
        if set(held) != set(u1):
            self.setup.refuse(out, msg, "missing_shares")
            return
        mine.held[agg] = held
        self.contribute.send(rnd, own["setup"], agg, 0, u1, {p: k.epk for p, k in own["keys"].items()}, own["w"],
                             now, out, self_mask=own["b"])
        mine.answered[agg] = (0, u1)

    def answer_unmask(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """For each contributor of U1: its self-mask share if it survived, its key share if it dropped."""
        ctx, agg, mine = self.ctx, msg.sender, rnd.contributor
        held = mine.held.get(agg)
        survivors, dropped = peer_set(msg, "u"), peer_set(msg, "x")
        own = mine.own.get(agg)
        if held is None or own is None or survivors is None or dropped is None or agg in mine.revealed:
            ctx.inbox.reject(out, Reject("bad_unmask", sender=agg, detail="nothing to reveal"))
            return
        if (survivors & dropped or (survivors | dropped) != set(held) or ctx.me not in survivors
                or len(survivors) < own["t"]):
            ctx.inbox.reject(out, Reject("bad_unmask", sender=agg, detail="survivor/dropout sets inconsistent"))
            return
        mine.revealed[agg] = 0
        ctx.outbox.post(out, MsgType.REVEAL, agg, rnd.number, now, "reveal", meta={
            "bs": [[p, held[p][0]] for p in sorted(survivors)], "ks": [[p, held[p][1]] for p in sorted(dropped)]})
