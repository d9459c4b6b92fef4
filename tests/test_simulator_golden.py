"""Seeded simulator runs give the same models bit for bit as the recorded ones (issue 13).

The digests in ``tests/golden/simulator_models.json`` were recorded from the round machine
before it was split into stages; any refactor of ``fednode/gossip`` must leave them unchanged.
Regenerate only for an intended behaviour change: ``python tests/test_simulator_golden.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fednode.gossip.config import RoundConfig
from fednode.testnet.simulator import NetworkConditions, Simulator

GOLDEN = Path(__file__).parent / "golden" / "simulator_models.json"


def _quadratic_step(targets: np.ndarray):
    """A deterministic local step that pulls node i toward its own target (non-IID, so mixing matters)."""
    def step(i: int, model: dict) -> dict:
        return {k: (v + 0.3 * (targets[i][: v.shape[0]] - v)).astype(v.dtype) for k, v in model.items()}
    return step


SCENARIOS = {
    "plain_lossy_crash_join": dict(n=12, degree=4, rounds=8, conditions=NetworkConditions(loss=0.15, jitter=0.02),
                                   crashes={3: 2.7}, late_joiners={11: 5.0}),
    "plain_full_mesh": dict(n=6, degree=8, rounds=6, conditions=NetworkConditions()),
    "clipped_sparse": dict(n=10, degree=4, rounds=6, conditions=NetworkConditions(loss=0.05),
                           config_kw=dict(aggregator="clipped")),
    "trimmed_mean": dict(n=9, degree=4, rounds=5, conditions=NetworkConditions(),
                         config_kw=dict(aggregator="trimmed_mean")),
    "secure_retry_lossy": dict(n=8, degree=4, rounds=4, conditions=NetworkConditions(loss=0.05),
                               config_kw=dict(secure_aggregation="retry")),
    "secure_secagg_plus_crash": dict(n=8, degree=6, rounds=4, conditions=NetworkConditions(),
                                     crashes={2: 1.2}, config_kw=dict(secure_aggregation="secagg+")),
}


def run_scenario(name: str) -> dict[str, str]:
    spec = SCENARIOS[name]
    n, dim = spec["n"], 7
    rng = np.random.default_rng(1234)
    X0 = rng.normal(size=(n, dim))
    targets = rng.normal(size=(n, dim)) * 3
    cfg = RoundConfig(federation="golden", max_rounds=spec["rounds"], degree=spec["degree"], t_hello=2.0,
                      t_agg=1.0, t_commit=1.0, **spec.get("config_kw", {}))
    sim = Simulator(n, config=cfg, initial_models=[{"w": X0[i].copy(), "b": X0[i, :2].astype(np.float32)}
                                                   for i in range(n)],
                    local_step=_quadratic_step(targets), conditions=spec["conditions"], seed=7, train_time=0.1,
                    crashes=spec.get("crashes"), late_joiners=spec.get("late_joiners"))
    sim.run(until=3600)
    out = {}
    for rec in sim.nodes:
        h = hashlib.sha256()
        model = rec.machine.model
        for k in sorted(model):
            h.update(k.encode() + np.ascontiguousarray(model[k]).tobytes())
        out[str(rec.index)] = f"{rec.machine.round}:{h.hexdigest()}"
    return out


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_seeded_simulator_models_are_unchanged(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert run_scenario(name) == golden[name]


def test_golden_file_covers_every_scenario() -> None:
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(SCENARIOS)


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_text(json.dumps({name: run_scenario(name) for name in sorted(SCENARIOS)}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
