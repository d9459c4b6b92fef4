"""Per-round overlay: who proposes to average with whom in round r.

Every node computes the overlay itself from its membership view and the round
number, with no coordinator. When two nodes have the same view they compute the
same graph; when views differ, HELLO resolves it (an edge exists only when both
sides list each other), so a stale view costs edges, never correctness.

:class:`RandomRegularOverlay` is the union of k/2 random Hamiltonian cycles: for
each c < k/2 the members are ordered by SHA-256(federation, round, c, id) and each
is linked to its two ring neighbours. Any one cycle makes the graph connected; the
union of independent cycles is an expander with high probability (spectral factor
about 0.7 at n = 100, k = 4, against 0.99 for a single ring lattice of the same
degree), and it is re-drawn every round. Degree is at most k (less when cycles
share an edge; the Metropolis-Hastings weights absorb that). Small federations get
a full mesh.

The rings are cached per round over a universe: the union of every view seen so far, at most the
allow-list (a node asks once per round; the simulator shares one instance among all its nodes). A
member's ring neighbour in a view is the next member of that view along the cached order of the
universe, which is exactly the neighbour in the view's own sorted ring: N hashes per cycle and
round instead of N per node. The universe only grows, so a view that was a subset of it stays one:
a frozen view already checked (the round machine's membership, replaced on change, never mutated)
is not checked again. That check was the one O(N) step per node and round left: at 1,000
simulated nodes it walked 64 MB of hash tables per round, and dropping it saved about 15 % of the
CPU (benchmarks/bench_simulator.py, "Seventh look").
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Protocol


class Overlay(Protocol):
    def neighbours(self, me: bytes, members: Iterable[bytes], round: int) -> frozenset[bytes]:
        """The peers ``me`` proposes as neighbours in ``round`` (never includes ``me``)."""


def _ordered(members: Iterable[bytes], key: bytes) -> list[bytes]:
    """Members sorted by a keyed hash: a deterministic pseudo-random permutation."""
    return sorted(set(members), key=lambda m: hashlib.sha256(key + m).digest())


class _Rings:
    """The k/2 cycle orders of one round over a universe of members (a superset of every view asked)."""

    def __init__(self, federation: str, round: int, cycles: int, universe: frozenset[bytes]) -> None:
        self.universe = universe
        self.orders: list[tuple[list[bytes], dict[bytes, int]]] = []
        for cycle in range(cycles):
            key = hashlib.sha256(b"fednode/v1/overlay" + federation.encode() + round.to_bytes(8, "big")
                                 + cycle.to_bytes(2, "big")).digest()
            ring = _ordered(universe, key)
            self.orders.append((ring, {m: i for i, m in enumerate(ring)}))

    def ring_neighbours(self, me: bytes, view: Set[bytes], out: set[bytes]) -> None:
        """Add me's successor and predecessor in each cycle restricted to ``view | {me}``."""
        for ring, pos in self.orders:
            n = len(ring)
            i = pos[me]
            for step in (1, -1):
                j = (i + step) % n
                while ring[j] not in view and ring[j] != me:
                    j = (j + step) % n
                out.add(ring[j])


@dataclass(frozen=True)
class RandomRegularOverlay:
    """Union of degree/2 random Hamiltonian cycles over the members, re-drawn every round."""

    federation: str
    degree: int = 4
    cache_rounds: int = 8
    """How many recent rounds keep their cached cycle orders."""
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False, hash=False)
    _universe: list = field(default_factory=lambda: [frozenset()], init=False, repr=False, compare=False,
                            hash=False)
    """One cell (the dataclass is frozen): every member any view has named, and each asker itself."""
    _checked: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    """me -> the last frozen view found inside the universe (one per asking node: bounded)."""

    def __post_init__(self) -> None:
        if self.degree < 1:
            raise ValueError("overlay degree must be >= 1")

    def neighbours(self, me: bytes, members: Iterable[bytes], round: int) -> frozenset[bytes]:
        # a set is used as is (no O(N) copy per call): the view is members | {me}
        others = members if isinstance(members, (set, frozenset)) else set(members)
        n = len(others) + (me not in others)
        if n <= self.degree + 1:
            return frozenset(others) - {me}
        rings = self._rings(round, me, others)
        out: set[bytes] = set()
        rings.ring_neighbours(me, others, out)
        out.discard(me)
        return frozenset(out)

    def _rings(self, round: int, me: bytes, others: Set[bytes]) -> _Rings:
        universe = self._universe[0]
        if self._checked.get(me) is not others:
            if me not in universe or not others <= universe:
                universe = self._universe[0] = universe.union(others, (me,))
            if type(others) is frozenset:  # immutable: still a subset next time it is asked
                self._checked[me] = others
        rings = self._cache.get(round)
        if rings is None or rings.universe is not universe:
            rings = _Rings(self.federation, round, max(1, self.degree // 2), universe)
            self._cache[round] = rings
            self._cache.move_to_end(round)
            while len(self._cache) > self.cache_rounds:
                self._cache.popitem(last=False)
        return rings


@dataclass(frozen=True)
class StaticOverlay:
    """A fixed graph (tests, simulations of a given topology), restricted to live members."""

    adjacency: Mapping[bytes, frozenset[bytes]]

    def neighbours(self, me: bytes, members: Iterable[bytes], round: int) -> frozenset[bytes]:
        live = set(members)
        return frozenset(p for p in self.adjacency.get(me, frozenset()) if p in live and p != me)

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[bytes, bytes]]) -> "StaticOverlay":
        adj: dict[bytes, set[bytes]] = {}
        for a, b in edges:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        return cls({k: frozenset(v) for k, v in adj.items()})
