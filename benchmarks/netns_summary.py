"""Summarize `fednode testnet --netns` reports: the figures of README "Real networks", one JSON line per report.

    python benchmarks/netns_summary.py a.json b.json c.json

Per report: wall time, median/p90 round time (from per_round), min/median accuracy (final and at
round 30), max round gap vs the bound, the measured links (median RTT range, mean loss), and,
when present, the partition's recovery (first round after the heal whose consensus disagreement
is back at or below the level before the cut) and cross-site averages per node per 5 rounds
outside a router outage.
"""

from __future__ import annotations

import json
import statistics
import sys


def _at_round(report: dict, rnd: int) -> list[float]:
    out = []
    for n in report["nodes"]:
        for rec in n.get("per_round") or []:
            if rec["round"] == rnd and rec.get("accuracy") is not None:
                out.append(rec["accuracy"])
    return out


def summarize(report: dict) -> dict:
    times = sorted(rec["round_time_s"] for n in report["nodes"] for rec in n.get("per_round") or []
                   if rec.get("round_time_s") is not None)
    accs = [n["test_accuracy"] for n in report["nodes"] if n.get("test_accuracy") is not None]
    out = {"ok": report["ok"], "wall_time_s": report["wall_time_s"], "rounds": report["rounds"],
           "round_time_median_s": round(statistics.median(times), 3) if times else None,
           "round_time_p90_s": round(times[int(0.9 * len(times))], 3) if times else None,
           "accuracy_min": min(accs) if accs else None, "accuracy_median": statistics.median(accs) if accs else None,
           "accuracy_min_round30": min(_at_round(report, 29), default=None),
           "max_round_gap_s": max(n["max_round_gap_s"] for n in report["nodes"]),
           "round_length_bound_s": report["round_length_bound_s"]}
    net = report.get("network") or {}
    links = [m for m in net.get("links_measured") or [] if m.get("rtt_ms")]
    if links:
        out["rtt_median_ms"] = [min(m["rtt_ms"]["median"] for m in links), max(m["rtt_ms"]["median"] for m in links)]
        out["loss_mean"] = round(statistics.fmean(m["loss"] for m in links), 4)
    part = net.get("partition")
    series = report.get("series") or {}
    if part and len(part.get("events", [])) == 2 and series.get("t_s"):
        cut, heal = part["events"][0]["at_s"], part["events"][1]["at_s"]
        rows = list(zip(series["round"], series["t_s"], series["consensus_disagreement_relative"]))
        before = [d for r, t, d in rows if t is not None and t < cut and d is not None]
        level = max(before[-3:]) if before else None
        after = [(r, d) for r, t, d in rows if t is not None and t >= heal]
        peak = max((d for r, t, d in rows if t is not None and cut <= t and d is not None), default=None)
        back = next((r for r, d in after if d is not None and level is not None and d <= level), None)
        out["partition"] = {"cut_at_s": cut, "healed_at_s": heal, "first_round_after_heal": after[0][0] if after else None,
                            "disagreement_before": level, "disagreement_peak": peak, "back_at_round": back,
                            "rounds_to_recover": None if back is None or not after else back - after[0][0],
                            "loss_measured": [(m["from"], m["to"], m["loss"]) for m in part.get("measured", [])]}
    cross = net.get("cross_site")
    if cross:
        ev = {e["event"]: e["at_s"] for e in net.get("router_events", [])}
        killed_site = next((e["site"] for e in net.get("router_events", [])), None)
        counts = []
        for n in report["nodes"]:
            key = str(n["index"])
            for c, (t0, t1) in zip(cross["per_node"][key], cross["spans"][key]):
                # outside the outage (and 10 s for the links to come back) when the node's site lost its router
                if net["site_of_node"][n["index"]] == killed_site and "killed" in ev and \
                        t1 >= ev["killed"] and t0 <= ev.get("restarted", 1e18) + 10:
                    continue
                counts.append(c)
        out["cross_site_min_per_5_rounds"] = min(counts) if counts else None
        out["router_events"] = net.get("router_events")
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(json.dumps({"report": path, **summarize(json.load(f))}))
