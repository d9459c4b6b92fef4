"""Dashboard responsiveness over a real federation, and the README screenshots.

Starts an N-node digits testnet on loopback (real `fednode start` processes publishing a signed
status every round), opens the dashboard headless over it, and measures:

* start to first data: from creating the app to the first verified status on screen;
* key-press latency: the time from pressing ``o`` (sort) until the action ran, over many presses
  while the nodes publish, as p50 / p95 / max;
* statuses received and rejected.

With ``--screenshots DIR`` it also saves the dashboard (Events, Charts, Neighbourhood and Peer
tabs) as SVG, and as PNG when cairosvg is installed, at 160x48.

    python benchmarks/bench_dashboard.py [--nodes 8] [--rounds 40] [--presses 100] [--screenshots docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
from pathlib import Path

from fednode.gossip.transports.zenoh_transport import ZenohSettings
from fednode.security.identity import AllowList
from fednode.testnet.launcher import Testnet, TestnetOptions
from fednode.tui.app import DashboardApp, StatusFeed


def _png(svg: Path) -> str:
    try:
        import cairosvg
    except ImportError:
        return "cairosvg not installed: SVG only"
    cairosvg.svg2png(url=str(svg), write_to=str(svg.with_suffix(".png")), output_width=1600)
    return str(svg.with_suffix(".png"))


async def _measure(app: DashboardApp, args, shots: Path | None) -> dict:
    out: dict = {}
    async with app.run_test(size=(160, 48)) as pilot:
        end = time.time() + 30
        while app.view.first_data_at is None and time.time() < end:
            await pilot.pause(0.02)
        out["first_data_s"] = None if app.view.first_data_at is None else app.view.first_data_at - app.started_at
        while len(app.view.peers) < args.nodes and time.time() < end + 30:
            await pilot.pause(0.1)
        # wait until rounds are running, then press keys while statuses stream in
        start_round = app.view.current_round()
        while app.view.current_round() < start_round + 2 and time.time() < end + 60:
            await pilot.pause(0.1)
        latencies = []
        statuses_before = app.view.statuses_seen
        for _ in range(args.presses):
            t0 = time.perf_counter()
            await pilot.press("o")
            latencies.append((app.last_action_at - t0) * 1000)
            await pilot.pause(0.05)
        out["statuses_during_presses"] = app.view.statuses_seen - statuses_before
        out["key_latency_ms"] = {"p50": statistics.median(latencies),
                                 "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
                                 "max": max(latencies), "n": len(latencies)}
        if shots is not None:
            # let a few more rounds in so the charts have a history
            target = app.view.current_round() + args.chart_rounds
            while app.view.current_round() < target and time.time() < end + 300:
                await pilot.pause(0.2)
            shots.mkdir(parents=True, exist_ok=True)
            app.sort_key = "peer"
            app._refresh()
            files = []
            for tab, name in (("events", "dashboard"), ("charts", "dashboard-charts"),
                              ("neigh", "dashboard-neighbourhood"), ("detail", "dashboard-peer")):
                app.query_one("TabbedContent").active = tab
                await pilot.pause(0.3)
                svg = shots / f"{name}.svg"
                app.save_screenshot(filename=svg.name, path=str(shots))
                files += [str(svg), _png(svg)]
            out["screenshots"] = files
        out["statuses_seen"] = app.view.statuses_seen
        out["rejected_statuses"] = app.view.rejected_statuses
        out["peers"] = len(app.view.peers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--presses", type=int, default=100)
    ap.add_argument("--chart-rounds", type=int, default=15)
    ap.add_argument("--screenshots", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    net = Testnet(TestnetOptions(nodes=args.nodes, rounds=args.rounds, quiet=True, split="dirichlet", t_hello=2.0,
                                 t_agg=2.0, t_commit=1.0))
    net.prepare()
    allow = AllowList.from_file(net.workdir / "allow_list.txt")
    settings = ZenohSettings.loopback(net.federation, os.urandom(32), multicast_address=net.scout)
    report: dict = {}
    runner = threading.Thread(target=lambda: report.update(net.run()), daemon=True)
    runner.start()
    try:
        # start the dashboard once every node publishes (a running federation), as the criterion says
        end = time.time() + 120
        while time.time() < end:
            statuses = [n.state_dir / "status.json" for n in net.nodes]
            if all(p.exists() for p in statuses):
                break
            time.sleep(0.2)
        app = DashboardApp(net.federation, feed_factory=lambda q: StatusFeed(settings, allow, q))
        result = asyncio.run(_measure(app, args, args.screenshots))
    finally:
        net.request_stop()
        runner.join(timeout=120)
    result["nodes"] = args.nodes
    if args.json:
        print(json.dumps(result, indent=2))
        return
    lat = result["key_latency_ms"]
    print(f"bench_dashboard: {args.nodes} nodes publishing a status per round")
    print(f"  start to first data: {result['first_data_s']:.2f} s (goal < 2 s)")
    print(f"  key press to action: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms over "
          f"{lat['n']} presses with {result['statuses_during_presses']} statuses arriving (goal < 100 ms)")
    print(f"  statuses seen {result['statuses_seen']}, rejected {result['rejected_statuses']}, peers {result['peers']}")
    for f in result.get("screenshots", []):
        print(f"  screenshot: {f}")


if __name__ == "__main__":
    main()
