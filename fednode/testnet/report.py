"""The testnet's JSON report and its printed summary, built from the nodes' status files and checkpoints."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from fednode.node.checkpoint import CheckpointError, load_checkpoint

from fednode.testnet.series import federation_series, load_trajectories, node_rounds
from fednode.testnet.status_files import read_status

if TYPE_CHECKING:
    from fednode.testnet.launcher import Testnet


def build_report(net: "Testnet", wall: float) -> dict[str, Any]:
    """The JSON report of a finished run (see the module docstring of :mod:`fednode.testnet.launcher`)."""
    nodes_out = []
    vectors = []
    models = []
    for node in net.nodes:
        st = read_status(node) or {}
        try:
            ckpt = load_checkpoint(node.state_dir / "checkpoint.fnck")
        except CheckpointError as exc:
            net.errors.append(str(exc))
            ckpt = None
        if ckpt is not None:
            names = sorted(ckpt.model)
            vectors.append(np.concatenate([ckpt.model[k].astype(np.float64).ravel() for k in names]))
            models.append(ckpt.model)
        nodes_out.append({
            "index": node.index, "peer_id": node.peer_id.hex(),
            "rounds_completed": int(ckpt.round if ckpt else 0),
            "test_accuracy": st.get("accuracy"), "test_loss": st.get("loss"),
            "bytes_sent": int(st.get("bytes_out", 0)), "bytes_received": int(st.get("bytes_in", 0)),
            "restarts": node.restarts, "exit_code": node.exit_code,
            "max_round_gap_s": round(node.max_gap, 3), "rounds_went_backwards": node.went_backwards,
            "resumes": node.resumes, "rounds_averaged": st.get("rounds_averaged"),
            "aborts": st.get("aborts"), "rejects": st.get("rejects"),
            "rejects_by_peer": st.get("rejects_by_peer"), "timings": st.get("timings"),
            "cumulative_timings": st.get("cumulative"),
            "epsilon": st.get("epsilon"), "privacy_releases": st.get("releases"), "state": st.get("state"),
            "rss_peak_mb": getattr(node, "rss_peak_mb", None),
            "per_round": node_rounds(st, net.started_at),
            "attack": st.get("attack"), "validation": st.get("validation"),
            "exclusions": st.get("exclusions"), "exclusion_reasons": st.get("exclusion_reasons"),
        })
    disagreement = rel = None
    avg_acc = None
    if vectors and all(v.shape == vectors[0].shape for v in vectors):
        X = np.stack(vectors)
        mean = X.mean(axis=0)
        disagreement = float(np.linalg.norm(X - mean))
        rel = disagreement / max(1e-300, float(np.linalg.norm(np.tile(mean, (len(vectors), 1)))))
        avg_acc = averaged_accuracy(net, models)
    series = federation_series([n["per_round"] for n in nodes_out],
                               load_trajectories([n.state_dir / "trajectory.bin" for n in net.nodes], net.errors))
    accs = [n["test_accuracy"] for n in nodes_out if isinstance(n["test_accuracy"], float)]
    rss = [n["rss_peak_mb"] for n in nodes_out if n["rss_peak_mb"] is not None]
    from fednode.testnet.adversary import honest_summary
    adversary = honest_summary(nodes_out, getattr(net, "attackers", frozenset()), net.opts.attack)
    ok = (not net.errors and all(n["rounds_completed"] >= net.opts.rounds for n in nodes_out))
    return {**adversary, "aggregator": net.opts.aggregator or "gossip", "degree": net.opts.degree,
            "validation_filter": net.opts.validation_filter,
        "federation": net.federation, "ok": ok, "wall_time_s": round(wall, 3), "rounds": net.opts.rounds,
        "task": net.opts.task, "split": net.opts.split, "alpha": net.opts.alpha, "seed": net.opts.seed,
        "secure_aggregation": net.opts.secure_aggregation, "dp": net.opts.dp, "dp_delta": net.opts.dp_delta,
        "dp_epsilon_budget": net.opts.dp_epsilon,
        "consensus_disagreement": disagreement, "consensus_disagreement_relative": rel,
        "averaged_model_accuracy": avg_acc,
        "round_length_bound_s": net.opts.t_hello + 3 * net.opts.t_agg + net.opts.t_commit,
        "errors": net.errors, "nodes": nodes_out, "series": series,
        "rss_peak_mb_max": max(rss) if rss else None,
        "rss_peak_mb_median": round(float(np.median(rss)), 1) if rss else None,
        "accuracy_min": min(accs) if accs else None,
        "accuracy_median": round(float(np.median(accs)), 6) if accs else None,
    }

def averaged_accuracy(net: "Testnet", models: list[dict]) -> float | None:
    """Accuracy of the nodes' mean model on the common test set (None, with an error noted, if it fails)."""
    try:
        from fednode.node.trainer import Trainer, resolve_task
        trainer = Trainer(resolve_task(net.opts.task), seed=net.opts.seed, node_index=0,
                          node_count=net.opts.nodes, split=net.opts.split, alpha=net.opts.alpha,
                          data_dir=net.opts.data_dir)
        avg = {k: np.mean([m[k].astype(np.float64) for m in models], axis=0).astype(models[0][k].dtype)
               for k in models[0]}
        acc, _ = trainer.evaluate(avg)
        return float(acc)
    except Exception as exc:  # the report must still be written
        net.errors.append(f"averaged-model evaluation failed: {exc}")
        return None

def print_summary(report: dict[str, Any]) -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"testnet {report['federation']}: {'OK' if report['ok'] else 'FAILED'} in "
          f"{report['wall_time_s']:.1f} s", file=sys.stderr)
    for n in report["nodes"]:
        acc = n["test_accuracy"]
        print(f"  node{n['index']} {n['peer_id'][:12]} rounds {n['rounds_completed']:>4} "
              f"acc {acc if acc is None else f'{acc:.4f}'} restarts {n['restarts']}"
              + (f" epsilon {n['epsilon']:.3f}" if n.get("epsilon") is not None else ""), file=sys.stderr)
    if report["averaged_model_accuracy"] is not None:
        print(f"  averaged model accuracy {report['averaged_model_accuracy']:.4f}, consensus disagreement "
              f"{report['consensus_disagreement']:.3g} (relative {report['consensus_disagreement_relative']:.3g})",
              file=sys.stderr)
    if report.get("accuracy_min") is not None:
        print(f"  accuracy min {report['accuracy_min']:.4f} median {report['accuracy_median']:.4f}"
              + (f"; peak RSS per node median {report['rss_peak_mb_median']:.0f} MiB, max "
                 f"{report['rss_peak_mb_max']:.0f} MiB" if report.get("rss_peak_mb_max") else ""), file=sys.stderr)
    for err in report["errors"]:
        print(f"  error: {err}", file=sys.stderr)
