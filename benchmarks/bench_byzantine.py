"""The Byzantine matrix: min honest accuracy for every attack x aggregation setting, on real testnets.

Digits, 10 nodes, 2 Byzantine, Dirichlet 0.5, 40 rounds, overlay degree 4 (issue 12 acceptance).
Every cell is one ``fednode testnet`` run, started under ``flock /tmp/fednode-heavy.lock`` (one
run per lock acquisition, so other heavy jobs on the machine interleave). Results go to a JSON
file after every cell; a rerun skips the cells already there (``--redo`` to measure again), so an
interrupted matrix resumes. ``--markdown`` writes the table.

    python benchmarks/bench_byzantine.py --out benchmarks/results/byzantine.json \\
        --markdown benchmarks/results/byzantine.md [--attacks signflip,gaussian] [--settings gossip,median]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ATTACKS = ["signflip", "gaussian", "alie", "ipm", "stale", "nan", "inf", "oversize", "none"]
SETTINGS = {  # column -> (aggregator, validation filter)
    "gossip": ("gossip", False), "clipped": ("clipped", False), "trimmed_mean": ("trimmed_mean", False),
    "median": ("median", False), "validation_filter": ("gossip", True),
    "clipped+filter": ("clipped", True),
}
LOCK = "/tmp/fednode-heavy.lock"


def run_cell(attack: str, setting: str, args: argparse.Namespace) -> dict:
    """One testnet in this process (called under the lock by the parent)."""
    from fednode.testnet.launcher import TestnetOptions, run_testnet
    aggregator, vfilter = SETTINGS[setting]
    opts = TestnetOptions(nodes=args.nodes, rounds=args.rounds, seed=args.seed, task="digits", split="dirichlet",
                          alpha=0.5, quiet=True, timeout=args.timeout, t_hello=args.t_hello, t_agg=args.t_agg,
                          t_commit=args.t_commit, byzantine=0 if attack == "none" else args.byzantine,
                          attack="signflip" if attack == "none" else attack, aggregator=aggregator,
                          degree=args.degree, validation_filter=vfilter)
    t0 = time.time()
    report = run_testnet(opts)
    load = os.getloadavg()
    nodes = report["nodes"]
    validation = [n.get("validation") or {} for n in nodes if not n.get("byzantine")]
    ms = [v["ms_per_round"] for v in validation if v.get("ms_per_round") is not None]
    return {
        "attack": attack, "setting": setting, "ok": report["ok"], "errors": report["errors"][:5],
        "honest_accuracy_min": report.get("honest_accuracy_min"),
        "honest_accuracy_mean": report.get("honest_accuracy_mean"),
        "byzantine": report.get("byzantine"), "wall_time_s": round(time.time() - t0, 1),
        "honest_rejects": report.get("honest_rejects"),
        "honest_accuracies": [n["test_accuracy"] for n in nodes if not n.get("byzantine")],
        "honest_nodes": [_node_detail(n, nodes) for n in nodes if not n.get("byzantine")],
        "rounds_completed": [n["rounds_completed"] for n in nodes],
        "validation_ms_per_round": (sum(ms) / len(ms)) if ms else None,
        "validation_dropped": sum(int(v.get("dropped", 0)) for v in validation),
        "validation_scored": sum(int(v.get("scored", 0)) for v in validation),
        "load_after": [round(x, 2) for x in load],
        "config": {"nodes": args.nodes, "rounds": args.rounds, "degree": args.degree, "seed": args.seed,
                   "t_hello": args.t_hello, "t_agg": args.t_agg, "t_commit": args.t_commit},
    }


def _node_detail(node: dict, nodes: list[dict]) -> dict:
    """One honest node's outcome and whom it excluded (to read an outlier off the results file)."""
    attackers = {n["peer_id"] for n in nodes if n.get("byzantine")}
    excluded = node.get("exclusions") or {}
    return {"index": node["index"], "accuracy": node["test_accuracy"],
            "excluded_attackers": sum(v for p, v in excluded.items() if p in attackers),
            "excluded_honest": sum(v for p, v in excluded.items() if p not in attackers),
            "exclusion_reasons": node.get("exclusion_reasons"),
            "filter_dropped": (node.get("validation") or {}).get("dropped"),
            "rounds_averaged": node.get("rounds_averaged")}


def markdown(results: dict, attacks: list[str], settings: list[str]) -> str:
    lines = ["| attack | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for a in attacks:
        cells = []
        for s in settings:
            r = results.get(f"{a}/{s}")
            acc = r.get("honest_accuracy_min") if r else None
            cells.append("not run" if r is None else ("failed" if acc is None else f"{acc:.3f}"))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/byzantine.json")
    p.add_argument("--markdown", default="benchmarks/results/byzantine.md")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--byzantine", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--degree", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t-hello", type=float, default=3.0)
    p.add_argument("--t-agg", type=float, default=2.0)
    p.add_argument("--t-commit", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--redo", action="store_true", help="measure cells that are already in --out again")
    p.add_argument("--cell", nargs=2, metavar=("ATTACK", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], args.cell[1], args)))
        return 0
    attacks, settings = args.attacks.split(","), args.settings.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    passthrough = ["--nodes", str(args.nodes), "--byzantine", str(args.byzantine), "--rounds", str(args.rounds),
                   "--degree", str(args.degree), "--seed", str(args.seed), "--t-hello", str(args.t_hello),
                   "--t-agg", str(args.t_agg), "--t-commit", str(args.t_commit), "--timeout", str(args.timeout)]
    for a in attacks:
        for s in settings:
            key = f"{a}/{s}"
            if key in results and not args.redo:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {key}: waiting for {LOCK}", flush=True)
            proc = subprocess.run(["flock", LOCK, sys.executable, __file__, "--cell", a, s, *passthrough],
                                  capture_output=True, text=True)
            try:
                results[key] = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                results[key] = {"attack": a, "setting": s, "honest_accuracy_min": None,
                                "errors": [f"cell failed (exit {proc.returncode}): {proc.stderr[-400:]}"]}
            r = results[key]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: min honest {r.get('honest_accuracy_min')} "
                  f"in {r.get('wall_time_s')} s, load {r.get('load_after')}", flush=True)
            out.write_text(json.dumps(results, indent=1, sort_keys=True))
            Path(args.markdown).write_text(markdown(results, attacks, settings))
    Path(args.markdown).write_text(markdown(results, [a for a in ATTACKS if any(k.startswith(a + "/") for k in results)],
                                            list(SETTINGS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
