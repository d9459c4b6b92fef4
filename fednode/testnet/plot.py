"""Plots of testnet reports: accuracy and consensus disagreement against rounds and wall time.

Reads only the report's ``series`` (see :mod:`fednode.testnet.launcher`), so any report written by
``fednode testnet --report`` can be drawn, and several runs overlay on the same axes with their labels.
matplotlib is an optional extra (``pip install 'fednode[plot]'``); it is imported only here, lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

def disagreement_floor(values: list[float]) -> float:
    """Where to draw an exact 0 on the log axis: a decade below the smallest positive value (a full mesh
    agrees exactly, which a log scale cannot show), never below 1e-9."""
    positive = [v for v in values if v > 0]
    return max(1e-9, min(positive) / 10) if positive else 1e-6


class PlotError(Exception):
    """A report cannot be plotted, or matplotlib is missing (one line for the user)."""


def load_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PlotError(f"cannot read report {path}: {exc.strerror}") from None
    except ValueError:
        raise PlotError(f"report {path} is not JSON") from None
    series = report.get("series") if isinstance(report, dict) else None
    if not isinstance(series, dict) or not series.get("round"):
        raise PlotError(f"report {path} has no per-round series (write it with a current `fednode testnet --report`)")
    return report


def _points(series: dict[str, list], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for x, y in zip(series.get(x_key) or [], series.get(y_key) or []):
        if x is not None and y is not None:
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def plot_reports(runs: list[tuple[str, dict[str, Any]]], out: Path, *, title: str | None = None) -> Path:
    """Draw ``runs`` ((label, report) pairs) into one PNG (or any format matplotlib knows by suffix)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'fednode[plot]'") from None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    floor = disagreement_floor([float(v) for _, r in runs for v in r["series"].get("consensus_disagreement_relative")
                                or [] if v is not None])
    for i, (tag, report) in enumerate(runs):
        s, c = report["series"], colors[i % len(colors)]
        exact = any(v is not None and v < floor for v in s.get("consensus_disagreement_relative") or [])
        for col, x_key in enumerate(("round", "t_s")):
            ax = axes[0][col]
            xs, ys = _points(s, x_key, "accuracy_median")
            ax.plot(xs, ys, color=c, lw=1.8, label=f"{tag}: median")
            xs, ys = _points(s, x_key, "accuracy_min")
            ax.plot(xs, ys, color=c, lw=1.2, ls="--", label=f"{tag}: min")
            ax = axes[1][col]
            xs, ys = _points(s, x_key, "consensus_disagreement_relative")
            ax.plot(xs, [max(floor, y) for y in ys], color=c, lw=1.6,
                    label=f"{tag} (0 = exact agreement, drawn at {floor:.0e})" if exact else tag)
    for col, xlabel in enumerate(("round", "wall time since start (s)")):
        top, bottom = axes[0][col], axes[1][col]
        top.set_ylabel("test accuracy (per node)")
        top.set_title(f"accuracy against {'rounds' if col == 0 else 'wall time'}")
        bottom.set_yscale("log")
        bottom.set_ylabel("consensus disagreement ‖X − JX‖ / ‖JX‖")
        bottom.set_title(f"consensus against {'rounds' if col == 0 else 'wall time'}")
        for ax in (top, bottom):
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3)
            if col == 0:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=8, loc="lower right")
    axes[1][0].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
