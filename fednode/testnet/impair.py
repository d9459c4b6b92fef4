"""Userspace link impairment: a per-namespace forwarding shim on a TUN device.

This kernel has no ``netem`` qdisc, so delay, jitter, loss and partitions are applied here, on
each node's egress (like netem on both ends: the round trip between two impaired nodes carries
two delays). Rate limiting stays in the kernel (``tbf`` on the node's veth).

How packets flow inside a node's namespace::

    node socket --(rule: not fwmark M -> table T: 198.18.0.0/15 dev imp0)--> imp0 (TUN)
    shim: read packet, drop (loss, partition) or hold it until now + delay + jitter
    shim: raw IPv4 socket with SO_MARK M --(rule: fwmark M -> main table)--> eth0 --> bridge

Only traffic to the federation's subnet goes through the shim; loopback, multicast scouting
(224.0.0.0/4) and the node's own address use the kernel's routes as before. Table T also holds an
``unreachable`` route for the subnet at a higher metric, so if the shim dies its TUN vanishes and
the node's packets fail loudly instead of silently bypassing the impairment.

Jitter is uniform in [-jitter, +jitter] and never reorders: a packet is released no earlier than
the one before it (netem reorders with jitter, which TCP punishes with spurious retransmits; real
paths with jitter mostly keep order). A partition drops every packet whose destination lies in
another group while it is on: SIGUSR1 turns it on, SIGUSR2 off
(the launcher keeps the schedule). The shim exits on SIGTERM/SIGINT, when its
launcher (``parent_pid``) dies, and writes its counters to ``stats_file`` every second and at exit.

Run: ``ip netns exec NS python -m fednode.testnet.impair CONFIG.json`` (root; the launcher does it).
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

__all__ = ["ShimConfig", "Impairment", "main"]

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_SO_MARK = 36


@dataclass
class ShimConfig:
    dev: str
    address: str
    subnet: str = "198.18.0.0/15"
    tun: str = "imp0"
    mark: int = 0x4642
    table: int = 4642
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    seed: int = 0
    partition_drop: list[str] = field(default_factory=list)  # destinations cut off while partitioned
    parent_pid: int | None = None
    stats_file: str | None = None
    ready_file: str | None = None

    @classmethod
    def load(cls, path: str) -> "ShimConfig":
        with open(path) as f:
            return cls(**json.load(f))

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f)


class Impairment:
    """The decision part (pure, testable without a TUN): when is a packet released, or is it dropped."""

    def __init__(self, cfg: ShimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.last_release = 0.0
        self.cut = {socket.inet_aton(a) for a in cfg.partition_drop}
        self.partition_on = False  # SIGUSR1 cuts, SIGUSR2 heals (the launcher keeps the schedule)
        self.stats = {"packets": 0, "forwarded": 0, "dropped_loss": 0, "dropped_partition": 0,
                      "send_errors": 0, "max_queue": 0, "not_ipv4": 0}

    def partitioned(self, dst: bytes, now: float) -> bool:  # noqa: ARG002
        return self.partition_on and dst in self.cut

    def decide(self, packet: bytes, now: float) -> float | None:
        """Release time of the packet, or None to drop it."""
        self.stats["packets"] += 1
        if len(packet) < 20 or packet[0] >> 4 != 4:
            self.stats["not_ipv4"] += 1  # the kernel's IPv6 chatter on the TUN: not ours, never forwarded
            return None
        if self.partitioned(packet[16:20], now):
            self.stats["dropped_partition"] += 1
            return None
        if self.cfg.loss and self.rng.random() < self.cfg.loss:
            self.stats["dropped_loss"] += 1
            return None
        t = now + self.cfg.delay_s
        if self.cfg.jitter_s:
            t += self.rng.uniform(-self.cfg.jitter_s, self.cfg.jitter_s)
        t = max(t, self.last_release)
        self.last_release = t
        return t


def _sh(*args: str) -> None:
    res = subprocess.run(list(args), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {res.stderr.strip()}")


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _route_through(cfg: ShimConfig) -> None:
    mtu = open(f"/sys/class/net/{cfg.dev}/mtu").read().strip()
    _sh("ip", "link", "set", cfg.tun, "mtu", mtu, "up")
    _sh("ip", "route", "replace", "unreachable", cfg.subnet, "table", str(cfg.table), "metric", "4000")
    _sh("ip", "route", "replace", cfg.subnet, "dev", cfg.tun, "src", cfg.address, "table", str(cfg.table))
    _sh("ip", "rule", "add", "pref", "100", "not", "fwmark", hex(cfg.mark), "lookup", str(cfg.table))


def _write_json(path: str | None, data: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)


def run(cfg: ShimConfig) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    fd = _open_tun(cfg.tun)
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out.setsockopt(socket.SOL_SOCKET, _SO_MARK, cfg.mark)
    _route_through(cfg)
    imp = Impairment(cfg)

    def cut(on: bool) -> None:
        imp.partition_on = on
        print(f"{time.time():.3f} partition {'on' if on else 'off'}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, lambda *_: cut(True))
    signal.signal(signal.SIGUSR2, lambda *_: cut(False))
    queue: list[tuple[float, int, bytes]] = []
    seq = 0
    _write_json(cfg.ready_file, {"pid": os.getpid(), "tun": cfg.tun})
    next_check = 0.0
    try:
        while not stop:
            now = time.time()
            while queue and queue[0][0] <= now:
                _, _, pkt = heapq.heappop(queue)
                try:
                    out.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))
                    imp.stats["forwarded"] += 1
                except OSError as exc:
                    imp.stats["send_errors"] += 1
                    if imp.stats["send_errors"] <= 5:
                        print(f"send of {len(pkt)} bytes to {socket.inet_ntoa(pkt[16:20])} failed: {exc}",
                              file=sys.stderr, flush=True)
            if now >= next_check:
                next_check = now + 1.0
                if cfg.parent_pid and not _alive(cfg.parent_pid):
                    break
                _write_json(cfg.stats_file, imp.stats)
            timeout = min(next_check - now, queue[0][0] - now if queue else 1.0)
            try:
                ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
            except InterruptedError:
                continue
            if not ready:
                continue
            for _ in range(256):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                now = time.time()
                t = imp.decide(pkt, now)
                if t is not None:
                    seq += 1
                    heapq.heappush(queue, (t, seq, pkt))
            imp.stats["max_queue"] = max(imp.stats["max_queue"], len(queue))
    finally:
        _write_json(cfg.stats_file, imp.stats)
        os.close(fd)  # the TUN (and its route) disappear with the descriptor
        out.close()
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fednode.testnet.impair CONFIG.json", file=sys.stderr)
        return 2
    try:
        return run(ShimConfig.load(argv[0]))
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        print(f"fednode: error: impairment shim: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
