"""Adversaries against live loopback federations (slow): Byzantine node processes, and a flood of forgeries.

- A small Byzantine testnet: the attacker is marked in the report and says so in its status; with
  ``nan`` every honest node counts the refused contributions and still learns; with ``signflip``
  under the median rule the honest nodes keep learning.
- A smaller flood (benchmarks/bench_forgery.py, 10,000 messages at 4 nodes): no node crashes, every
  exclusive reject group matches the number sent exactly, every message signed by the compromised
  key is counted against that key exactly, and the honest nodes still learn.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _testnet(tmp_path: Path, *args: str) -> dict:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "fednode", "testnet", "--quiet", "--report", str(report), *args],
                          capture_output=True, text=True, timeout=900)
    assert report.exists(), proc.stderr[-2000:]
    return json.loads(report.read_text())


def test_byzantine_nan_attacker_is_refused_on_the_wire(tmp_path):
    r = _testnet(tmp_path, "--nodes", "5", "--rounds", "12", "--byzantine", "1", "--attack", "nan",
                 "--degree", "2", "--seed", "2")
    assert r["ok"], r["errors"]
    attackers = [n for n in r["nodes"] if n["byzantine"]]
    assert len(attackers) == 1 and attackers[0]["attack"] == "nan" and r["byzantine"] == [attackers[0]["index"]]
    assert all(n["attack"] is None for n in r["nodes"] if not n["byzantine"])
    refused = r["honest_rejects"].get("non_finite", 0) + r["honest_rejects"].get("banned", 0)
    assert refused > 0
    assert r["honest_accuracy_min"] >= 0.85


def test_byzantine_signflip_under_median(tmp_path):
    # 25 rounds: at 15 the slowest honest node ended at 0.841-0.908 (3 of 5 runs below 0.85): the
    # attacker slows the median down on Dirichlet data, it does not stop it. At 25 rounds: 0.903,
    # 0.933, 0.914; plain gossip (--aggregator gossip) under the same attack: 0.783.
    r = _testnet(tmp_path, "--nodes", "6", "--rounds", "25", "--byzantine", "1", "--attack", "signflip",
                 "--aggregator", "median", "--degree", "4", "--split", "dirichlet", "--seed", "1")
    assert r["ok"], r["errors"]
    assert r["aggregator"] == "median" and r["attack"] == "signflip"
    assert r["honest_accuracy_min"] >= 0.85, r["nodes"]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_forgery", ROOT / "benchmarks" / "bench_forgery.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_smaller_flood_is_rejected_exactly_and_harms_nobody():
    bench = _bench()
    args = argparse.Namespace(nodes=4, rounds=300, seed=0, timeout=600.0, messages=10_000, rate=2500.0, bcast=200)
    out = bench.run_federation(args, flood=True)
    assert "sent" in out["forger"], out["forger"]
    assert out["forger"]["total"] >= 10_000
    assert all(n["exit_code"] == 0 for n in out["nodes"]), out["nodes"]
    assert out["nodes_alive_after_flood"] == 4  # the flood hit live nodes, not finished ones
    for idx, groups in out["match"].items():
        why = (idx, groups, out["nodes"][int(idx)]["rejects"], out["mallory_signed"][idx])
        # every message mallory signed is rejected and counted against mallory, exactly
        assert out["mallory_signed"][idx]["rejected"] == out["mallory_signed"][idx]["sent"] > 0, why
        for group, v in groups.items():
            if group in ("rounds_and_replays", "mallory"):
                continue
            assert v["rejected"] == v["sent"], why
        # by reason, a content kind of mallory's may be stale by arrival (the node ran past the window)
        rounds, content = groups["rounds_and_replays"], groups["mallory"]
        assert content["rejected"] <= content["sent"], why
        assert rounds["rejected"] + content["rejected"] >= rounds["sent"] + content["sent"], why
    assert all(n["test_accuracy"] >= 0.85 for n in out["nodes"]), out["nodes"]
    bound = out["report"]["round_length_bound_s"]
    assert all(n["max_round_gap_s"] <= bound for n in out["nodes"]), (bound, out["nodes"])
