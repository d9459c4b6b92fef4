"""Real federations on loopback Zenoh: `fednode start` processes discover each other by scouting alone.

Everything is pinned to the loopback interface (multicast scouting on `lo`, listening on
127.0.0.1); every process started here is ended by its PID in a finally block.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fednode.gossip.transports.zenoh_transport import ZenohSettings, ZenohTransport
from fednode.node.checkpoint import load_checkpoint
from fednode.node.config import NodeConfig
from fednode.security.identity import AllowList, Identity

pytestmark = pytest.mark.zenoh


class Federation:
    """N `fednode start` processes of one federation, plus optional intruders."""

    def __init__(self, root: Path, federation: str, n: int, rounds: int, *, intruders: int = 0,
                 allow: AllowList | None = None, **node_kw) -> None:
        # a suffix of its own: concurrent test runs on one machine share the loopback scouting group
        federation = f"{federation}-{secrets.token_hex(3)}"
        self.root, self.federation, self.rounds = root, federation, rounds
        self.procs: dict[int, subprocess.Popen] = {}
        self.dirs: list[Path] = []
        idents = [Identity.generate() for _ in range(n + intruders)]
        self.allow = allow or AllowList()
        for ident in idents[:n]:
            self.allow.add(ident.public_key_bytes)
        self.allow_path = root / f"{federation}-allow.txt"
        self.allow.to_file(self.allow_path)
        # intruders list everyone (so they try to take part) but nobody lists them
        intruder_allow = AllowList.from_file(self.allow_path)
        for ident in idents[n:]:
            intruder_allow.add(ident.public_key_bytes)
        intruder_path = root / f"{federation}-intruder-allow.txt"
        intruder_allow.to_file(intruder_path)
        self.peer_ids = [i.peer_id for i in idents]
        for k, ident in enumerate(idents):
            d = root / f"{federation}-node{k}"
            d.mkdir()
            ident.save(d / "identity.pem")
            cfg = NodeConfig(federation=federation, state_dir=d,
                             allow_list=self.allow_path if k < n else intruder_path,
                             listen=["tcp/127.0.0.1:0"], interface="lo", node_index=k % n, node_count=n,
                             **{**dict(rounds=rounds, t_hello=3.0, t_agg=2.0, t_commit=1.0, lease_ms=1000,
                                   min_peers=n - 1 if k < n else 0, linger_s=2.0), **node_kw})
            (d / "config.toml").write_text(cfg.to_toml())
            self.dirs.append(d)

    def start(self, k: int, **extra_env: str) -> None:
        env = dict(os.environ, FEDNODE_SINGLE_THREAD="1", JAX_PLATFORMS="cpu", **extra_env)
        log = open(self.dirs[k] / "node.log", "ab")
        self.procs[k] = subprocess.Popen([sys.executable, "-m", "fednode", "start", "--config",
                                          str(self.dirs[k] / "config.toml")], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()

    def status(self, k: int) -> dict:
        try:
            return json.loads((self.dirs[k] / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, predicate, timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return True
            time.sleep(0.2)
        return False

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def log(self, k: int) -> str:
        return (self.dirs[k] / "node.log").read_text(errors="replace")[-3000:]


def test_three_nodes_discover_converge_and_survive_a_sigkill(tmp_path):
    fed = Federation(tmp_path, "itest-kill", 3, rounds=60)
    try:
        for k in range(3):
            fed.start(k)
        assert fed.wait(lambda: all(fed.status(k).get("round", 0) >= 10 for k in range(3)), 120), fed.log(0)
        # discovery by scouting alone: no connect endpoints anywhere, yet every node averaged with both others
        for k in range(3):
            st = fed.status(k)
            assert st["rounds_averaged"] >= 5 and len(st["neighbours"]) == 2, st
        victim = fed.procs[2]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.time()
        assert fed.wait(lambda: all(fed.procs[k].poll() is not None for k in (0, 1)), 180), fed.log(0)
        for k in (0, 1):
            assert fed.procs[k].returncode == 0, fed.log(k)
            ckpt = load_checkpoint(fed.dirs[k] / "checkpoint.fnck")
            assert ckpt.round == 60
            st = fed.status(k)
            assert st["accuracy"] >= 0.9
            # the survivors went on averaging with each other after the kill
            assert st["neighbours"] == [Identity.load(fed.dirs[1 - k] / "identity.pem").short_id]
        assert time.time() - killed_at < 120
        m0 = load_checkpoint(fed.dirs[0] / "checkpoint.fnck").model
        m1 = load_checkpoint(fed.dirs[1] / "checkpoint.fnck").model
        assert max(float(np.abs(m0[k] - m1[k]).max()) for k in m0) < 0.05  # converged together
    finally:
        fed.stop_all()


def test_a_key_not_on_the_allow_list_gets_zero_messages_accepted(tmp_path):
    fed = Federation(tmp_path, "itest-intruder", 2, rounds=25, intruders=1)
    try:
        for k in range(3):
            fed.start(k)
        assert fed.wait(lambda: all(fed.procs[k].poll() is not None for k in (0, 1)), 180), fed.log(0)
        intruder_short = Identity.load(fed.dirs[2] / "identity.pem").short_id
        for k in (0, 1):
            st = fed.status(k)
            assert st["rounds_completed"] == 25 and intruder_short not in st["neighbours"]
            hist = json.loads((fed.dirs[k] / "status.json").read_text())["history"]
            assert all(h["neighbours"] <= 1 for h in hist)  # only ever the one admitted peer
        assert fed.wait(lambda: fed.status(2).get("rounds_completed", 0) >= 3, 60)
        intruder = fed.status(2)
        assert intruder["rounds_averaged"] == 0  # nobody ever accepted anything from it
        rejected = sum(fed.status(k).get("rejects", {}).get("unknown_sender", 0) for k in (0, 1))
        assert rejected > 0, "the intruder's messages were not even seen"
    finally:
        fed.stop_all()


def test_two_federations_on_one_machine_never_exchange_messages():
    """Same loopback scouting, same admitted keys: only the federation id differs."""
    ids = {name: os.urandom(32) for name in ("a1", "a2", "b1")}
    inbox = {name: queue.Queue() for name in ids}
    joined = {name: set() for name in ids}
    fed_of = {"a1": "fed-A", "a2": "fed-A", "b1": "fed-B"}
    transports = {}
    try:
        for name, pid in ids.items():
            t = ZenohTransport(ZenohSettings.loopback(fed_of[name], pid),
                               on_message=inbox[name].put, on_peer_joined=joined[name].add,
                               on_peer_left=lambda p: None)
            t.start()
            transports[name] = t
        deadline = time.time() + 10
        while time.time() < deadline and ids["a2"] not in joined["a1"]:
            time.sleep(0.05)
        assert ids["a2"] in joined["a1"]
        time.sleep(0.5)
        transports["b1"].send(ids["a1"], b"from B to a1")       # B's inbox key for a1: fednode/fed-B/msg/a1
        transports["b1"].broadcast(b"B broadcast")
        transports["a2"].send(ids["a1"], b"from a2")
        got = inbox["a1"].get(timeout=5)
        assert got == b"from a2"
        time.sleep(1.0)
        assert inbox["a1"].empty() and inbox["a2"].empty()
        assert ids["b1"] not in joined["a1"] | joined["a2"] and not joined["b1"]
    finally:
        for t in transports.values():
            t.close()
