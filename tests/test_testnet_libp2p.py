"""The issue-11 acceptance runs over libp2p (slow suite): 8 nodes, digits, Dirichlet 0.5, 30 rounds."""

from __future__ import annotations

import pytest

from fednode.gossip.transports.libp2p_settings import libp2p_available
from test_testnet import run_testnet

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not libp2p_available(), reason="the libp2p extra is not installed")]
COMMON = ("--transport", "libp2p", "--nodes", "8", "--rounds", "30", "--split", "dirichlet", "--alpha", "0.5",
          "--seed", "0")


def _completed_in_order(r: dict) -> None:
    assert r["ok"], r["errors"]
    for n in r["nodes"]:
        assert n["rounds_completed"] >= 30 and not n["rounds_went_backwards"]
        assert all(x["resumed_at_round"] is None or x["resumed_at_round"] >= x["checkpoint_round"]
                   for x in n["resumes"])


def test_eight_nodes_over_libp2p_reach_the_accuracy_of_zenoh(tmp_path):
    r = run_testnet(tmp_path, *COMMON)
    _completed_in_order(r)
    assert min(n["test_accuracy"] for n in r["nodes"]) >= 0.93


def test_eight_nodes_over_libp2p_with_secagg_plus(tmp_path):
    _completed_in_order(run_testnet(tmp_path, *COMMON, "--secure-aggregation", "secagg+"))


def test_eight_nodes_over_libp2p_with_a_sigkill_every_20_s(tmp_path):
    r = run_testnet(tmp_path, *COMMON, "--kill-every", "20")
    _completed_in_order(r)
