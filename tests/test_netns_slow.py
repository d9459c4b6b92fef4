"""`fednode testnet --netns` end to end (root, slow): impaired links measured, partition and heal, sites
through routers with a router killed, and leftovers of a SIGKILLed launcher removed by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fednode.testnet import netns

pytestmark = [pytest.mark.slow, pytest.mark.zenoh,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]


def _testnet(tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "fednode", "testnet", "--quiet", "--netns", "--report", str(report),
                          "--workdir", str(tmp_path / "wd"), *args], capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert report.exists(), res.stderr[-3000:]
    data = json.loads(report.read_text())
    run_id = data["network"]["run_id"]
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"fednode-{run_id}-")]
    assert not (netns.STATE_DIR / f"{run_id}.json").exists()
    return data


def test_impaired_links_are_measured(tmp_path):
    r = _testnet(tmp_path, "--nodes", "4", "--rounds", "4", "--link", "delay=20ms jitter=2ms loss=1%",
                 "--link", "3:delay=40ms")
    assert r["ok"], r["errors"]
    m = {(x["from"], x["to"]): x for x in r["network"]["links_measured"]}
    assert 38 <= m[(0, 1)]["rtt_ms"]["median"] <= 60  # 2 x 20 ms, one shim at each end
    assert 58 <= m[(2, 3)]["rtt_ms"]["median"] <= 85  # 20 + 40 ms
    shims = r["network"]["shims"]
    assert all(s["forwarded"] > 0 for s in shims.values()) and shims["0"]["dropped_loss"] > 0
    assert shims["3"]["dropped_loss"] == 0
    assert all(n["rounds_completed"] == 4 for n in r["nodes"])


def test_partition_and_heal(tmp_path):
    # 250 rounds: about 130 inside the 30 s cut and about 100 after the heal on this machine, so neither
    # window depends on how fast a round is (CI once finished a 50-round run right after the cut).
    # 30 s, not 20: one group of two was once stuck for 15.7 s of a 20 s cut (each gap inside the
    # round bound, but 9 rounds in the window); docs/protocol.md, "Round bound under delay and partitions"
    r = _testnet(tmp_path, "--nodes", "4", "--rounds", "250", "--link", "delay=40ms",
                 "--partition", "at=3s for=30s groups=0-1|2-3", "--lease-ms", "1000")
    assert r["ok"], r["errors"]
    part = r["network"]["partition"]
    assert [e["event"] for e in part["events"]] == ["cut", "healed"]
    across = [m for m in part["measured"] if m["across_groups"]]
    inside = [m for m in part["measured"] if not m["across_groups"]]
    assert across and all(m["loss"] == 1.0 for m in across) and all(m["loss"] < 0.2 for m in inside)
    cut, healed = part["events"][0]["at_s"], part["events"][1]["at_s"]  # launcher clock, like per_round t_s
    for node in r["nodes"]:
        mine = {p["peer_id"] for p in r["nodes"] if (p["index"] < 2) == (node["index"] < 2)}
        seen = [(rec["round"], rec["t_s"], len(rec["neighbours"])) for rec in node["per_round"]]
        # while cut (after the dead links are torn down), nodes go on averaging inside their own group only
        during = [rec for rec in node["per_round"] if cut + 6 < rec["t_s"] < healed]
        assert len(during) >= 10, f"node {node['index']}: cut {cut} s, healed {healed} s, rounds {seen}"
        assert all(set(rec["neighbours"]) <= mine for rec in during)
        assert any(rec["neighbours"] for rec in during)
        after = [rec for rec in node["per_round"] if rec["t_s"] > healed]
        assert any(set(rec["neighbours"]) - mine for rec in after), f"node {node['index']} never crossed the healed cut"
    # the groups drift apart while cut and come back to one consensus after the heal
    s = r["series"]
    gap = [d for d, t in zip(s["consensus_disagreement"], s["t_s"]) if cut + 6 < t < healed]
    assert gap and max(gap) > 0
    assert s["consensus_disagreement"][-1] < 0.05 * max(gap), s["consensus_disagreement"][-20:]
    assert all(n["max_round_gap_s"] <= r["round_length_bound_s"] for n in r["nodes"])


def test_sites_through_routers_and_a_killed_router(tmp_path):
    r = _testnet(tmp_path, "--nodes", "4", "--sites", "2", "--rounds", "120", "--link", "delay=50ms",
                 "--kill-router", "site=1 at=3s for=8s", "--lease-ms", "1000")
    assert r["ok"], r["errors"]
    net = r["network"]
    assert net["site_of_node"] == [0, 0, 1, 1]
    assert [e["event"] for e in net["router_events"]] == ["killed", "restarted"]
    site = {n["peer_id"]: s for n, s in zip(r["nodes"], net["site_of_node"])}
    killed, back = net["router_events"][0]["at_s"], net["router_events"][1]["at_s"]
    for node, s in zip(r["nodes"], net["site_of_node"]):
        recs = node["per_round"]
        t = [rec["t_s"] for rec in recs]
        cross = [any(site[p] != s for p in rec["neighbours"]) for rec in recs]
        assert any(c for c, ti in zip(cross, t) if ti < killed), "no cross-site average before the kill"
        assert not any(c for c, ti in zip(cross, t) if killed + 3 < ti < back), "crossed a dead router"
        assert any(c for c, ti in zip(cross, t) if ti > back + 3), "no cross-site average after the restart"
    assert all(n["max_round_gap_s"] <= r["round_length_bound_s"] for n in r["nodes"])


def test_sigkilled_launcher_leaves_nothing_after_the_next_run(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fednode", "testnet", "--quiet", "--netns", "--nodes", "2",
                             "--rounds", "1000", "--link", "delay=5ms", "--workdir", str(tmp_path / "wd")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        names: list[str] = []
        for _ in range(600):
            names = [ns for ns in netns.list_namespaces() if netns.parse_ns_name(ns)
                     and (netns.STATE_DIR / f"{netns.parse_ns_name(ns)[0]}.json").exists()
                     and json.loads((netns.STATE_DIR / f"{netns.parse_ns_name(ns)[0]}.json").read_text())["pid"]
                     == proc.pid]
            if len(names) == 3 and (tmp_path / "wd" / "node1" / "node.log").exists():
                break
            time.sleep(0.1)
        assert len(names) == 3
        rid = netns.parse_ns_name(names[0])[0]
        # a live launcher's run is never taken for a leftover
        assert rid not in netns.stale_runs(netns.list_namespaces())
        inside = [int(p) for ns in names for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                                                  text=True).stdout.split()]
        assert inside  # shims and nodes
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert set(names) <= set(netns.list_namespaces())  # SIGKILL: nothing could clean up
    removed = netns.clean_leftovers()
    assert set(names) <= set(removed)
    assert not set(names) & set(netns.list_namespaces())
    assert not (netns.STATE_DIR / f"{rid}.json").exists()
    time.sleep(0.5)
    assert not [p for p in inside if netns.pid_alive(p, None)]
