"""A node's per-round history: one record per finished round, kept in the status file and checkpoint.

The testnet report turns it into per-round series, so each record carries what a plot needs: when
the round ended (wall clock), how long it took, the traffic so far and exactly whom it averaged with.

JSON form (status file ``history`` and checkpoint meta), compact because it is rewritten every round:
    {"round": int, "outcome": str ("commit" or the abort reason), "accuracy": float | None,
     "loss": float | None, "neighbours": int (how many peers were averaged with),
     "t_end": float (unix s), "round_time_s": float, "bytes_sent": int, "bytes_received": int
     (cumulative over the node's life, restarts included, as of the round's end),
     "peers": [int, ...] (indices into the sibling list ``history_peers`` of full hex peer ids)}
Older records without the newer keys are read back with those fields as None.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundRecord:
    round: int
    outcome: str
    accuracy: float | None = None
    loss: float | None = None
    neighbours: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    t_end: float | None = None
    round_time_s: float | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    peers: tuple[bytes, ...] = ()


def history_to_json(records: Iterable[RoundRecord]) -> tuple[list[dict[str, Any]], list[str]]:
    """(history items, history_peers table) for a status file or checkpoint."""
    table: dict[bytes, int] = {}
    items = []
    for r in records:
        item: dict[str, Any] = {"round": r.round, "outcome": r.outcome, "accuracy": r.accuracy, "loss": r.loss,
                                "neighbours": r.neighbours}
        if r.t_end is not None:
            item.update(t_end=round(r.t_end, 3), round_time_s=round(r.round_time_s or 0.0, 4),
                        bytes_sent=r.bytes_sent, bytes_received=r.bytes_received,
                        peers=[table.setdefault(p, len(table)) for p in r.peers])
        items.append(item)
    return items, [p.hex() for p in table]


def history_from_json(items: Iterable[Any], peers: Any) -> list[RoundRecord]:
    """Records back from :func:`history_to_json` output (tolerant of older and odd items)."""
    table = [bytes.fromhex(p) for p in peers if isinstance(p, str)] if isinstance(peers, list) else []
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("round"), int):
            continue
        idx = item.get("peers") or []
        out.append(RoundRecord(
            round=item["round"], outcome=str(item.get("outcome")), accuracy=item.get("accuracy"),
            loss=item.get("loss"), neighbours=int(item.get("neighbours") or 0), t_end=item.get("t_end"),
            round_time_s=item.get("round_time_s"), bytes_sent=item.get("bytes_sent"),
            bytes_received=item.get("bytes_received"),
            peers=tuple(table[i] for i in idx if isinstance(i, int) and 0 <= i < len(table))))
    return out


def expand_history(status: dict[str, Any]) -> list[dict[str, Any]]:
    """A status file's history with peer indices replaced by full hex ids (for reports and tools)."""
    table = status.get("history_peers") or []
    out = []
    for item in status.get("history") or []:
        if isinstance(item, dict):
            item = dict(item)
            item["peers"] = [table[i] for i in item.get("peers") or [] if isinstance(i, int) and 0 <= i < len(table)]
            out.append(item)
    return out
