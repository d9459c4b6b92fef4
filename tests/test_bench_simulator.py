"""benchmarks/bench_simulator.py measures what it says: its disagreement tracker against a direct
computation, and the same contraction figures from one process and from two."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_simulator", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_simulator.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("scale", [1.0, 1e-6, 0.0])
def test_tracker_and_its_merge_match_the_direct_norm(scale: float) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=40) * 5 + 50 + scale * rng.normal(size=(17, 40))
    direct = float(np.linalg.norm(X - X.mean(axis=0)))
    whole, part_a, part_b = bench._Disagreement(40), bench._Disagreement(40), bench._Disagreement(40)
    for i, x in enumerate(X):
        whole(7, i, "commit", {"w": x})
        (part_a if i % 3 else part_b)(7, i, "commit", {"w": x})
    part_a.merge_partial(part_b.export_partial())
    for tracker in (whole, part_a):
        got = tracker.by_round(17)[7]
        assert got == pytest.approx(direct, rel=1e-7, abs=1e-12 * 50)
    assert whole.by_round(18) == {}  # a round not every node reported is not rated


def test_one_process_and_two_give_the_same_figures() -> None:
    one = bench.run(24, 4, 6, 50, 0, False, workers=1)
    two = bench.run(24, 4, 6, 50, 0, False, workers=2)
    for key in ("messages", "contraction_geomean", "lambda_mean", "final_disagreement", "rounds_rated"):
        assert two[key] == pytest.approx(one[key], rel=1e-9), key
    assert one["parallel"] is None and two["parallel"]["windows"] > 0


def test_host_probe_times_its_workload() -> None:
    ms = bench.host_probe(repeats=2)
    assert isinstance(ms, float) and 0.5 < ms < 60_000  # 40,000 heap steps: well above a millisecond anywhere


def test_memory_probe_measures_a_bandwidth() -> None:
    gbs = bench.memory_probe(mib=4, repeats=2)
    assert isinstance(gbs, float) and 0.01 < gbs < 10_000  # read + written per second, any machine


def test_background_spectral_analysis_matches_the_direct_one_and_is_reaped() -> None:
    from fednode.testnet.simulator import node_identities
    ids = [ident.peer_id for ident in node_identities(30, 5)]
    background = bench._Background(ids, 4, 3)
    lams, cpu, waited = background.result()
    assert lams == bench.spectral_factors(ids, 4, 3) and len(lams) == 3 and all(0 < x < 1 for x in lams)
    assert cpu >= 0 and waited >= 0
    background.close()  # reaped already: a no-op
    many = [ident.peer_id for ident in node_identities(600, 5)]
    unfinished = bench._Background(many, 4, 200)  # seconds of work, closed at once: killed by its PID, reaped
    pid = unfinished._pid
    unfinished.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
