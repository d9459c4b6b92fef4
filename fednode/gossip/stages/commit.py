"""The COMMIT exchange: tell every edge which contributions we used, learn which of ours were used.

F_i = {j in U_i : i in U_j} (mutual use only) keeps W symmetric, so the federation's mean is exact
whenever COMMITs arrive. A lost COMMIT is re-sent (nudge at t_commit/3; ``w`` asks the peer for its
own); one still missing at t_commit excludes that peer and counts as drift. Then the round is mixed
(:mod:`fednode.gossip.mix`). A masked sum cannot drop one contributor (that would reveal the
difference), so with secure aggregation a contributor that did not use us is drift, not removed.
"""

from __future__ import annotations

from fednode.gossip.context import NodeContext
from fednode.gossip.events import Action
from fednode.gossip.inbox import peer_set
from fednode.gossip.mix import apply_masked_sum, mix_neighbours
from fednode.gossip.state import RoundEnd, RoundState
from fednode.security.envelope import Message, MsgType, Reject


class CommitStage:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def enter(self, rnd: RoundState, used: frozenset[bytes], abort: str | None, now: float,
              out: list[Action]) -> None:
        """Fix U_i and tell every edge whom we used (COMMIT); then wait for theirs."""
        st, cfg = rnd.commit, self.ctx.config
        st.used, st.abort = used, abort
        st.aggregated_at = now
        st.deadline = now + cfg.t_commit
        st.nudge_at = now + cfg.t_commit / 3
        for peer in sorted(rnd.exchange.edges):
            if peer not in rnd.gone:
                self.send(rnd, peer, now, out)

    def send(self, rnd: RoundState, peer: bytes, now: float, out: list[Action]) -> None:
        """COMMIT(U_i) to ``peer``; ``w`` lists the peers whose COMMIT we still await (they re-send theirs)."""
        st = rnd.commit
        assert st.used is not None
        attempt = st.sends.get(peer, 0)
        if attempt > self.ctx.config.max_retries + 4:
            return
        st.sends[peer] = attempt + 1
        waiting = sorted(st.used.difference(st.commits, rnd.gone)) if rnd is self.ctx.current else []
        self.ctx.outbox.post(out, MsgType.COMMIT, peer, rnd.number, now, "commit", attempt=attempt,
                             meta={"u": sorted(st.used), "d": rnd.degree, "w": waiting})

    def on_commit(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """A COMMIT of the current round: record U_j, and answer if the sender still waits for ours."""
        used = peer_set(msg, "u")
        if used is None:
            self.ctx.inbox.reject(out, Reject("bad_meta", sender=msg.sender, detail="commit"))
            return
        rnd.commit.commits.setdefault(msg.sender, used)
        self.answer_request(rnd, msg, now, out)

    def on_previous(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """A COMMIT for a round we finished: re-send ours if asked; a late one from a peer we used
        after the timeout is drift (it may have used us while we excluded it; plaintext only)."""
        if rnd.commit.used is None:
            return
        self.answer_request(rnd, msg, now, out)
        if not self.ctx.secure and msg.sender in rnd.commit.used and msg.sender not in rnd.commit.commits:
            self.ctx.stats.drift_events += 1

    def answer_request(self, rnd: RoundState, msg: Message, now: float, out: list[Action]) -> None:
        """The sender still waits for our COMMIT (ours was lost): send it again.

        Only a re-sent COMMIT (attempt >= 1, the nudge at t_commit/3) asks: a first COMMIT that lists
        us in ``w`` nearly always crossed ours in flight, and answering it was a quarter of all
        messages of a round (4 of 16 per node at degree 4) for nothing."""
        if msg.attempt < 1:
            return
        waiting = peer_set(msg, "w")
        if rnd.commit.used is not None and waiting and self.ctx.me in waiting:
            self.send(rnd, msg.sender, now, out)

    def advance(self, rnd: RoundState, now: float, out: list[Action]) -> RoundEnd | None:
        """None while COMMITs are outstanding; then how the round ends."""
        st, ctx = rnd.commit, self.ctx
        assert st.used is not None and st.deadline is not None and rnd.half is not None
        if not st.used:
            return RoundEnd(rnd.half, {}, st.abort or "too_few_contributions")
        waiting = st.used.difference(st.commits, rnd.gone)
        if waiting and now < st.deadline:
            if now >= st.nudge_at:
                # our COMMIT or theirs may be lost: re-send ours, asking for theirs
                st.nudge_at = now + ctx.config.t_commit / 3
                for peer in sorted(waiting):
                    self.send(rnd, peer, now, out)
            return None
        edges = rnd.exchange.edges
        if ctx.secure:
            assert rnd.masked.total is not None
            weights = {p: edges[p] for p in sorted(st.used)}
            model = apply_masked_sum(rnd.half, ctx.spec, rnd.masked.total, weights)
            drift = tuple(sorted(p for p in st.used if p not in st.commits or ctx.me not in st.commits[p]))
            return RoundEnd(model, weights, None, drift, rnd.masked.digest)
        final = {p for p in st.used if p in st.commits and ctx.me in st.commits[p]}
        drift = tuple(sorted(p for p in st.used if p not in st.commits))
        if len(final) < ctx.config.min_contributors:
            final = set()
        if not final:
            return RoundEnd(rnd.half, {}, "no_mutual_use", drift)
        weights = {p: edges[p] for p in sorted(final)}
        scorer = ctx.contribution_filter
        if scorer is not None:
            def scorer(own, neighbours, w, _score=scorer):  # noqa: E306 - the filter's drops feed exclusion
                kept = _score(own, neighbours, w)
                ctx.inbox.exclusions.suspected(sorted(set(w).difference(kept)), rnd.number, "filtered")
                return kept
        model = mix_neighbours(ctx.config, rnd.half, {p: rnd.exchange.contributions[p] for p in weights}, weights,
                               scorer, lambda far: ctx.inbox.exclusions.suspected(far, rnd.number, "far"))
        return RoundEnd(model, weights, None, drift)

    def deadline(self, rnd: RoundState) -> float | None:
        assert rnd.commit.deadline is not None
        return min(rnd.commit.deadline, rnd.commit.nudge_at)
