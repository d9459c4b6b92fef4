"""The network side of ``fednode testnet --netns``: namespaces, impairment shims, probes, routers.

The launcher owns the node processes; this object owns everything else a ``--netns`` run puts
on the machine and removes all of it in :meth:`NetRun.close` (every exit path of the launcher
goes through it; a SIGKILLed launcher's leftovers are removed by the next run, see
:mod:`fednode.testnet.netns`). Report fields it adds: ``network`` with ``run_id``, ``sites``,
``links`` (the spec per node), ``links_measured`` (UDP echo RTT/loss between namespaces, before
training), ``partition`` (spec and the loss measured inside and across groups while it was in
force), ``shims`` (per-node packet counters) and ``routers`` (kill/restart events, link log). The partition and router-kill clocks (``at=``)
count from the federation's first completed round, so start-up time under load does not move them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fednode.testnet.impair import ShimConfig
from fednode.testnet.linkspec import SpecError, check_sites, parse_kill_router, parse_links, parse_partition
from fednode.testnet.netns import SUBNET, NetnsError, Topology, clean_leftovers, require_root

__all__ = ["NetRun", "validate_network_options"]

NODE_PORT = 7447
ROUTER_PORT = 7447
PROBE_PORT = 9009


def validate_network_options(opts) -> None:
    """Check every network flag of ``opts`` (SpecError / NetnsError, one line) before anything exists."""
    check_sites(opts.sites, opts.nodes, opts.netns)
    if (opts.link or opts.partition or opts.kill_router) and not opts.netns:
        raise SpecError("--link, --partition and --kill-router need --netns")
    parse_links(opts.link, opts.nodes, opts.sites)
    if opts.partition:
        if opts.sites > 1:
            raise SpecError("--partition with --sites is not supported (cut a site off with --kill-router)")
        parse_partition(opts.partition, opts.nodes)
    if opts.kill_router:
        parse_kill_router(opts.kill_router, opts.sites)
    if opts.netns:
        require_root()


class NetRun:
    def __init__(self, opts, workdir: Path, say=print) -> None:
        validate_network_options(opts)
        self.opts = opts
        self.workdir = workdir
        self.say = say
        self.links = parse_links(opts.link, opts.nodes, opts.sites)
        self.partition = parse_partition(opts.partition, opts.nodes) if opts.partition else None
        self.kill = parse_kill_router(opts.kill_router, opts.sites) if opts.kill_router else None
        self.topo = Topology(opts.nodes, opts.sites)
        self.shims: dict[int, subprocess.Popen] = {}
        self.routers: dict[int, subprocess.Popen] = {}
        self.router_events: list[dict] = []
        self.errors: list[str] = []
        self.links_measured: list[dict] = []
        self.partition_measured: list[dict] = []
        self.t0 = 0.0
        self.clock0: float | None = None  # the federation's first completed round: at= counts from here
        self.partition_events: list[dict] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._stop = threading.Event()

    # ------------------------------------------------------------------ per node

    def node_config(self, index: int, cfg):
        """The node's NodeConfig with its namespace's address, interface and (sites) router."""
        n = self.topo.node_nets[index]
        connect = [f"tcp/{self.topo.routers[n.site].site_address}:{ROUTER_PORT}"] if self.topo.routers else []
        return dataclasses.replace(cfg, listen=[f"tcp/{n.address}:{NODE_PORT}"], interface=n.dev,
                                   connect=connect).validate()

    def command(self, index: int, argv: list[str]) -> list[str]:
        return self.topo.exec_prefix(self.topo.node_nets[index].ns) + argv

    # ------------------------------------------------------------------ setup

    def start(self, t0: float) -> None:
        """Create the namespaces, then shims, probes and routers. ``t0``: the run's start (partition clock)."""
        self.t0 = t0
        removed = clean_leftovers()
        if removed:
            self.say(f"removed {len(removed)} namespaces left by killed fednode runs: {', '.join(removed)}")
        self.topo.create()
        self.say(f"network namespaces fednode-{self.topo.rid}-*: {self.opts.nodes} nodes in {self.opts.sites} "
                 f"site(s), addresses in {SUBNET}")
        for n in self.topo.node_nets:
            link = self.links[n.index]
            if link.rate_bps:
                burst = max(16000, int(link.rate_bps / 8 / 250))  # 4 ms of traffic, at least 16 kB
                self._tc(n.ns, "qdisc", "add", "dev", n.dev, "root", "tbf", "rate", f"{int(link.rate_bps)}bit",
                         "burst", str(burst), "latency", "200ms")
            if link.impaired or self.partition is not None:
                self._start_shim(n)
        self._wait_shims()
        self._start_routers()
        self.links_measured = self._probe_pairs(self._probe_plan(), count=200, interval=0.01)
        for m in self.links_measured:
            self.say(f"link {m['from']}->{m['to']}: rtt median {m.get('rtt_ms', {}).get('median')} ms, "
                     f"loss {m['loss']:.1%} ({m['sent']} probes)")

    def _tc(self, ns: str, *args: str) -> None:
        res = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise NetnsError(f"`tc {' '.join(args)}` failed in {ns}: {res.stderr.strip()}")

    def _start_shim(self, n) -> None:
        link = self.links[n.index]
        d = self.workdir / f"node{n.index}"
        d.mkdir(parents=True, exist_ok=True)
        cfg = ShimConfig(dev=n.dev, address=n.address, subnet=SUBNET, delay_s=link.delay_s, jitter_s=link.jitter_s,
                         loss=link.loss, seed=self.opts.seed * 1000 + n.index, parent_pid=os.getpid(),
                         stats_file=str(d / "shim-stats.json"), ready_file=str(d / "shim-ready.json"))
        if self.partition is not None:
            mine = self.partition.group_of(n.index)
            cfg.partition_drop = [m.address for m in self.topo.node_nets if self.partition.group_of(m.index) != mine]
        Path(cfg.ready_file).unlink(missing_ok=True)
        cfg.dump(str(d / "shim.json"))
        with open(d / "shim.log", "ab") as log:
            self.shims[n.index] = subprocess.Popen(
                self.command(n.index, [sys.executable, "-m", "fednode.testnet.impair", str(d / "shim.json")]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_shims(self) -> None:
        end = time.time() + 20
        pending = dict(self.shims)
        while pending and time.time() < end:
            for i, p in list(pending.items()):
                if (self.workdir / f"node{i}" / "shim-ready.json").exists():
                    pending.pop(i)
                elif p.poll() is not None:
                    tail = (self.workdir / f"node{i}" / "shim.log").read_text(errors="replace").strip()
                    raise NetnsError(f"impairment shim of node{i} failed: {tail.splitlines()[-1] if tail else p.returncode}")
            time.sleep(0.05)
        if pending:
            raise NetnsError(f"impairment shims of nodes {sorted(pending)} did not start within 20 s")

    def _router_cmd(self, r) -> list[str]:
        cmd = self.topo.exec_prefix(r.ns) + [sys.executable, "-m", "fednode", "router",
                                             "--listen", f"tcp/{r.site_address}:{ROUTER_PORT}",
                                             "--listen", f"tcp/{r.backbone_address}:{ROUTER_PORT}",
                                             "--lease-ms", "2000"]
        for o in self.topo.routers:
            if o.site != r.site:
                cmd += ["--connect", f"tcp/{o.backbone_address}:{ROUTER_PORT}"]
        return cmd

    def _launch_router(self, r) -> None:
        with open(self.workdir / f"router{r.site}.log", "ab") as log:
            self.routers[r.site] = subprocess.Popen(self._router_cmd(r), stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _start_routers(self) -> None:
        for r in self.topo.routers:
            self._launch_router(r)
        end = time.time() + 20
        for r in self.topo.routers:
            log = self.workdir / f"router{r.site}.log"
            while time.time() < end and "listening on" not in (log.read_text(errors="replace") if log.exists() else ""):
                if self.routers[r.site].poll() is not None:
                    raise NetnsError(f"router of site {r.site} failed: {log.read_text(errors='replace').strip()[-300:]}")
                time.sleep(0.1)

    # ------------------------------------------------------------------ probes

    def _probe_plan(self) -> list[tuple[int, int]]:
        """A ring inside each site (addresses of other sites are unreachable by design)."""
        pairs = []
        for s in range(self.opts.sites):
            members = [n.index for n in self.topo.node_nets if n.site == s]
            if len(members) > 1:
                pairs += [(members[k], members[(k + 1) % len(members)]) for k in range(len(members))]
        return pairs if len(pairs) != 2 else pairs[:1]

    def _probe_pairs(self, pairs: list[tuple[int, int]], count: int, interval: float) -> list[dict]:
        if not pairs:
            return []
        nets = self.topo.node_nets
        dur = count * interval + 6
        servers = [subprocess.Popen(self.command(b, [sys.executable, "-m", "fednode.testnet.probe", "serve",
                                                     nets[b].address, str(PROBE_PORT), str(dur)]),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for b in sorted({b for _, b in pairs})]
        out = []
        try:
            time.sleep(0.5)
            clients = [(a, b, subprocess.Popen(self.command(a, [sys.executable, "-m", "fednode.testnet.probe", "ping",
                                                                nets[b].address, str(PROBE_PORT), str(count),
                                                                str(interval)]),
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
                       for a, b in pairs]
            for a, b, c in clients:
                try:
                    text, _ = c.communicate(timeout=dur + 10)
                    res = json.loads(text.strip().splitlines()[-1])
                except (subprocess.TimeoutExpired, ValueError, IndexError):
                    c.kill()
                    c.wait()
                    res = {"sent": count, "received": 0, "loss": None, "error": "probe failed"}
                out.append({"from": a, "to": b, **res})
        finally:
            for s in servers:
                s.terminate()
                s.wait(timeout=5)
        return out

    def _probe_partition(self, when: float) -> None:
        if self._stop.wait(max(0.0, when - time.time())):
            return  # the run is ending
        p = self.partition
        g0 = sorted(i for i in range(self.opts.nodes) if p.group_of(i) == 0)
        other = sorted(i for i in range(self.opts.nodes) if p.group_of(i) != 0)
        pairs = ([(g0[0], g0[1])] if len(g0) > 1 else []) + [(g0[0], other[0])]
        for m in self._probe_pairs(pairs, count=100, interval=0.01):
            m["across_groups"] = p.group_of(m["from"]) != p.group_of(m["to"])
            m["since_first_round_s"] = round(when - (self.clock0 or when), 1)
            self.partition_measured.append(m)

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------------ running

    def _event(self, log: list[dict], event: str, now: float, **kw) -> None:
        log.append({"event": event, "at_s": round(now - self.t0, 2), "since_first_round_s":
                    round(now - (self.clock0 or now), 2), "time": round(now, 3), **kw})

    def _partition_tick(self, now: float) -> None:
        p, done = self.partition, {e["event"] for e in self.partition_events}
        if "cut" not in done and now >= self.clock0 + p.at_s:
            for proc in self.shims.values():
                proc.send_signal(signal.SIGUSR1)
            self._event(self.partition_events, "cut", now)
            self.say(f"partition: groups {' | '.join(','.join(map(str, sorted(g))) for g in p.groups)} cut off")
            self._spawn(self._probe_partition, now + min(p.for_s / 2, 5.0))
        elif "cut" in done and "healed" not in done and now >= self.clock0 + p.at_s + p.for_s:
            for proc in self.shims.values():
                proc.send_signal(signal.SIGUSR2)
            self._event(self.partition_events, "healed", now)
            self.say("partition healed")

    def tick(self, now: float, trained: bool = True) -> None:
        """Called by the launcher's monitor loop (``trained``: some node finished a round): the partition
        and router-kill schedules, which count from the first completed round, and dead shims/routers."""
        if self.clock0 is None and trained:
            self.clock0 = now
        if self.partition is not None and self.clock0 is not None:
            self._partition_tick(now)
        k = self.kill
        if k is not None and self.clock0 is not None:
            r = self.topo.routers[k.site]
            killed = any(e["event"] == "killed" for e in self.router_events)
            restarted = any(e["event"] == "restarted" for e in self.router_events)
            if not killed and now >= self.clock0 + k.at_s:
                self.routers[k.site].send_signal(signal.SIGKILL)
                self.routers[k.site].wait(timeout=10)
                self._event(self.router_events, "killed", now, site=k.site)
                self.say(f"SIGKILL router of site {k.site}")
            elif killed and not restarted and now >= self.clock0 + k.at_s + k.for_s:
                self._launch_router(r)
                self._event(self.router_events, "restarted", now, site=k.site)
                self.say(f"restarting router of site {k.site}")
        for i, p in self.shims.items():
            if p.poll() is not None and not any(f"shim of node{i}" in e for e in self.errors):
                self.errors.append(f"impairment shim of node{i} exited with code {p.returncode}")
        for s, p in self.routers.items():
            down = k is not None and s == k.site and any(e["event"] == "killed" for e in self.router_events) and \
                not any(e["event"] == "restarted" for e in self.router_events)
            if not down and p.poll() is not None and not any(f"router of site {s}" in e for e in self.errors):
                self.errors.append(f"router of site {s} exited with code {p.returncode}")

    def close(self) -> list[str]:
        """Stop routers and shims (by PID), delete the namespaces; returns names that could not be deleted."""
        if self._closed:
            return []
        self._closed = True
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        if self.partition is not None and any(e["event"] == "cut" for e in self.partition_events) and \
                not any(e["event"] == "healed" for e in self.partition_events):
            self.errors.append("the run ended before the partition healed")
        procs = list(self.routers.values()) + list(self.shims.values())
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        left = self.topo.destroy()
        if left:
            self.errors.append(f"could not delete namespaces {', '.join(left)}")
        return left

    def report(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``network`` report field; ``base`` (the report so far) adds ``cross_site`` with sites."""
        shims = {}
        for i in self.shims:
            try:
                shims[str(i)] = json.loads((self.workdir / f"node{i}" / "shim-stats.json").read_text())
            except (OSError, ValueError):
                shims[str(i)] = None
        router_links = {}
        for r in self.topo.routers:
            try:
                lines = (self.workdir / f"router{r.site}.log").read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            router_links[str(r.site)] = [ln for ln in lines if " link " in ln][-50:]
        p = self.partition
        return {"network": {
            "netns": True, "run_id": self.topo.rid, "sites": self.opts.sites,
            "first_round_at_s": None if self.clock0 is None else round(self.clock0 - self.t0, 2),
            "site_of_node": [n.site for n in self.topo.node_nets],
            "addresses": [n.address for n in self.topo.node_nets],
            "links": [ln.describe() for ln in self.links],
            "links_measured": self.links_measured,
            "partition": None if p is None else {"at_s": p.at_s, "for_s": p.for_s,
                                                 "groups": [sorted(g) for g in p.groups],
                                                 "events": self.partition_events,
                                                 "measured": self.partition_measured},
            "shims": shims, "router_events": self.router_events, "router_links": router_links,
            "cross_site": cross_site_windows(base.get("nodes", []), [n.site for n in self.topo.node_nets])
            if base is not None and self.opts.sites > 1 else None,
        }}


def cross_site_windows(nodes: list[dict], site_of: list[int], window: int = 5) -> dict[str, Any]:
    """Per node, in each run of ``window`` consecutive completed rounds, how many averaged with another site.

    Read from the report's ``per_round`` neighbours (full peer ids). Windows are chunks of the
    node's own completed rounds (a node that resyncs skips rounds; skipped rounds are not counted
    as rounds without averaging). ``spans`` gives each window's first and last end time (s since
    start) so outages can be excluded; ``min_per_window`` is the smallest count over every node
    and complete window (the criterion "at least one cross-site average per node per 5 rounds"
    holds when it is >= 1).
    """
    site = {n["peer_id"]: site_of[n["index"]] for n in nodes}
    per_node, spans = {}, {}
    for n in nodes:
        mine = site_of[n["index"]]
        recs = sorted(n.get("per_round") or [], key=lambda rec: rec["round"])
        flags = [any(site.get(p, mine) != mine for p in rec.get("neighbours") or []) for rec in recs]
        chunks = range(0, len(recs) - window + 1, window)
        per_node[str(n["index"])] = [sum(flags[k:k + window]) for k in chunks]
        spans[str(n["index"])] = [[recs[k]["t_s"], recs[k + window - 1]["t_s"]] for k in chunks]
    counts = [c for v in per_node.values() for c in v]
    return {"window_rounds": window, "per_node": per_node, "spans": spans,
            "min_per_window": min(counts) if counts else None}
