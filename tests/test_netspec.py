"""Fast tests of the real-network parts that need no root: spec parsing, leftover selection, shim decisions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from fednode.testnet import netns
from fednode.testnet.impair import Impairment, ShimConfig
from fednode.testnet.linkspec import (LinkSpec, SpecError, check_sites, parse_kill_router, parse_link, parse_links,
                                      parse_partition, site_of)
from fednode.testnet.options import TestnetOptions
from fednode.testnet.probe import summarize


def test_link_spec_parses_units():
    s = parse_link("delay=50ms jitter=10ms loss=2% rate=20mbit")
    assert s == LinkSpec(0.05, 0.01, 0.02, 20e6) and s.impaired
    assert parse_link("rate=500kbit") == LinkSpec(rate_bps=500e3) and not parse_link("rate=500kbit").impaired
    assert parse_link("loss=0.5%").loss == pytest.approx(0.005)
    assert parse_link("delay=1.5s").delay_s == 1.5 and parse_link("delay=200us").delay_s == pytest.approx(2e-4)


@pytest.mark.parametrize("spec, words", [
    ("", "empty"), ("delay", "key=value"), ("delay=50", "time"), ("delay=50ms delay=10ms", "twice"),
    ("latency=5ms", "unknown key"), ("loss=2", "percentage"), ("loss=101%", "percentage"),
    ("rate=20mb", "rate"), ("rate=0mbit", "positive"), ("delay=10ms jitter=20ms", "must not exceed"),
    ("delay=11s", "at most"),
])
def test_bad_link_specs_are_one_line(spec, words):
    with pytest.raises(SpecError) as e:
        parse_link(spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_link_per_node_and_site():
    links = parse_links(["delay=10ms", "site1:delay=20ms", "5:loss=1%"], nodes=6, sites=2)
    assert [ln.delay_s for ln in links] == [0.01, 0.01, 0.01, 0.02, 0.02, 0.0]
    assert links[5].loss == 0.01
    assert parse_links([], 3, 1) == [LinkSpec()] * 3
    for bad, words in ((["9:delay=1ms"], "does not exist"), (["site2:delay=1ms"], "site 2"),
                       (["x:delay=1ms"], "prefix")):
        with pytest.raises(SpecError, match=words):
            parse_links(bad, 6, 2)


def test_sites_deal_contiguous_blocks():
    assert [site_of(i, 9, 3) for i in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [site_of(i, 5, 2) for i in range(5)] == [0, 0, 0, 1, 1]
    check_sites(3, 9, True)
    for args, words in (((0, 4, True), "positive"), ((2, 4, False), "needs --netns"), ((5, 4, True), "at least one")):
        with pytest.raises(SpecError, match=words):
            check_sites(*args)


def test_partition_spec():
    p = parse_partition("at=20s for=30s groups=0-3|4-7", 8)
    assert (p.at_s, p.for_s) == (20, 30) and p.groups == (frozenset(range(4)), frozenset(range(4, 8)))
    assert [p.group_of(i) for i in (0, 3, 4, 7)] == [0, 0, 1, 1]
    q = parse_partition("groups=0,2|1 at=1s for=500ms", 4)  # node 3 unlisted: a group of its own
    assert q.group_of(3) == 2 and q.for_s == 0.5
    for spec, words in (("at=1s for=2s", "missing groups"), ("at=1s for=2s groups=0-3", "two groups"),
                        ("at=1s for=2s groups=0-2|2-3", "two groups"), ("at=1s for=2s groups=0-9|1", "outside"),
                        ("at=1s for=0s groups=0|1", "> 0"), ("at=x for=2s groups=0|1", "time"),
                        ("at=1s for=2s groups=a|b", "node indices")):
        with pytest.raises(SpecError, match=words):
            parse_partition(spec, 4)


def test_kill_router_spec():
    k = parse_kill_router("site=1 at=20s for=20s", 3)
    assert (k.site, k.at_s, k.for_s) == (1, 20, 20)
    for spec, sites, words in (("site=3 at=1s for=1s", 3, "site index"), ("site=0 at=1s for=1s", 1, "--sites 2"),
                               ("site=0 at=1s", 3, "missing for")):
        with pytest.raises(SpecError, match=words):
            parse_kill_router(spec, sites)


# ---------------------------------------------------------------------------- leftovers


def test_namespace_names_of_fednode_runs_only():
    assert netns.parse_ns_name(netns.ns_name("a1b2c3", "n12")) == ("a1b2c3", "n12")
    assert netns.parse_ns_name("fednode-a1b2c3-hub") == ("a1b2c3", "hub")
    assert netns.parse_ns_name("fednode-a1b2c3-r2") == ("a1b2c3", "r2")
    for other in ("fednode-a1b2c-n1", "fednode-A1B2C3-n1", "fednode-a1b2c3-x1", "xfednode-a1b2c3-n1",
                  "fednode-a1b2c3-n1-extra", "docker0", "fednode-a1b2c3-"):
        assert netns.parse_ns_name(other) is None


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_runs_spare_live_launchers(tmp_path):
    me = os.getpid()
    (tmp_path / "aaaaaa.json").write_text(json.dumps({"pid": me, "start_ticks": netns.process_start_ticks(me)}))
    (tmp_path / "bbbbbb.json").write_text(json.dumps({"pid": _dead_pid(), "start_ticks": 1}))
    # a live PID whose start time differs: the launcher died and its PID was reused
    (tmp_path / "cccccc.json").write_text(json.dumps({"pid": me, "start_ticks": netns.process_start_ticks(me) + 7}))
    (tmp_path / "eeeeee.json").write_text("not json")
    names = ["fednode-aaaaaa-hub", "fednode-aaaaaa-n0", "fednode-bbbbbb-n0", "fednode-bbbbbb-hub",
             "fednode-cccccc-n1", "fednode-dddddd-n0", "fednode-eeeeee-r0", "other-ns", "fednode-ffffff-zz"]
    stale = netns.stale_runs(names, tmp_path)
    assert stale == {"bbbbbb": ["fednode-bbbbbb-hub", "fednode-bbbbbb-n0"], "cccccc": ["fednode-cccccc-n1"],
                     "dddddd": ["fednode-dddddd-n0"], "eeeeee": ["fednode-eeeeee-r0"]}


def test_pid_alive_and_zombies():
    assert netns.pid_alive(os.getpid(), netns.process_start_ticks(os.getpid()))
    assert not netns.pid_alive(_dead_pid(), None)
    assert not netns.pid_alive(-1, None) and not netns.pid_alive(0, None)
    z = subprocess.Popen([sys.executable, "-c", "pass"])  # not yet reaped: a zombie counts as dead
    for _ in range(200):
        if not netns.pid_alive(z.pid, None):
            break
        import time
        time.sleep(0.01)
    assert not netns.pid_alive(z.pid, None)
    z.wait()


def test_delete_namespaces_refuses_foreign_names(monkeypatch):
    calls = []
    monkeypatch.setattr(netns, "_ip", lambda *a, **k: calls.append(a) or subprocess.CompletedProcess(a, 0, "", ""))
    assert netns.delete_namespaces(["docker0", "cni-1234", "fednode-xyz-n0"]) == []
    assert calls == []


def test_topology_addresses_and_names():
    t = netns.Topology(9, 3, rid="abc123")
    assert [n.address for n in t.node_nets[:4]] == ["198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.1.10"]
    assert [r.site_address for r in t.routers] == ["198.18.0.1", "198.18.1.1", "198.18.2.1"]
    assert all(netns.parse_ns_name(ns) for ns in t.all_namespaces()) and len(t.all_namespaces()) == 13
    assert netns.Topology(4).routers == []


# ---------------------------------------------------------------------------- shim decisions and probes


def _pkt(dst: str) -> bytes:
    return bytes([0x45]) + bytes(15) + socket.inet_aton(dst) + bytes(20)


def test_impairment_delays_without_reordering_and_drops():
    imp = Impairment(ShimConfig(dev="eth0", address="198.18.0.10", delay_s=0.05, jitter_s=0.01, loss=0.1, seed=3))
    times = [imp.decide(_pkt("198.18.0.11"), 100.0 + i * 0.001) for i in range(5000)]
    kept = [t for t in times if t is not None]
    assert 0.08 < 1 - len(kept) / len(times) < 0.12
    assert kept == sorted(kept)
    assert all(t - 100.0 >= 0.04 for t in kept)
    assert imp.stats["dropped_loss"] == len(times) - len(kept)


def test_impairment_partition_switch():
    imp = Impairment(ShimConfig(dev="eth0", address="198.18.0.10", partition_drop=["198.18.0.12"]))
    assert imp.decide(_pkt("198.18.0.12"), 9.9) == 9.9
    imp.partition_on = True
    assert imp.decide(_pkt("198.18.0.12"), 10.0) is None and imp.decide(_pkt("198.18.0.11"), 15.0) == 15.0
    imp.partition_on = False
    assert imp.decide(_pkt("198.18.0.12"), 20.0) == 20.0
    assert imp.stats["dropped_partition"] == 1


def test_probe_summary():
    s = summarize(4, [0.1, 0.12, 0.11])
    assert s["loss"] == 0.25 and s["rtt_ms"]["median"] == 110.0 and s["rtt_ms"]["min"] == 100.0
    assert summarize(2, []) == {"sent": 2, "received": 0, "loss": 1.0}


# ---------------------------------------------------------------------------- bad input, end to end


def _cli(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fednode", *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--netns", "--link", "delay=5"], "expected a time"),
    (["--netns", "--partition", "at=1s for=1s groups=0-3"], "two groups"),
    (["--netns", "--sites", "0"], "positive"),
    (["--sites", "2"], "needs --netns"),
    (["--link", "delay=5ms"], "need --netns"),
])
def test_testnet_bad_network_specs(tmp_path, args, words):
    wd = tmp_path / "wd"
    r = _cli("testnet", "--workdir", str(wd), *args, tmp_path=tmp_path)
    assert r.returncode == 2 and words in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("fednode: error: ")
    assert not wd.exists()


def test_netns_needs_root(monkeypatch):
    from fednode.testnet.netrun import validate_network_options
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NetnsError, match="needs root"):
        validate_network_options(TestnetOptions(netns=True))


def test_cross_site_windows():
    from fednode.testnet.netrun import cross_site_windows
    a, b, c = "aa", "bb", "cc"
    nodes = [{"index": 0, "peer_id": a, "per_round": [{"round": r, "t_s": r, "neighbours": [b] if r != 3 else [c]}
                                                      for r in range(10)]},
             {"index": 1, "peer_id": b, "per_round": [{"round": r, "t_s": r, "neighbours": [a, c]}
                                                      for r in list(range(5)) + list(range(20, 25))]},
             {"index": 2, "peer_id": c, "per_round": [{"round": r, "t_s": r, "neighbours": [a] if r < 5 else []}
                                                      for r in range(12)]}]
    out = cross_site_windows(nodes, [0, 0, 1])
    # node 1 skipped rounds 5-19 (a resync): its two windows are its own 10 completed rounds
    assert out["per_node"] == {"0": [1, 0], "1": [5, 5], "2": [5, 0]} and out["min_per_window"] == 0
    assert out["spans"]["1"] == [[0, 4], [20, 24]]


@pytest.mark.parametrize("first_interrupt", [True, False])
def test_interrupt_during_cleanup_does_not_skip_removing_the_namespaces(tmp_path, monkeypatch, first_interrupt):
    """Ctrl-C pressed again (or SIGTERM) while the launcher stops the nodes: the namespaces are still removed."""
    import signal
    import time

    from fednode.testnet import launcher
    net = launcher.Testnet(TestnetOptions(nodes=2, rounds=1, workdir=tmp_path, quiet=True).check())
    net.prepare()
    closed = []

    class FakeNet:  # stands for NetRun: close() is where the namespaces are deleted
        errors: list[str] = []

        def start(self, t0):
            pass

        def close(self):
            closed.append(True)
            return []

        def report(self, base):
            return {}

    net.net = FakeNet()
    monkeypatch.setattr(net, "_launch", lambda node: None)

    def monitor():
        if first_interrupt:
            raise KeyboardInterrupt

    def stop_all():  # while the nodes stop: Ctrl-C, then SIGTERM
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)

    monkeypatch.setattr(net, "_monitor", monitor)
    monkeypatch.setattr(net, "_stop_all", stop_all)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        report = net.run()
    except KeyboardInterrupt:
        pytest.fail("a second Ctrl-C cut the cleanup short")
    assert closed == [True]
    assert report["errors"].count("interrupted") == 1 and not report["ok"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_interrupted_namespace_creation_leaves_no_namespace(tmp_path, monkeypatch):
    """Ctrl-C reaches `ip netns add` too: a namespace it made before the KeyboardInterrupt is still deleted."""
    existing: set[str] = set()

    def fake_run(cmd, **kw):
        if cmd[:3] == ["ip", "netns", "add"]:
            existing.add(cmd[3])
            if cmd[3].endswith("-n1"):
                raise KeyboardInterrupt  # arrives after ip made the namespace, before run() returns
        elif cmd[:3] == ["ip", "netns", "del"]:
            existing.discard(cmd[3])
        out = "\n".join(sorted(existing)) if cmd[:3] == ["ip", "netns", "list"] else ""
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(netns, "require_root", lambda: None)
    monkeypatch.setattr(netns.subprocess, "run", fake_run)
    topo = netns.Topology(3, state_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        topo.create()
    assert existing == set() and topo.created == [] and not topo.state_file.exists()
