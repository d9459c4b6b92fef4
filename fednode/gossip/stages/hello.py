"""Stage 1, neighbour agreement: HELLO(r, N_i, d_i) to each proposed neighbour, edges from the answers.

E_i = {j in N_i : j's HELLO lists i} is symmetric by construction. With secure aggregation a HELLO
also carries a fresh X25519 key per (round, aggregator) (``epk``; mode B also ``cpk``), so a key
revealed later exposes nothing else, and only explicit HELLOs make edges (masking needs the key).
"""

from __future__ import annotations

from collections.abc import Iterable

from fednode.aggregation import mh_weight
from fednode.gossip import secagg
from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.inbox import peer_degree, peer_set
from fednode.gossip.state import RoundState
from fednode.security.envelope import Message, MsgType, Reject
from fednode.security.kdf import EpochKeys


class HelloStage:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def send(self, rnd: RoundState, now: float, out: list[Action], attempt: int = 0,
             only: Iterable[bytes] | None = None) -> None:
        """HELLO goes to each proposed neighbour, recipient-bound: O(degree) messages, not O(n)."""
        ctx, hello = self.ctx, rnd.hello
        for peer in sorted(rnd.proposed if only is None else only):
            meta = {"n": sorted(rnd.proposed), "d": rnd.degree, "epk": b""}
            if ctx.secure:
                meta["epk"] = hello.epoch_keys.setdefault(peer, EpochKeys.generate()).public_bytes
            if ctx.plus:  # and a separate one for share bundles, which is never secret-shared
                meta["cpk"] = hello.enc_keys.setdefault(peer, EpochKeys.generate()).public_bytes
            ctx.outbox.post(out, MsgType.HELLO, peer, rnd.number, now, "hello", attempt=attempt, meta=meta)

    def on_hello(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> int | None:
        """Record j's HELLO; its degree when it lists us and may make a late edge (plaintext only).

        A HELLO from a peer we do not propose is answered once with our own HELLO, which does not list
        it: so j learns at once that there is no edge, instead of waiting ``t_hello`` for us. Views
        differ after a join, a crash or an exclusion, and without the answer each such edge cost its
        proposer the whole HELLO wait (a 40-round Byzantine cell went from ~45 s to ~120 s)."""
        ctx = self.ctx
        their_n, their_d = peer_set(msg, "n"), peer_degree(msg)
        if their_n is None or their_d is None or their_d < len(their_n):
            ctx.inbox.reject(out, Reject("bad_meta", sender=msg.sender, detail="hello"))
            return None
        first = msg.sender not in rnd.hello.received
        rnd.hello.received.setdefault(msg.sender, (their_n, their_d))
        if first and ctx.me in their_n and msg.sender not in rnd.proposed and msg.sender not in rnd.gone:
            self.send(rnd, now, out, only=(msg.sender,))
        if ctx.secure:
            epk, cpk = secagg.hello_epk(msg), secagg.hello_epk(msg, "cpk")
            if epk is not None and (cpk is not None or not ctx.plus):
                rnd.hello.epk.setdefault(msg.sender, epk)
                if cpk is not None:
                    rnd.hello.cpk.setdefault(msg.sender, cpk)
            return None
        return their_d if ctx.me in their_n else None

    def candidates(self, rnd: RoundState) -> dict[bytes, int]:
        """Peers that list us (HELLO or implied) and that we list -> their degree."""
        me, out = self.ctx.me, {}
        for peer, (their_n, their_d) in rnd.hello.received.items():
            if me in their_n and peer in rnd.proposed:
                out[peer] = their_d
        for peer, their_d in rnd.hello.implied.items():
            if peer in rnd.proposed and peer not in out:
                out[peer] = their_d
        return {p: d for p, d in out.items() if p not in rnd.gone}

    def advance(self, rnd: RoundState, now: float, out: list[Action]) -> dict[bytes, float] | None:
        """None while the local step or HELLOs are outstanding; then the edges E_i -> W_ij (maybe empty)."""
        hello, cfg = rnd.hello, self.ctx.config
        waiting = rnd.proposed.difference(hello.received, hello.implied, rnd.gone)
        if waiting:  # a banned neighbour's HELLO would be refused anyway: not waited for
            banned = self.ctx.inbox.offenders
            waiting = {p for p in waiting if not banned.is_banned(p, now)}
        if waiting and not hello.resent and now >= rnd.started + cfg.t_hello / 2:
            hello.resent = True  # one re-broadcast against loss
            self.send(rnd, now, out, attempt=1, only=waiting)
        if rnd.half is None or (waiting and now < hello.deadline):
            return None
        candidates = self.candidates(rnd)
        if self.ctx.secure:  # masking needs each contributor's signed key for us: explicit HELLOs only
            candidates = {p: d for p, d in candidates.items() if p in hello.epk and p in hello.received}
        return {p: mh_weight(rnd.degree, d) for p, d in candidates.items()}

    def deadline(self, rnd: RoundState, now: float) -> float | None:
        """Once the hello wait is over only LocalStepDone can move us: no timer (no busy loop)."""
        resend = None if rnd.hello.resent else rnd.started + self.ctx.config.t_hello / 2
        pending = [t for t in (rnd.hello.deadline, resend) if t is not None and t > now]
        return min(pending) if pending else None
