"""Per-round series of a testnet run: per node from its status history, across nodes from trajectories.

``node_rounds`` turns one node's status history into the report's ``per_round`` list;
``federation_series`` combines every node's list and model trajectory into the report's ``series``
(column lists indexed like ``series["round"]``; a value is None where no node had data).
Consensus disagreement for round r is ||X_r - mean(X_r)||_F over the nodes whose trajectory has
round r (X_r: one row per node, the model after round r), relative to ||J X_r||_F.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from fednode.node.history import expand_history
from fednode.node.trajectory import TrajectoryError, read_trajectory


def node_rounds(status: dict[str, Any], started_at: float) -> list[dict[str, Any]]:
    """The report's ``per_round`` of one node: one item per round it finished, last record wins."""
    by_round: dict[int, dict[str, Any]] = {}
    for h in expand_history(status):
        t_end = h.get("t_end")
        by_round[int(h["round"])] = {
            "round": int(h["round"]), "t_s": None if t_end is None else round(float(t_end) - started_at, 3),
            "accuracy": h.get("accuracy"), "loss": h.get("loss"), "outcome": h.get("outcome"),
            "neighbours": h.get("peers", []), "bytes_sent": h.get("bytes_sent"),
            "bytes_received": h.get("bytes_received"), "round_time_s": h.get("round_time_s")}
    return [by_round[r] for r in sorted(by_round)]


def load_trajectories(paths: list[Path], errors: list[str]) -> list[dict[int, np.ndarray]]:
    """Every node's trajectory (an empty one, with an error noted, where a file is unreadable)."""
    out = []
    for path in paths:
        try:
            out.append(read_trajectory(path) if path.exists() else {})
        except (TrajectoryError, OSError, ValueError) as exc:
            errors.append(f"trajectory {path}: {exc}")
            out.append({})
    return out


def disagreement(rows: list[np.ndarray]) -> tuple[float, float]:
    """(||X - JX||_F, that divided by ||JX||_F) of the stacked rows."""
    X = np.stack([np.asarray(r, dtype=np.float64) for r in rows])
    mean = X.mean(axis=0)
    d = float(np.linalg.norm(X - mean))
    return d, d / max(1e-300, float(np.linalg.norm(mean)) * np.sqrt(len(rows)))


def _stat(values: list[Any], fn) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return round(float(fn(vals)), 6) if vals else None


def federation_series(per_node: list[list[dict[str, Any]]],
                      trajectories: list[dict[int, np.ndarray]]) -> dict[str, list[Any]]:
    """The report's top-level ``series`` (see the module docstring of :mod:`fednode.testnet.launcher`)."""
    rows: dict[int, list[dict[str, Any]]] = {}
    for items in per_node:
        for item in items:
            rows.setdefault(item["round"], []).append(item)
    rounds = sorted(set(rows) | {r for t in trajectories for r in t})
    cols: dict[str, list[Any]] = {k: [] for k in (
        "round", "nodes", "accuracy_min", "accuracy_median", "accuracy_mean", "loss_mean",
        "consensus_disagreement", "consensus_disagreement_relative", "round_time_median_s",
        "bytes_sent_total", "t_s")}
    for r in rounds:
        items = rows.get(r, [])
        acc = [i["accuracy"] for i in items]
        models = [t[r] for t in trajectories if r in t]
        shapes_ok = models and all(m.shape == models[0].shape for m in models)
        d, rel = disagreement(models) if shapes_ok else (None, None)
        sent = [i["bytes_sent"] for i in items if isinstance(i.get("bytes_sent"), int)]
        cols["round"].append(r)
        cols["nodes"].append(len(items))
        cols["accuracy_min"].append(_stat(acc, min))
        cols["accuracy_median"].append(_stat(acc, statistics.median))
        cols["accuracy_mean"].append(_stat(acc, statistics.fmean))
        cols["loss_mean"].append(_stat([i["loss"] for i in items], statistics.fmean))
        cols["consensus_disagreement"].append(None if d is None else float(f"{d:.6g}"))
        cols["consensus_disagreement_relative"].append(None if rel is None else float(f"{rel:.6g}"))
        cols["round_time_median_s"].append(_stat([i["round_time_s"] for i in items], statistics.median))
        cols["bytes_sent_total"].append(sum(sent) if sent else None)
        cols["t_s"].append(_stat([i["t_s"] for i in items], statistics.median))
    return cols
