"""Centralized reference: the same model trained on the whole training set, for as many epochs as a
federated run has rounds (one local epoch per round), evaluated on the same test set. Prints JSON.

    python benchmarks/centralized_baseline.py --task digits --epochs 30
    python benchmarks/centralized_baseline.py --task fashion-mnist --epochs 20
"""

from __future__ import annotations

import argparse
import json
import time

from fednode.node.trainer import Trainer, resolve_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    t0 = time.perf_counter()
    trainer = Trainer(resolve_task(args.task), seed=args.seed, node_index=0, node_count=1, data_dir=args.data_dir)
    params = trainer.init_params()
    for _ in range(args.epochs):
        params = trainer.local_step(params)
    acc, loss = trainer.evaluate(params)
    print(json.dumps({"task": args.task, "epochs": args.epochs, "test_accuracy": round(acc, 4),
                      "test_loss": round(loss, 4), "train_examples": trainer.shard_size,
                      "wall_time_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
