"""Mode B (SecAgg+), aggregator side: shares -> relay and fix U1 -> masked inputs from U2 -> unmask.

1. SHARES from U (each j's sealed bundles for the others; we relay them, we cannot open them).
   U1 = those that shared, |U1| >= max(t, u_min); RELAY to each k in U1 the bundles addressed to k.
2. CONTRIBUTE from U1 within t_agg; U2 = those that arrived, |U2| >= max(t, u_min).
3. UNMASK(U2, x = U1 - U2) -> each holder sends its b-shares of U2 and key-shares of U1 - U2; from t of
   them S_i = sum y - PRG(b_j) for j in U2, minus the dropped contributors' dangling pairwise masks,
   rebuilt from their reconstructed keys (checked against their signed HELLO). No retry is needed.
"""

from __future__ import annotations

from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action, Log
from fednode.gossip.stages.masked_setup import MaskedSetup
from fednode.gossip.stages.masked_sum import conclude_sum
from fednode.gossip.state import AGGREGATE, Concluded, RoundState
from fednode.security.envelope import Message, MsgType, Reject
from fednode.security.kdf import EpochKeys, KeyAgreementError, mask_seed
from fednode.security.masking import apply_prg_terms, mask_partners, mask_sign
from fednode.security.shamir import ShamirError
from fednode.security.shamir import threshold as shamir_threshold


