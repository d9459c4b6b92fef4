"""`fednode start|status|testnet --transport libp2p`: errors in one line, and whole federations (slow).

The federation tests skip without the optional extra; CI installs it, so they run there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fednode.gossip.transports.binding import libp2p_peer_id
from fednode.gossip.transports.libp2p_settings import libp2p_available
from fednode.security.identity import AllowList, Identity

ROOT = Path(__file__).resolve().parent.parent
needs_libp2p = pytest.mark.skipif(not libp2p_available(), reason="the libp2p extra is not installed")


def fednode(*args: str, block_libp2p: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules.update({m: None for m in ('libp2p', 'trio', 'multiaddr')}); " \
        if block_libp2p else "import sys; "
    code = prelude + "from fednode.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    ident = Identity.generate()
    ident.save(tmp_path / "identity.pem")
    allow = AllowList()
    allow.add(ident.public_key_bytes)
    allow.to_file(tmp_path / "allow_list.txt")
    return tmp_path


def test_start_over_libp2p_without_the_extra_says_how_to_install_it(state):
    r = fednode("start", "--state-dir", str(state), "--transport", "libp2p", "--rounds", "1", block_libp2p=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "fednode: error: the libp2p transport needs its optional extra: pip install -e '.[libp2p]'"]
    r = fednode("testnet", "--transport", "libp2p", "--nodes", "2", block_libp2p=True)
    assert r.returncode == 2 and "pip install -e '.[libp2p]'" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("flags, match", [
    (["--bootstrap", "/ip4/127.0.0.1/tcp/4001"], "bootstrap address '/ip4/127.0.0.1/tcp/4001' is not of the form"),
    (["--libp2p-listen", "tcp/127.0.0.1:4001"], "libp2p_listen address"),
    (["--transport", "quic"], "transport must be 'zenoh' or 'libp2p'"),
])
def test_bad_libp2p_settings_are_one_line_errors(state, flags, match):
    r = fednode("start", "--state-dir", str(state), "--transport", "libp2p", *flags)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, r.stderr


@needs_libp2p
def test_bootstrap_peer_off_the_allow_list_is_refused_before_training(state):
    stranger = libp2p_peer_id(Identity.generate().public_key_bytes)
    r = fednode("start", "--state-dir", str(state), "--transport", "libp2p",
                "--bootstrap", f"/ip4/127.0.0.1/tcp/4001/p2p/{stranger}")
    assert r.returncode == 2 and "not an Ed25519 key on the allow-list" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _node0_address(workdir: Path) -> str:
    cfg = tomllib.loads((workdir / "node0" / "config.toml").read_text())
    ident = Identity.load(workdir / "node0" / "identity.pem")
    return f"{cfg['libp2p_listen'][0]}/p2p/{libp2p_peer_id(ident.public_key_bytes)}"


@pytest.mark.slow
@needs_libp2p
def test_three_node_federation_over_libp2p_and_status(tmp_path):
    """A whole federation on libp2p: real processes, bootstrap through node 0 and 1, status over libp2p."""
    work, report = tmp_path / "net", tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "fednode", "testnet", "--quiet", "--transport", "libp2p",
                             "--nodes", "3", "--rounds", "80", "--federation", "lp-test", "--workdir", str(work),
                             "--keep", "--report", str(report)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        deadline = time.monotonic() + 240
        rows = []
        while time.monotonic() < deadline and proc.poll() is None:
            statuses = [work / f"node{i}" / "status.json" for i in range(3)]
            if all(p.exists() and json.loads(p.read_text()).get("round", 0) >= 2 for p in statuses):
                r = fednode("status", "--transport", "libp2p", "--bootstrap", _node0_address(work),
                            "--federation", "lp-test", "--allow-list", str(work / "allow_list.txt"), "--json")
                assert r.returncode == 0, r.stderr
                rows = json.loads(r.stdout)
                break
            time.sleep(0.5)
        assert len(rows) == 3 and all("rejected" not in x and x["round"] >= 1 for x in rows), rows
        proc.wait(timeout=max(10.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the launcher's PID only: it stops every node it started
            proc.wait(timeout=60)
    data = json.loads(report.read_text())
    assert data["ok"], data["errors"]
    assert all(n["rounds_completed"] == 80 and n["test_accuracy"] >= 0.9 for n in data["nodes"])
    assert all(n["bytes_sent"] > 0 and not n["rounds_went_backwards"] for n in data["nodes"])
