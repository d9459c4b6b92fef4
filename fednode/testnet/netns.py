"""Network namespaces of one ``fednode testnet --netns`` run: creation, cleanup, leftovers.

Topology (one run, id ``RID`` = 6 hex digits)::

    fednode-RID-hub    no addresses, no forwarding: one Linux bridge ``b<s>`` per site
                       (and ``bb``, the backbone, when there are several sites)
    fednode-RID-n<i>   node i: ``eth0`` (veth, other end ``v<i>`` on its site's bridge),
                       198.18.<site>.<10+k>/24
    fednode-RID-r<s>   site s's Zenoh router: ``eth0`` on the site bridge (198.18.<s>.1/24) and
                       ``eth1`` on the backbone (198.19.0.<1+s>/24); no IP forwarding, so a site
                       reaches another one only through the routers' Zenoh sessions

Why a hub namespace and not bridges in the root namespace: nothing of the run then exists in the
machine's own namespace (no interface a host firewall, NetworkManager or another helper could see
or route), every interface is created directly inside a namespace of the run (``ip link add ...
netns``), and deleting the run's namespaces deletes every veth and bridge with them. Interface
names are therefore only unique per namespace and need no run prefix (they fit 15 characters
easily); the globally visible names, the namespaces, all carry ``fednode-RID-``.

Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmark networks): they exist only
inside these namespaces, and no namespace has a default route.

Leftovers. Before creating anything the run writes ``/run/fednode-testnet/RID.json`` with its
launcher's PID and that process's start time (so a reused PID is not mistaken for the launcher).
:func:`clean_leftovers` (called by every ``--netns`` run before it starts) removes the namespaces
of runs whose launcher is dead, after killing the processes still inside them (nodes of a
SIGKILLed launcher), and never touches a namespace whose name does not match
``fednode-<6 hex>-(hub|n<i>|r<s>)`` or whose run's launcher is alive.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NetnsError", "Topology", "NodeNet", "RouterNet", "ns_name", "parse_ns_name", "pid_alive",
           "process_start_ticks", "stale_runs", "clean_leftovers", "require_root", "STATE_DIR"]

STATE_DIR = Path("/run/fednode-testnet")
_NS_RE = re.compile(r"fednode-(?P<rid>[0-9a-f]{6})-(?P<role>hub|n\d{1,4}|r\d{1,2})")
SUBNET = "198.18.0.0/15"


class NetnsError(Exception):
    """Namespaces cannot be set up (not root, ``ip`` missing or failing): one line for the user."""


def ns_name(rid: str, role: str) -> str:
    return f"fednode-{rid}-{role}"


def parse_ns_name(name: str) -> tuple[str, str] | None:
    """(run id, role) of a namespace of a fednode run, None for any other name."""
    m = _NS_RE.fullmatch(name)
    return (m["rid"], m["role"]) if m else None


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/PID/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    """Is this exact process (same PID and start time) still running (zombies count as dead)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def stale_runs(namespaces: list[str], state_dir: Path = STATE_DIR) -> dict[str, list[str]]:
    """Run id -> its namespaces, for every run among ``namespaces`` whose launcher is dead.

    A run is live while its state file names a running launcher; a run without a state file is
    stale (the file is written before the first namespace is created and removed after the last
    one is gone). Names that are not fednode run names are ignored.
    """
    runs: dict[str, list[str]] = {}
    for name in namespaces:
        parsed = parse_ns_name(name)
        if parsed is not None:
            runs.setdefault(parsed[0], []).append(name)
    out = {}
    for rid, names in runs.items():
        try:
            state = json.loads((state_dir / f"{rid}.json").read_text())
            live = pid_alive(int(state["pid"]), state.get("start_ticks"))
        except (OSError, ValueError, KeyError, TypeError):
            live = False
        if not live:
            out[rid] = sorted(names)
    return out


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NetnsError("the `ip` command (iproute2) is not installed") from None
    if check and res.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def list_namespaces() -> list[str]:
    res = _ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _kill_pids_in(ns: str) -> None:
    """End the processes still inside one of a fednode run's namespaces (by PID; TERM, then KILL)."""
    pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + wait
        while pids and time.time() < end:
            pids = [p for p in pids if pid_alive(p, None)]
            time.sleep(0.05)
        if not pids:
            return


def delete_namespaces(names: list[str]) -> list[str]:
    """Kill what runs inside, then delete; returns the names that could not be deleted."""
    failed = []
    for ns in names:
        if parse_ns_name(ns) is None:  # never anything but a fednode run's namespace
            continue
        _kill_pids_in(ns)
        if _ip("netns", "del", ns, check=False).returncode != 0 and ns in list_namespaces():
            failed.append(ns)
    return failed


