"""`fednode testnet` end to end: real processes on loopback, the JSON report, the acceptance runs (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_quickstart_testnet_of_four_nodes(tmp_path):
    r = run_testnet(tmp_path, "--nodes", "4", "--rounds", "5", "--seed", "1")
    assert r["ok"] and r["errors"] == []
    assert [n["rounds_completed"] for n in r["nodes"]] == [5] * 4
    assert all(n["test_accuracy"] >= 0.85 and n["bytes_sent"] > 0 and n["bytes_received"] > 0 for n in r["nodes"])
    assert r["averaged_model_accuracy"] >= 0.85


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
