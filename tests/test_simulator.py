"""Simulator tests: pure averaging on random graphs, faults, late join, determinism (issue 2)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fednode.gossip.config import RoundConfig
from fednode.gossip.overlay import RandomRegularOverlay
from fednode.testnet.problems import LeastSquares
from fednode.testnet.simulator import NetworkConditions, Simulator
from tests.simhelpers import averaging_sim, lam, random_connected_graph

SETTINGS = settings(derandomize=True, deadline=None, max_examples=12,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(n=st.integers(2, 24), p=st.floats(0.05, 0.6), seed=st.integers(0, 2**16))
def test_pure_averaging_reaches_consensus_and_keeps_the_mean(n, p, seed):
    A = random_connected_graph(n, p, seed)
    lam_ = lam(A)
    rng = np.random.default_rng(seed)
    X0 = rng.uniform(-1, 1, size=(n, 6))
    d0 = float(np.linalg.norm(X0 - X0.mean(0)))
    # rounds the spectral bound needs to reach 1e-6, plus margin (contraction per round <= lambda)
    rounds = math.ceil(math.log(1e-6 / d0) / math.log(lam_)) + 2 if lam_ > 0 else 2
    assume(rounds <= 250)
    # fast mode (no Ed25519): the signed run's models bit for bit (tests/test_simulator_fast.py); 47 s -> 6 s
    sim = averaging_sim(A, X0, rounds, seed=seed, signed=False)
    final = np.stack([sim.final_vectors()[i] for i in range(n)])
    assert all(rec.finished for rec in sim.nodes)
    assert all(len(rec.round_ends) == rounds for rec in sim.nodes)
    assert all(label == "commit" for rec in sim.nodes for _, _, label in rec.round_ends)
    assert float(np.linalg.norm(final - final.mean(0))) <= 1e-6
    # the mean is kept exactly (1e-12 relative)
    assert np.abs(final.mean(0) - X0.mean(0)).max() <= 1e-12 * max(1.0, np.abs(X0).max())


@SETTINGS
@given(n=st.integers(3, 16), seed=st.integers(0, 2**16))
def test_per_round_contraction_never_worse_than_lambda(n, seed):
    A = random_connected_graph(n, 0.3, seed)
    lam_ = lam(A)
    X0 = np.random.default_rng(seed).normal(size=(n, 4))
    sim = averaging_sim(A, X0, 8, seed=seed)
    prev = float(np.linalg.norm(X0 - X0.mean(0)))
    for r in range(8):
        d = sim.summary(r).disagreement
        assert d <= lam_ * prev + 1e-9
        prev = d


def test_same_seed_same_run():
    A = random_connected_graph(10, 0.3, 7)
    X0 = np.random.default_rng(1).normal(size=(10, 5))
    cond = NetworkConditions(loss=0.2, duplicate=0.1, reorder=0.2)
    a = averaging_sim(A, X0, 6, seed=3, conditions=cond)
    b = averaging_sim(A, X0, 6, seed=3, conditions=cond)
    for i in range(10):
        assert np.array_equal(a.final_vectors()[i], b.final_vectors()[i])
        assert a.nodes[i].round_ends == b.nodes[i].round_ends


def test_duplicates_and_reordering_do_not_break_exactness():
    """Duplicated messages are rejected as replays; reordering is absorbed by buffering."""
    A = random_connected_graph(8, 0.4, 2)
    X0 = np.random.default_rng(2).normal(size=(8, 3))
    sim = averaging_sim(A, X0, 10, seed=5, conditions=NetworkConditions(duplicate=0.3, reorder=0.3,
                                                                         reorder_delay=0.3))
    final = np.stack([sim.final_vectors()[i] for i in range(8)])
    assert np.abs(final.mean(0) - X0.mean(0)).max() <= 1e-12
    rejects = sum(sum(rec.machine.stats.rejects.values()) for rec in sim.nodes)
    assert rejects > 0  # the duplicates were seen and refused
    assert all(set(rec.machine.stats.rejects) <= {"replay_nonce", "duplicate"} for rec in sim.nodes)


def _fault_run(seed: int, n: int = 12, rounds: int = 12):
    cfg = RoundConfig(federation="faults", max_rounds=rounds, t_hello=4.0, t_agg=1.0, t_commit=1.0, degree=4)
    X0 = np.random.default_rng(seed).normal(size=(n, 5))
    train_time = 0.2
    sim = Simulator(n, config=cfg, initial_models=[{"w": X0[i]} for i in range(n)], seed=seed,
                    conditions=NetworkConditions(loss=0.2, jitter=0.02), train_time=train_time,
                    crashes={3: 2.7}, late_joiners={n - 1: 6.0})
    sim.run(until=600)
    return sim, cfg, train_time


def test_every_live_node_completes_every_round_under_loss_crash_and_late_join():
    sim, cfg, t_train = _fault_run(seed=11)
    bound = cfg.round_length_bound(t_train)
    crashed, joiner = sim.nodes[3], sim.nodes[-1]
    assert crashed.crashed_at is not None and not crashed.alive
    # the crash happened mid-round: the node had started a round it never finished
    assert max(crashed.round_starts) > max((r for r, _, _ in crashed.round_ends), default=-1)
    for rec in sim.live_nodes():
        assert rec.finished, f"node {rec.index} did not finish"
        durations = sim.round_durations(rec.index)
        if rec is joiner:
            durations = durations[1:]  # the first span includes the listen-only join
        assert max(durations) <= bound + 1e-9, (rec.index, max(durations), bound)
        if rec is not joiner:
            assert [r for r, _, _ in rec.round_ends] == list(range(cfg.max_rounds))
    # the late joiner fetched the current model instead of starting from scratch, and caught up
    assert joiner.adopted, "late joiner did not adopt a neighbour's model"
    assert joiner.round_ends[-1][0] == cfg.max_rounds - 1
    # gossip kept working: most rounds averaged with someone despite 20 % loss
    commits = sum(1 for rec in sim.live_nodes() for _, _, label in rec.round_ends if label == "commit")
    total = sum(len(rec.round_ends) for rec in sim.live_nodes())
    assert commits >= 0.8 * total


def test_lone_node_keeps_training():
    cfg = RoundConfig(federation="alone", max_rounds=5)
    problem = LeastSquares.generate(1, 4, seed=0)
    sim = Simulator(1, config=cfg, initial_models={"w": np.zeros(4)}, local_step=problem.local_step)
    sim.run(until=60)
    rec = sim.nodes[0]
    assert rec.finished and [label for _, _, label in rec.round_ends] == ["alone"] * 5
    assert not np.allclose(rec.machine.model["w"], 0.0)  # it trained


def test_random_regular_overlay_is_deterministic_and_symmetric_for_equal_views():
    ids = [bytes([i]) * 32 for i in range(20)]
    ov = RandomRegularOverlay("fed", degree=4)
    for r in range(5):
        nbrs = {p: ov.neighbours(p, ids, r) for p in ids}
        for p in ids:
            assert 2 <= len(nbrs[p]) <= 4 and p not in nbrs[p]
            for q in nbrs[p]:
                assert p in nbrs[q]
    assert ov.neighbours(ids[0], ids, 0) != ov.neighbours(ids[0], ids, 1) or \
        ov.neighbours(ids[1], ids, 0) != ov.neighbours(ids[1], ids, 1)
    small = ids[:5]
    assert ov.neighbours(small[0], small, 3) == frozenset(small[1:])