class PlusAggregator:
    def __init__(self, ctx: NodeContext, setup: MaskedSetup) -> None:
        self.ctx = ctx
        self.start = setup.start

    def on_shares(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """A contributor's sealed bundles for the others of U (we only relay them; we cannot open them)."""
        sealed, members, sb = msg.meta.get("s"), rnd.masked.members, rnd.plus
        if (self.ctx.phase != AGGREGATE or sb.phase != "shares" or msg.sender not in members
                or msg.sender in sb.bundles or not isinstance(sealed, list)):
            return
        bundles = {item[0]: item[1] for item in sealed if isinstance(item, list) and len(item) == 2
                   and isinstance(item[0], bytes) and isinstance(item[1], bytes) and item[0] in members}
        if set(bundles) != members - {msg.sender}:
            self.ctx.inbox.reject(out, Reject("bad_shares", sender=msg.sender,
                                              detail="not one bundle per other contributor"))
            return
        sb.bundles[msg.sender] = bundles

    def on_contribution(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        ex = rnd.exchange
        if rnd.plus.phase != "contrib":
            return
        if (self.ctx.phase == AGGREGATE and not rnd.masked.unmask_sent and msg.sender in rnd.plus.u1
                and msg.attempt == ex.attempt and msg.sender not in ex.contributions):
            ex.contributions[msg.sender] = msg.arrays

    def on_reveal(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        sa, sb = rnd.masked, rnd.plus
        if sb.phase != "unmask" or msg.sender not in sa.members or msg.sender in sb.reveals:
            return
        parsed = []
        for key, expected in (("bs", sa.members), ("ks", sb.u1 - sa.members)):
            items = msg.meta.get(key)
            if not isinstance(items, list):
                self.ctx.inbox.reject(out, Reject("bad_meta", sender=msg.sender, detail="reveal"))
                return
            got = {it[0]: it[1] for it in items if isinstance(it, list) and len(it) == 2 and isinstance(it[0], bytes)}
            if set(got) != set(expected):
                self.ctx.inbox.reject(out, Reject("bad_meta", sender=msg.sender, detail=f"reveal {key} set"))
                return
            parsed.append(got)
        sb.reveals[msg.sender] = (parsed[0], parsed[1])

    def advance(self, rnd: RoundState, now: float, out: list[Action]) -> Concluded | None:
        ctx, sa, sb, ex = self.ctx, rnd.masked, rnd.plus, rnd.exchange
        cfg = ctx.config
        assert ex.deadline is not None
        t = sb.threshold or shamir_threshold(len(sa.members))
        if sb.phase == "shares":
            missing = sa.members - set(sb.bundles)
            if missing - rnd.gone and now < ex.deadline:
                return None
            u1 = frozenset(sa.members - missing)
            if len(u1) < max(t, cfg.u_min):
                return Concluded(frozenset(), "too_few_contributions")
            sb.u1 = u1
            for peer in sorted(u1):
                mine = [[sender, bundles[peer]] for sender, bundles in sorted(sb.bundles.items())
                        if sender in u1 and sender != peer and peer in bundles]
                ctx.outbox.post(out, MsgType.RELAY, peer, rnd.number, now, "shares",
                                meta={"u1": sorted(u1), "s": mine})
            sb.phase = "contrib"
            ex.deadline = now + cfg.t_agg
            return None
        if sb.phase == "contrib":
            missing = sb.u1 - set(ex.contributions)
            if missing - rnd.gone and now < ex.deadline:
                return None
            u2 = sb.u1 - missing
            if len(u2) < max(t, cfg.u_min):
                return Concluded(frozenset(), "too_few_contributions")
            if missing:
                out.append(Log("info", f"round {rnd.number}: {len(missing)} contributor(s) dropped after sharing; "
                                       "recovering their masks from shares"))
            sa.members = frozenset(u2)
            sb.phase = "unmask"
            sa.unmask_sent = True
            sa.reveal_deadline = now + cfg.t_commit
            for peer in sorted(u2):
                ctx.outbox.post(out, MsgType.UNMASK, peer, rnd.number, now, "unmask",
                                meta={"u": sorted(u2), "x": sorted(sb.u1 - u2)})
            return None
        missing = sa.members - set(sb.reveals)
        if missing and now < (sa.reveal_deadline or now) and not (missing <= rnd.gone):
            return None
        if len(sb.reveals) < t:
            return Concluded(frozenset(), "reveal_missing")
        assert rnd.half is not None
        try:
            terms = self._unmask_terms(rnd, t)
        except (ShamirError, KeyAgreementError, ValueError) as exc:
            out.append(Log("warning", f"round {rnd.number}: cannot reconstruct the masks ({exc}); discarded"))
            return Concluded(frozenset(), "bad_shares")
        members = sorted(sa.members)
        ring_total = apply_prg_terms(secagg.unmask([ex.contributions[p] for p in members], ctx.ring_spec, []),
                                     terms)
        return conclude_sum(ctx, rnd, ring_total, out)

    def _unmask_terms(self, rnd: RoundState, t: int) -> list[tuple[int, bytes]]:
        """The PRG terms to subtract: survivors' self-masks, and dropped contributors' pairwise masks."""
        sa, sb, hello = rnd.masked, rnd.plus, rnd.hello
        terms = []
        for j in sorted(sa.members):
            shares = [rev[0][j] for rev in sb.reveals.values() if j in rev[0]]
            terms.append((-1, secagg.reconstruct_secret(shares, t)))
        for j in sorted(sb.u1 - sa.members):  # dropped after sharing: cancel its dangling masks
            shares = [rev[1][j] for rev in sb.reveals.values() if j in rev[1]]
            keys = EpochKeys.from_private_bytes(secagg.reconstruct_secret(shares, t))
            if keys.public_bytes != hello.epk.get(j):
                raise ShamirError("reconstructed key does not match the signed HELLO")
            for k in mask_partners(j, sb.u1):
                if k in sa.members:
                    seed = mask_seed(keys.shared_secret(hello.epk[k]), federation_id=self.ctx.config.federation,
                                     round=rnd.number, attempt=0, aggregator_id=self.ctx.me, id_j=j, id_k=k)
                    terms.append((-mask_sign(k, j), seed))
        return terms

    def deadline(self, rnd: RoundState) -> float | None:
        return rnd.masked.reveal_deadline if rnd.masked.unmask_sent else rnd.exchange.deadline
