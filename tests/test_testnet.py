"""`fednode testnet` end to end: real processes on loopback, the JSON report, the acceptance runs (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.zenoh
REPORT_KEYS = {"federation", "wall_time_s", "consensus_disagreement", "averaged_model_accuracy", "nodes"}
NODE_KEYS = {"peer_id", "rounds_completed", "test_accuracy", "test_loss", "bytes_sent", "bytes_received", "restarts"}


def run_testnet(tmp_path: Path, *args: str, timeout: float = 900) -> dict:
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "fednode", "testnet", "--quiet", "--report", str(report), *args],
                            capture_output=True, text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert report.exists(), result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert REPORT_KEYS <= set(data) and all(NODE_KEYS <= set(n) for n in data["nodes"])
    assert result.returncode == (0 if data["ok"] else 1)
    return data


@pytest.fixture(scope="module")
def quickstart_report(tmp_path_factory) -> tuple[Path, dict]:
    """One real 4-node run shared by the tests that read its report."""
    tmp = tmp_path_factory.mktemp("quickstart")
    return tmp / "report.json", run_testnet(tmp, "--nodes", "4", "--rounds", "5", "--seed", "1")


def test_quickstart_testnet_of_four_nodes(quickstart_report):
    r = quickstart_report[1]
    assert r["ok"] and r["errors"] == []
    assert [n["rounds_completed"] for n in r["nodes"]] == [5] * 4
    assert all(n["test_accuracy"] >= 0.85 and n["bytes_sent"] > 0 and n["bytes_received"] > 0 for n in r["nodes"])
    assert r["averaged_model_accuracy"] >= 0.85
    _check_series(r, nodes=4, rounds=5)


def _check_series(r: dict, nodes: int, rounds: int) -> None:
    """The per-round series of a real run: every round of every node, consistent with the final figures."""
    peers = {n["peer_id"] for n in r["nodes"]}
    for n in r["nodes"]:
        pr = n["per_round"]
        assert [x["round"] for x in pr] == list(range(rounds))
        assert all(x["outcome"] == "commit" and x["neighbours"] and set(x["neighbours"]) <= peers - {n["peer_id"]}
                   for x in pr)
        assert all(0 < x["t_s"] <= r["wall_time_s"] and x["round_time_s"] > 0 for x in pr)
        assert [x["t_s"] for x in pr] == sorted(x["t_s"] for x in pr)
        sent = [x["bytes_sent"] for x in pr]
        assert sent == sorted(sent) and sent[0] > 0 and sent[-1] <= n["bytes_sent"]
        assert pr[-1]["accuracy"] == n["test_accuracy"] and pr[-1]["loss"] == n["test_loss"]
        assert n["rss_peak_mb"] is not None and 50 < n["rss_peak_mb"] < 4000
    s = r["series"]
    assert s["round"] == list(range(rounds)) and s["nodes"] == [nodes] * rounds
    assert s["accuracy_min"][-1] == pytest.approx(min(n["test_accuracy"] for n in r["nodes"]), abs=1e-6)
    assert all(lo <= med for lo, med in zip(s["accuracy_min"], s["accuracy_median"]))
    assert s["consensus_disagreement"][-1] == pytest.approx(r["consensus_disagreement"], rel=1e-3, abs=1e-4)
    assert all(d is not None and d >= 0 for d in s["consensus_disagreement"])
    assert s["bytes_sent_total"] == sorted(s["bytes_sent_total"]) and s["t_s"] == sorted(s["t_s"])
    assert r["accuracy_min"] == min(n["test_accuracy"] for n in r["nodes"]) and r["rss_peak_mb_max"] > 0


def test_round_parameters_reach_every_node_config(tmp_path):
    import tomllib

    from fednode.testnet.launcher import Testnet, TestnetOptions
    net = Testnet(TestnetOptions(nodes=3, rounds=2, workdir=tmp_path, degree=2, aggregator="trimmed_mean",
                                 t_hello=1.5, t_agg=3.5, t_commit=0.75, max_retries=4, lease_ms=1500,
                                 wait_peers_s=12.0).check())
    net.prepare()
    for node in net.nodes:
        cfg = tomllib.loads(node.config_path.read_text())
        assert {k: cfg[k] for k in ("degree", "aggregator", "t_hello", "t_agg", "t_commit", "max_retries",
                                    "lease_ms", "wait_peers_s", "record_trajectory")} == {
            "degree": 2, "aggregator": "trimmed_mean", "t_hello": 1.5, "t_agg": 3.5, "t_commit": 0.75,
            "max_retries": 4, "lease_ms": 1500, "wait_peers_s": 12.0, "record_trajectory": True}


@pytest.mark.parametrize("flags, message", [
    (["--degree", "0"], "--degree must be >= 1"),
    (["--aggregator", "mean"], "--aggregator must be one of gossip, clipped, trimmed_mean, median"),
    (["--t-agg", "0"], "--t-agg must be > 0"),
    (["--max-retries", "-1"], "--max-retries must be >= 0"),
    (["--lease-ms", "5"], "--lease-ms must be >= 100"),
])
def test_bad_round_parameters_are_one_line_errors(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "fednode", "testnet", "--workdir", str(tmp_path / "w"), *flags],
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"fednode: error: {message}")
    assert not (tmp_path / "w").exists()  # nothing created


@pytest.mark.slow
def test_eight_nodes_dirichlet_digits(tmp_path):
    r = run_testnet(tmp_path, "--nodes", "8", "--rounds", "30", "--split", "dirichlet", "--alpha", "0.5", "--seed", "0")
    assert r["ok"] and r["wall_time_s"] <= 300
    assert min(n["test_accuracy"] for n in r["nodes"]) >= 0.93


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist missing")
def test_eight_nodes_dirichlet_fashion_mnist(tmp_path):
    r = run_testnet(tmp_path, "--nodes", "8", "--rounds", "20", "--task", "fashion-mnist", "--split", "dirichlet",
                "--alpha", "0.5", "--seed", "0")
    assert r["ok"] and min(n["test_accuracy"] for n in r["nodes"]) >= 0.84


@pytest.mark.slow
def test_twelve_nodes_of_degree_four_report_memory_and_series(tmp_path):
    """A smaller version of the 32-node scale run (README "Scale on one machine")."""
    r = run_testnet(tmp_path, "--nodes", "12", "--degree", "4", "--rounds", "10", "--split", "dirichlet",
                    "--alpha", "0.5", "--seed", "0", "--stagger", "0.3")
    assert r["ok"] and [n["rounds_completed"] for n in r["nodes"]] == [10] * 12
    assert all(100 < n["rss_peak_mb"] < 2000 for n in r["nodes"])
    assert r["rss_peak_mb_max"] == max(n["rss_peak_mb"] for n in r["nodes"]) and r["rss_peak_mb_median"] > 100
    assert 0 < r["accuracy_min"] <= r["accuracy_median"]
    for n in r["nodes"]:  # the overlay degree reached the nodes: never more than 4 neighbours
        assert all(len(x["neighbours"]) <= 4 for x in n["per_round"])
        assert sum(1 for x in n["per_round"] if x["neighbours"]) >= 8
    s = r["series"]
    assert s["round"] == list(range(10)) and all(d is not None for d in s["consensus_disagreement"])
    assert 0 < s["consensus_disagreement_relative"][-1] < 0.1  # degree 4 of 12: close, not exact, agreement


@pytest.mark.slow
def test_kill_and_restart_every_few_seconds(tmp_path):
    r = run_testnet(tmp_path, "--nodes", "8", "--rounds", "700", "--seed", "3", "--kill-every", "10")
    assert r["ok"]
    assert sum(n["restarts"] for n in r["nodes"]) >= 3
    for n in r["nodes"]:
        assert not n["rounds_went_backwards"]
        assert all(x["resumed_at_round"] is None or x["resumed_at_round"] >= x["checkpoint_round"]
                   for x in n["resumes"])
        assert n["max_round_gap_s"] <= r["round_length_bound_s"]
        assert n["test_accuracy"] >= 0.90


def test_plot_of_a_real_report(quickstart_report, tmp_path):
    mpimg = pytest.importorskip("matplotlib.image")
    path, _ = quickstart_report
    out = tmp_path / "runs.png"
    result = subprocess.run([sys.executable, "-m", "fednode", "plot", str(path), str(path), "--label", "run a",
                             "--label", "run b", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    img = mpimg.imread(out)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 50  # drawn, not a blank canvas
    # no series in the file, or matplotlib missing: one line each
    bare = tmp_path / "old.json"
    bare.write_text(json.dumps({"federation": "x", "nodes": []}))
    for code in (f"from fednode.cli import main; raise SystemExit(main(['plot', {str(bare)!r}, '-o', 'x.png']))",
                 "import sys; sys.modules['matplotlib'] = None; from fednode.cli import main; "
                 f"raise SystemExit(main(['plot', {str(path)!r}, '-o', 'x.png']))"):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("fednode: error: "), result.stderr
    assert "pip install 'fednode[plot]'" in lines[0] and not (tmp_path / "x.png").exists()


def _pids_using(path: Path) -> list[int]:
    """PIDs of processes whose command line names ``path`` (the nodes of one test's testnet)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if str(path).encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.mark.slow
def test_nodes_do_not_outlive_a_sigkilled_launcher(tmp_path):
    import signal
    import time
    work = tmp_path / "net"
    launcher = subprocess.Popen([sys.executable, "-m", "fednode", "testnet", "--quiet", "--nodes", "2", "--rounds",
                                 "100000", "--workdir", str(work), "--keep", "--timeout", "300"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(work.glob("node*/status.json"))) < 2:
            time.sleep(0.5)
        nodes = [p for p in _pids_using(work) if p != launcher.pid]
        assert len(nodes) == 2, nodes
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
    deadline = time.time() + 30
    while time.time() < deadline and _pids_using(work):
        time.sleep(0.5)
    left = _pids_using(work)
    for pid in left:  # only our own nodes (their command line names this test's directory)
        os.kill(pid, signal.SIGKILL)
    assert not left, "nodes outlived their SIGKILLed launcher"
