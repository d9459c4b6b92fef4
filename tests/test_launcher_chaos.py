"""The testnet's chaos killer (``--kill-every``): whom it may kill, on real (sleeping) child processes."""

from __future__ import annotations

import json
import subprocess

from fednode.testnet.launcher import Testnet, TestnetOptions, _Node


def _net_with_sleepers(tmp_path, n: int) -> Testnet:
    net = Testnet(TestnetOptions(nodes=n, rounds=100, kill_every=10.0, quiet=True, workdir=tmp_path))
    for i in range(n):
        d = tmp_path / f"node{i}"
        d.mkdir()
        node = _Node(i, d, d / "config.toml", d / "node.log", bytes([i]) * 32)
        node.proc = subprocess.Popen(["sleep", "60"])
        net.nodes.append(node)
    return net


def test_a_node_is_killed_again_only_after_it_progressed(tmp_path):
    net = _net_with_sleepers(tmp_path, 2)
    try:
        a, b = net.nodes
        a.last_round_done, b.last_round_done = 50, 99  # b has finished its rounds
        net._kill_random(0.0)  # a has not completed a round in this incarnation: spared
        assert not a.killed and a.proc.poll() is None
        a.progressed = True
        net._kill_random(0.0)
        assert a.killed and a.proc.poll() is not None and a.restart_at == 5.0
        assert not b.killed  # finished nodes are never candidates
        # restarted (here: a new sleeper) and reporting the round it resumed at: still not killable
        a.proc, a.killed, a.progressed = subprocess.Popen(["sleep", "60"]), False, False
        net._kill_random(20.0)
        assert not a.killed
        # its status: first the old incarnation's file, then the resumed round, then a new round
        a.restarts = 1
        for rnd, restarts, progressed in ((51, 0, False), (51, 1, False), (52, 1, True)):
            (a.state_dir / "status.json").write_text(json.dumps({"round": rnd, "restarts": restarts}))
            net._poll_status(21.0)
            assert a.progressed is progressed, (rnd, restarts)
        assert a.resumes[-1]["resumed_at_round"] == 51
    finally:
        for node in net.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
