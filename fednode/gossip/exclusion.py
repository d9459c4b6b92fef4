"""Who stays out of this node's overlay view, and until which round (PROTOCOL §4, "Exclusion").

The overlay of each round is drawn over the members a node knows (:mod:`fednode.gossip.overlay`).
A member that sends provably bad content (a signed message of its own that is non-finite, out of
bounds or of the wrong layout) is taken out of that view for ``RoundConfig.exclude_rounds`` rounds.
Every honest node that receives such a message does this on its own, so within a few re-drawn rounds
the honest views agree again without the liar, and the overlay gives the honest nodes honest
neighbours instead of edges whose contribution is refused every round. No message is added: the
proof is the liar's own signed message, and each receiver judges it alone.

A neighbour that is suspected in ``filter_exclude_after`` of the last ``filter_window`` rounds is
excluded the same way. Suspicion is either the validation-score filter dropping its contribution
("filtered") or, with the clipped aggregator, its distance exceeding ``far_ratio`` times the round's
clipping radius ("far"); both count towards the same window. That is a local judgement, not a proof;
measured on digits (Dirichlet 0.5, 10 nodes, 2 attackers), the filter drops an honest neighbour 0-2
times in 40 rounds and an attacker 7-24 times, and an honest neighbour is beyond 2 tau in about 1 of
900 neighbour-rounds, a sign-flipping attacker in about half. Wrongly excluding an honest peer costs
edges (views disagree), never correctness.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Set

from fednode.gossip.config import RoundConfig
from fednode.gossip.state import NodeStats


class Exclusions:
    """Peer -> last excluded round, plus the filter's recent drops per peer."""

    def __init__(self, config: RoundConfig, stats: NodeStats) -> None:
        self.config = config
        self.stats = stats
        self.until: dict[bytes, int] = {}
        self._drops: dict[bytes, deque[int]] = {}

    def _exclude(self, peer: bytes, round: int, why: str) -> None:
        until = round + self.config.exclude_rounds
        if peer not in self.until:
            self.stats.exclusions[peer] += 1
            self.stats.exclusion_reasons[why] += 1
        if self.until.get(peer, -1) < until:
            self.until[peer] = until

    def proven(self, peer: bytes, round: int) -> None:
        """``peer`` signed bad content for ``round``."""
        if self.config.exclude_rounds:
            self._exclude(peer, round, "proven")

    def suspected(self, peers: Iterable[bytes], round: int, why: str) -> None:
        """These neighbours were suspected in ``round``: ``why`` is "filtered" (the validation filter
        dropped their contribution) or "far" (beyond ``far_ratio`` times the clipping radius)."""
        after, window = self.config.filter_exclude_after, self.config.filter_window
        if not after or not self.config.exclude_rounds:
            return
        for peer in peers:
            recent = self._drops.setdefault(peer, deque())
            recent.append(round)
            while recent and recent[0] <= round - window:
                recent.popleft()
            if len(recent) >= after:
                recent.clear()
                self._exclude(peer, round, why)

    def view(self, members: Set[bytes], number: int) -> Set[bytes]:
        """The members the overlay of round ``number`` is drawn over: all but the excluded ones."""
        if not self.until:
            return members
        for peer in [p for p, last in self.until.items() if last < number]:
            del self.until[peer]
        return members - self.until.keys() if self.until else members
