"""Where a round's time goes at one node of an N-node federation, all measured in this run.

1. Micro-measurements on the task's real model: encode+sign of one CONTRIBUTE, verify+decode of one,
   and the aggregation (mixing over N-1 neighbours).
2. An N-node `fednode testnet` on loopback; its report gives per-node round totals, local-step time,
   evaluation and checkpoint time. Transfer-and-wait is what remains of the round.

    python benchmarks/bench_round_breakdown.py --nodes 8 --rounds 30 [--task digits]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


from fednode.aggregation import mix
from fednode.node.trainer import Trainer, resolve_task
from fednode.security.envelope import MsgType, VerifyContext, open_envelope, seal
from fednode.security.identity import AllowList, Identity
from fednode.security.replay import ReplayGuard


def per_message_costs(task: str, nodes: int, reps: int = 50) -> dict[str, float]:
    trainer = Trainer(resolve_task(task), seed=0, node_index=0, node_count=nodes)
    model = trainer.init_params()
    spec = trainer.model_spec
    a, b = Identity.generate(), Identity.generate()
    allow = AllowList()
    allow.add(a.public_key_bytes)
    allow.add(b.public_key_bytes)
    now = time.time()
    t0 = time.perf_counter()
    blobs = [seal(a, msg_type=MsgType.CONTRIBUTE, recipient=b.peer_id, federation="bench", round=0, attempt=i,
                  arrays=model, spec=spec, meta={"d": nodes - 1}, now_ms=int(now * 1000)) for i in range(reps)]
    sign = (time.perf_counter() - t0) / reps
    guard = ReplayGuard()
    t0 = time.perf_counter()
    for blob in blobs:
        ctx = VerifyContext(self_id=b.peer_id, federation="bench", allow_list=allow, current_round=0,
                            now_ms=int(now * 1000), replay=guard, model_spec=spec)
        res = open_envelope(blob, ctx)
        assert not hasattr(res, "reason"), res
    verify = (time.perf_counter() - t0) / reps
    neighbours = {j: {k: v + 0.01 * j for k, v in model.items()} for j in range(nodes - 1)}
    weights = {j: 1.0 / nodes for j in neighbours}
    t0 = time.perf_counter()
    for _ in range(reps):
        mix(model, neighbours, weights)
    aggregate = (time.perf_counter() - t0) / reps
    return {"params": spec.size, "message_bytes": len(blobs[0]), "encode_sign_s": sign, "verify_s": verify,
            "aggregate_s": aggregate}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--task", default="digits")
    args = ap.parse_args()
    costs = per_message_costs(args.task, args.nodes)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "r.json")
        subprocess.run([sys.executable, "-m", "fednode", "testnet", "--nodes", str(args.nodes), "--rounds",
                        str(args.rounds), "--task", args.task, "--split", "dirichlet", "--seed", "0", "--quiet",
                        "--report", report_path], check=True)
        report = json.load(open(report_path))
    k = args.nodes - 1  # full mesh: contributions to / from every other node
    rows = []
    for n in report["nodes"]:
        cum = n["cumulative_timings"]
        rounds = max(1, n["rounds_completed"])
        rows.append({"total": n["timings"]["total"], "train": cum["train_s"] / rounds,
                     "eval": cum["eval_s"] / rounds, "checkpoint": cum["checkpoint_s"] / rounds,
                     "handle": cum["handle_s"] / rounds})
    mean = {key: statistics.mean(r[key] for r in rows) for key in rows[0]}
    sign = k * costs["encode_sign_s"]
    verify = k * costs["verify_s"]
    print(f"{args.nodes} nodes, task {args.task}, {costs['params']} parameters, "
          f"{costs['message_bytes'] / 1e3:.1f} kB per contribution, {args.rounds} rounds")
    print(f"per round at one node (mean over nodes; last-round total {mean['total'] * 1e3:.1f} ms):")
    print(f"  train (local step)          {mean['train'] * 1e3:8.2f} ms")
    print(f"  encode + sign ({k} contribs)  {sign * 1e3:8.2f} ms   ({costs['encode_sign_s'] * 1e3:.3f} ms each)")
    print(f"  verify ({k} contribs)         {verify * 1e3:8.2f} ms   ({costs['verify_s'] * 1e3:.3f} ms each)")
    print(f"  aggregate (mix over {k})      {costs['aggregate_s'] * 1e3:8.2f} ms")
    print(f"  checkpoint (atomic, fsync)  {mean['checkpoint'] * 1e3:8.2f} ms")
    print(f"  evaluation (off the path)   {mean['eval'] * 1e3:8.2f} ms")
    transfer = mean["total"] - mean["train"] - sign - verify - costs["aggregate_s"] - mean["checkpoint"]
    print(f"  transfer + waiting (rest)   {max(0.0, transfer) * 1e3:8.2f} ms")
    print(f"testnet wall time {report['wall_time_s']:.1f} s (includes start-up and {args.nodes} JAX processes "
          f"on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
