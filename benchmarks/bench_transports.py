"""Zenoh vs libp2p: the same testnet back-to-back, one row per transport (README "Transports").

    flock /tmp/fednode-heavy.lock python benchmarks/bench_transports.py --nodes 8 --rounds 30 \\
        --split dirichlet --alpha 0.5 --out transports.json

Columns, all from the testnets' JSON reports: wall time of the whole run; median over nodes of
each node's median round time; bytes sent per node (median; the envelope bytes a transport
handed to the network, as the nodes' statuses count them, without framing or protocol
overhead); start-up to first round (median over nodes of the time from the launch to the end of
its round 0: process start, JAX compile, transport start, discovery); minimum test accuracy.
The load average before and after is printed with the table: only a quiet machine gives
comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(transport: str, args: argparse.Namespace, workdir: Path) -> dict:
    report = workdir / f"{transport}.json"
    cmd = [sys.executable, "-m", "fednode", "testnet", "--quiet", "--transport", transport, "--nodes",
           str(args.nodes), "--rounds", str(args.rounds), "--split", args.split, "--alpha", str(args.alpha),
           "--seed", str(args.seed), "--report", str(report), *args.extra]
    subprocess.run(cmd, check=False, timeout=args.timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return json.loads(report.read_text())


def row(transport: str, r: dict) -> dict:
    nodes = r["nodes"]
    med_round = [statistics.median(x["round_time_s"] for x in n["per_round"] if x.get("round_time_s") is not None)
                 for n in nodes if n.get("per_round")]
    first = [n["per_round"][0]["t_s"] for n in nodes if n.get("per_round") and n["per_round"][0]["t_s"] is not None]
    return {"transport": transport, "ok": r["ok"], "wall_time_s": r["wall_time_s"],
            "median_round_time_s": round(statistics.median(med_round), 3) if med_round else None,
            "bytes_sent_per_node": int(statistics.median(n["bytes_sent"] for n in nodes)),
            "startup_to_first_round_s": round(statistics.median(first), 2) if first else None,
            "accuracy_min": min(n["test_accuracy"] for n in nodes if n["test_accuracy"] is not None)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--split", default="dirichlet")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", help="write the rows and both reports here (JSON)")
    p.add_argument("extra", nargs="*", help="more `fednode testnet` flags (after --)")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as tmp:
        reports = {t: run(t, args, Path(tmp)) for t in ("zenoh", "libp2p")}
    load_after = os.getloadavg()
    rows = [row(t, r) for t, r in reports.items()]
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print("| transport | wall time | median round time | bytes sent per node | start-up to first round | min accuracy |")
    print("|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['transport']} | {x['wall_time_s']:.1f} s | {x['median_round_time_s']} s | "
              f"{x['bytes_sent_per_node'] / 1e6:.2f} MB | {x['startup_to_first_round_s']} s | {x['accuracy_min']:.4f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "load_before": load_before, "load_after": load_after,
                                              "reports": reports}, indent=2))
    return 0 if all(x["ok"] for x in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
