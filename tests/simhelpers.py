"""Shared helpers for simulator tests: graphs, runs, oracles."""

from __future__ import annotations

import numpy as np

from fednode.aggregation import metropolis_hastings_weights, spectral_factor
from fednode.gossip.config import RoundConfig
from fednode.gossip.overlay import StaticOverlay
from fednode.testnet.simulator import NetworkConditions, Simulator


def random_connected_graph(n: int, extra_edge_p: float, seed: int) -> np.ndarray:
    """A random spanning tree plus independent extra edges: always connected."""
    rng = np.random.default_rng(seed)
    A = np.zeros((n, n), dtype=bool)
    order = rng.permutation(n)
    for k in range(1, n):
        a, b = order[k], order[rng.integers(k)]
        A[a, b] = A[b, a] = True
    extra = np.triu(rng.random((n, n)) < extra_edge_p, 1)
    A |= extra | extra.T
    np.fill_diagonal(A, False)
    return A


def static_overlay_factory(adjacency: np.ndarray):
    def factory(peer_ids: list[bytes]) -> StaticOverlay:
        n = len(peer_ids)
        return StaticOverlay({peer_ids[i]: frozenset(peer_ids[j] for j in range(n) if adjacency[i, j])
                              for i in range(n)})
    return factory


def lam(adjacency: np.ndarray) -> float:
    return spectral_factor(metropolis_hastings_weights(adjacency.astype(float)))


def averaging_sim(adjacency: np.ndarray, X0: np.ndarray, rounds: int, *, seed: int = 0,
                  conditions: NetworkConditions = NetworkConditions(), **kw) -> Simulator:
    n = adjacency.shape[0]
    cfg = RoundConfig(federation="sim", max_rounds=rounds, t_hello=1.0, t_agg=1.0, t_commit=1.0,
                      **kw.pop("config_kw", {}))
    sim = Simulator(n, config=cfg, initial_models=[{"w": X0[i].copy()} for i in range(n)],
                    overlay_factory=static_overlay_factory(adjacency), conditions=conditions, seed=seed, **kw)
    sim.run()
    return sim