def clean_leftovers(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the namespaces of fednode runs whose launcher is dead; returns the names removed."""
    removed = []
    for rid, names in stale_runs(list_namespaces(), state_dir).items():
        failed = delete_namespaces(names)
        removed += [n for n in names if n not in failed]
        if not failed:
            (state_dir / f"{rid}.json").unlink(missing_ok=True)
    return removed


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError("--netns needs root (it creates network namespaces); run it as root or drop --netns")


@dataclass
class NodeNet:
    index: int
    site: int
    ns: str
    address: str
    dev: str = "eth0"


@dataclass
class RouterNet:
    site: int
    ns: str
    site_address: str
    backbone_address: str | None


@dataclass
class Topology:
    """The namespaces of one run. ``create()`` builds them; ``destroy()`` removes them (idempotent)."""

    nodes: int
    sites: int = 1
    rid: str = field(default_factory=lambda: secrets.token_hex(3))
    state_dir: Path = STATE_DIR
    node_nets: list[NodeNet] = field(default_factory=list)
    routers: list[RouterNet] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    tcp_retries2: int = 3
    """Per namespace: TCP gives up on an unacknowledged connection after ~3 s instead of Linux's ~15 min.

    Measured: when a partition silently drops a peer's packets, a Zenoh 1.10 link with unacknowledged
    data is not torn down at its lease; its close waits on TCP, and meanwhile the node stops
    receiving from the peers it can still reach (messages pile up and arrive at the heal, 10-30 s
    late). With tcp_retries2=3 the dead connection ends ~3 s after its first retransmission and
    each side of the partition goes on with its own group (docs/protocol.md, "Round bound under
    delay and partitions"). Real devices need the same sysctl."""

    def __post_init__(self) -> None:
        from fednode.testnet.linkspec import site_of
        per_site: dict[int, int] = {}
        for i in range(self.nodes):
            s = site_of(i, self.nodes, self.sites)
            k = per_site.get(s, 0)
            per_site[s] = k + 1
            if k >= 240:
                raise NetnsError("at most 240 nodes per site")
            self.node_nets.append(NodeNet(i, s, ns_name(self.rid, f"n{i}"), f"198.18.{s}.{10 + k}"))
        if self.sites > 1:
            self.routers = [RouterNet(s, ns_name(self.rid, f"r{s}"), f"198.18.{s}.1", f"198.19.0.{1 + s}")
                            for s in range(self.sites)]

    @property
    def hub(self) -> str:
        return ns_name(self.rid, "hub")

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.rid}.json"

    def all_namespaces(self) -> list[str]:
        return [self.hub] + [n.ns for n in self.node_nets] + [r.ns for r in self.routers]

    def _add_ns(self, ns: str, tcp: bool = True) -> None:
        # recorded first: a Ctrl-C that interrupts `ip netns add` (it gets the SIGINT too) after the
        # namespace exists must not leave it out of destroy() (measured: 1 in 40 interrupts during setup)
        self.created.append(ns)
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        if tcp:  # see TCP_RETRIES2
            res = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                                  f"net.ipv4.tcp_retries2={self.tcp_retries2}"], capture_output=True, text=True)
            if res.returncode != 0:
                raise NetnsError(f"cannot set net.ipv4.tcp_retries2 in {ns}: {res.stderr.strip()}")

    def _veth(self, hub_end: str, bridge: str, ns: str, dev: str, addr: str) -> None:
        _ip("-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "name", dev, "netns", ns)
        _ip("-n", self.hub, "link", "set", hub_end, "master", bridge, "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")

    def create(self) -> None:
        require_root()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.state_file.write_text(json.dumps({"pid": pid, "start_ticks": process_start_ticks(pid),
                                               "namespaces": self.all_namespaces(), "created_at": time.time()}))
        try:
            self._add_ns(self.hub, tcp=False)
            bridges = [f"b{s}" for s in range(self.sites)] + (["bb"] if self.sites > 1 else [])
            for br in bridges:
                _ip("-n", self.hub, "link", "add", br, "type", "bridge")
                _ip("-n", self.hub, "link", "set", br, "up")
            for n in self.node_nets:
                self._add_ns(n.ns)
                self._veth(f"v{n.index}", f"b{n.site}", n.ns, n.dev, n.address)
            for r in self.routers:
                self._add_ns(r.ns)
                self._veth(f"r{r.site}", f"b{r.site}", r.ns, "eth0", r.site_address)
                self._veth(f"w{r.site}", "bb", r.ns, "eth1", r.backbone_address)
        except BaseException:
            self.destroy()
            raise

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def destroy(self) -> list[str]:
        """Delete every namespace this run created (and what runs inside); returns names left behind."""
        existing = set(list_namespaces()) if self.created else set()
        failed = delete_namespaces([ns for ns in reversed(self.created) if ns in existing])
        self.created = failed
        if not failed:
            self.state_file.unlink(missing_ok=True)
        return failed
