"""Measure a link between two namespaces: UDP echo round-trip times and loss (namespaces have no ping).

``python -m fednode.testnet.probe serve ADDR PORT SECONDS`` echoes datagrams for SECONDS;
``python -m fednode.testnet.probe ping ADDR PORT COUNT INTERVAL`` sends COUNT numbered datagrams
INTERVAL seconds apart, waits for stragglers, and prints one JSON line: sent, received, loss,
rtt_ms (min, median, p90, max, mean). Run each side with ``ip netns exec`` (the launcher does it);
the datagrams take the same path as the nodes' traffic, through the impairment shim of both ends.
"""

from __future__ import annotations

import json
import socket
import statistics
import struct
import sys
import time

__all__ = ["serve", "ping", "summarize"]


def serve(addr: str, port: int, seconds: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        end = time.time() + seconds
        while time.time() < end:
            s.settimeout(max(0.01, end - time.time()))
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                break
            s.sendto(data, peer)


def summarize(sent: int, rtts: list[float]) -> dict:
    """Loss and RTT statistics (milliseconds) of one probe."""
    out: dict = {"sent": sent, "received": len(rtts), "loss": round(1 - len(rtts) / sent, 4) if sent else None}
    if rtts:
        ms = sorted(r * 1e3 for r in rtts)
        out["rtt_ms"] = {"min": round(ms[0], 2), "median": round(statistics.median(ms), 2),
                         "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 2), "max": round(ms[-1], 2),
                         "mean": round(statistics.fmean(ms), 2)}
    return out


def ping(addr: str, port: int, count: int, interval: float, wait: float = 2.0) -> dict:
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        start = time.time()
        i = 0
        end = start + count * interval + wait
        while time.time() < end and len(rtts) < count:
            now = time.time()
            if i < count and now >= start + i * interval:
                sent_at[i] = now
                try:
                    s.sendto(struct.pack("!I", i) + b"\0" * 60, (addr, port))
                except OSError:
                    pass
                i += 1
            try:
                data, _ = s.recvfrom(2048)
                k = struct.unpack("!I", data[:4])[0]
                if k in sent_at:
                    rtts.append(time.time() - sent_at.pop(k))
            except (BlockingIOError, InterruptedError):
                time.sleep(0.0005)
    return summarize(count, rtts)


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "serve":
        serve(argv[1], int(argv[2]), float(argv[3]))
        return 0
    if len(argv) == 5 and argv[0] == "ping":
        print(json.dumps(ping(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
