"""The `fednode` command line: keygen, one-line errors for bad input, status of a live federation."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from fednode.security.identity import AllowList, Identity


def fednode(*args, timeout=120, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "fednode", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def _node_dir(tmp_path, name="n"):
    d = tmp_path / name
    out = fednode("keygen", "--state-dir", str(d), "--allow-list", str(d / "allow_list.txt"))
    assert out.returncode == 0, out.stderr
    return d, json.loads(out.stdout)


def test_keygen_writes_a_private_key_and_the_allow_list(tmp_path):
    d, info = _node_dir(tmp_path)
    assert stat.S_IMODE(os.stat(d / "identity.pem").st_mode) == 0o600
    assert Identity.load(d / "identity.pem").peer_id.hex() == info["peer_id"]
    assert bytes.fromhex(info["peer_id"]) in AllowList.from_file(d / "allow_list.txt")
    again = fednode("keygen", "--state-dir", str(d))
    assert again.returncode == 2 and "already exists" in again.stderr


def _one_line_error(result, needle):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fednode: error:") and needle in lines[0], result.stderr


def test_bad_input_gets_a_one_line_error(tmp_path):
    d, _ = _node_dir(tmp_path)
    base = ["start", "--state-dir", str(d), "--interface", "lo", "--listen", "tcp/127.0.0.1:0", "--rounds", "1"]
    _one_line_error(fednode(*base, "--task", "cifar"), "unknown task 'cifar'")
    _one_line_error(fednode(*base, "--task", "fashion-mnist", "--data-dir", str(tmp_path / "nope")),
                    "does not exist")
    _one_line_error(fednode(*base, "--federation", "bad/id"), "federation id")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _one_line_error(fednode("start", "--state-dir", str(d), "--interface", "lo", "--listen",
                                f"tcp/127.0.0.1:{port}", "--rounds", "1"), "cannot listen")
    (d / "identity.pem").write_text("garbage")
    os.chmod(d / "identity.pem", 0o600)
    _one_line_error(fednode(*base), "identity")
    _one_line_error(fednode("start", "--state-dir", str(tmp_path / "empty")), "fednode keygen")


@pytest.mark.zenoh
def test_status_lists_live_peers(tmp_path):
    d, info = _node_dir(tmp_path)
    env = dict(os.environ, JAX_PLATFORMS="cpu", FEDNODE_SINGLE_THREAD="1")
    proc = subprocess.Popen([sys.executable, "-m", "fednode", "start", "--state-dir", str(d), "--federation",
                             "status-test", "--interface", "lo", "--listen", "tcp/127.0.0.1:0", "--forever",
                             "--t-hello", "1", "--t-agg", "1", "--t-commit", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not (d / "status.json").exists():
            time.sleep(0.2)
        assert (d / "status.json").exists()
        out = fednode("status", "--federation", "status-test", "--allow-list", str(d / "allow_list.txt"),
                      "--interface", "lo", "--json", "--timeout", "3")
        rows = json.loads(out.stdout)
        assert len(rows) == 1 and rows[0]["peer"] == info["peer_id"] and rows[0]["round"] >= 1
        # a status signed by a key that is not admitted is not shown as valid
        other = tmp_path / "other.txt"
        AllowList().to_file(other)
        out = fednode("status", "--federation", "status-test", "--allow-list", str(other), "--interface", "lo",
                      "--json", "--timeout", "3")
        assert json.loads(out.stdout) == [{"peer": info["peer_id"], "rejected": "unknown_sender"}]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
