"""Simulator benchmark: 100 nodes of degree 4, 50 rounds of pure averaging, 10,000-parameter models.

Prints the wall time and, for every round, the measured contraction of the disagreement
||X - JX||_F next to the spectral factor lambda_r = ||W_r - J||_2 of that round's actual mixing
matrix (rebuilt from the overlay), all measured in this one run.

    python benchmarks/bench_simulator.py [--nodes 100] [--degree 4] [--rounds 50] [--dim 10000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fednode.aggregation import metropolis_hastings_weights, spectral_factor
from fednode.gossip.config import RoundConfig
from fednode.gossip.overlay import RandomRegularOverlay
from fednode.testnet.simulator import Simulator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    n = args.nodes
    cfg = RoundConfig(federation="bench", degree=args.degree, max_rounds=args.rounds)
    X0 = np.random.default_rng(args.seed).normal(size=(n, args.dim))
    t0 = time.perf_counter()
    sim = Simulator(n, config=cfg, initial_models=[{"w": X0[i]} for i in range(n)], seed=args.seed,
                    train_time=0.01)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - t1

    overlay = RandomRegularOverlay("bench", args.degree)
    ids = sim.peer_ids
    prev = d0 = float(np.linalg.norm(X0 - X0.mean(0)))
    rows = []
    for r in range(args.rounds):
        A = np.zeros((n, n))
        for i, p in enumerate(ids):
            for q in overlay.neighbours(p, ids, r):
                A[i, sim.index_of[q]] = 1.0
        assert (A == A.T).all()
        lam_r = spectral_factor(metropolis_hastings_weights(A))
        d = sim.summary(r).disagreement
        rows.append({"round": r, "lambda": lam_r, "contraction": d / prev, "above_noise_floor": prev > 1e-10 * d0})
        prev = d
    # below 1e-10 of the start, float64 rounding (not mixing) dominates: those rounds are not rated
    rated = [x for x in rows if x["above_noise_floor"]]
    contr = np.array([x["contraction"] for x in rated])
    lams = np.array([x["lambda"] for x in rated])
    final = np.stack([sim.final_vectors()[i] for i in range(n)])
    result = {
        "nodes": n, "degree": args.degree, "rounds": args.rounds, "dim": args.dim,
        "wall_time_s": round(wall, 2), "setup_s": round(setup, 2),
        "messages": sim.messages_sent,
        "contraction_geomean": float(np.exp(np.log(contr).mean())),
        "contraction_max": float(contr.max()),
        "lambda_mean": float(lams.mean()), "lambda_min": float(lams.min()), "lambda_max": float(lams.max()),
        "rounds_with_contraction_worse_than_lambda": int((contr > lams + 1e-12).sum()),
        "rounds_rated": len(rated),
        "final_disagreement": float(np.linalg.norm(final - final.mean(0))),
        "mean_drift_max_abs": float(np.abs(final.mean(0) - X0.mean(0)).max()),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{n} nodes, degree {args.degree}, {args.rounds} rounds, {args.dim} parameters (float64)")
    print(f"wall time {wall:.1f} s (+ {setup:.1f} s setup), {sim.messages_sent} signed messages")
    print(f"{'round':>5} {'lambda_r':>9} {'measured':>9}")
    for x in rows[:5] + [None] + rows[-3:]:
        print("  ..." if x is None else f"{x['round']:>5} {x['lambda']:>9.4f} {x['contraction']:>9.4f}")
    print(f"measured contraction per round: geometric mean {result['contraction_geomean']:.4f}, "
          f"worst {result['contraction_max']:.4f}")
    print(f"spectral factor lambda_r: mean {result['lambda_mean']:.4f} (min {result['lambda_min']:.4f}, "
          f"max {result['lambda_max']:.4f}); rounds where measured > lambda_r: "
          f"{result['rounds_with_contraction_worse_than_lambda']}")
    print(f"({result['rounds_rated']} rounds rated; later rounds are at the float64 noise floor)")
    print(f"ratio geomean contraction / mean lambda = {result['contraction_geomean'] / result['lambda_mean']:.3f}")
    print(f"final disagreement {result['final_disagreement']:.3e}, mean drift {result['mean_drift_max_abs']:.2e}")


if __name__ == "__main__":
    main()
