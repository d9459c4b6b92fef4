"""``fednode testnet``: N real ``fednode start`` processes on loopback-only Zenoh.

The launcher creates keys and an allow-list, writes one TOML config per node (multicast
scouting pinned to ``lo``, listening on 127.0.0.1 only), starts the processes, shows live
progress from the nodes' status files, optionally SIGKILLs a random node every
``kill_every`` seconds and restarts it, and writes a JSON report. It ends every process it
started, by PID, on every path (normal end, timeout, Ctrl-C, error).

Report (a stable interface for scripts; more fields may be added, none removed):
    federation (str), ok (bool), wall_time_s (float), rounds (int), task (str),
    consensus_disagreement (float, ||X - JX||_F over the nodes' final models),
    consensus_disagreement_relative (float, divided by ||JX||_F),
    averaged_model_accuracy (float, the nodes' mean model on the common test set),
    round_length_bound_s (float), errors (list[str]),
    nodes: list of {index, peer_id, rounds_completed, test_accuracy, test_loss, bytes_sent,
            bytes_received, restarts, exit_code, max_round_gap_s, rounds_went_backwards,
            resumes: [{killed_at_round, checkpoint_round, resumed_at_round}], timings,
            rss_peak_mb (float | None, peak resident memory of the node's process(es), MiB, VmHWM),
            per_round: [{round, t_s (round end, s since the testnet started), accuracy, loss,
                         outcome ("commit" or why it did not average), neighbours (hex peer ids
                         averaged with), bytes_sent, bytes_received (cumulative, restarts included),
                         round_time_s}]},
    accuracy_min, accuracy_median (over the nodes' final test accuracy),
    rss_peak_mb_max, rss_peak_mb_median (float | None),
    series: column lists, one entry per round (None where no node had data):
        {round, nodes (how many nodes reported that round), accuracy_min, accuracy_median,
         accuracy_mean, loss_mean, consensus_disagreement (||X_r - JX_r||_F over the nodes whose
         trajectory has round r, X_r their models after round r), consensus_disagreement_relative,
         round_time_median_s, bytes_sent_total (sum of the nodes' cumulative bytes sent),
         t_s (median wall time at which the round ended, s since start)}
The per-round models come from each node's ``trajectory.bin`` (``record_trajectory``, on in the testnet).
With --netns: network (see fednode/testnet/netrun.py): {netns, run_id, sites, site_of_node,
    addresses, links, links_measured, partition, shims, router_events, router_links}.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednode.node.checkpoint import CheckpointError, peek_round
from fednode.node.config import NodeConfig
from fednode.security.identity import AllowList, Identity
from fednode.testnet.memory import rss_mb
from fednode.testnet.options import TestnetOptions
from fednode.testnet.progress import Progress
from fednode.testnet.report import build_report, print_summary
from fednode.testnet.signals import node_child_setup, signals_deferred
from fednode.testnet.status_files import read_status

__all__ = ["Testnet", "TestnetOptions", "run_testnet", "run_testnet_with_dashboard"]


@dataclass
class _Node:
    index: int
    state_dir: Path
    config_path: Path
    log_path: Path
    peer_id: bytes
    proc: subprocess.Popen | None = None
    restarts: int = 0
    killed: bool = False
    restart_at: float | None = None
    exit_code: int | None = None
    max_round_seen: int = -1
    went_backwards: bool = False
    resumes: list[dict] = field(default_factory=list)
    pending_resume: dict | None = None
    last_progress_t: float | None = None
    last_round_done: int = -1
    progressed: bool = False
    """This incarnation has completed a round past every earlier one: only then may it be killed again,
    or a node restarting alone near the end (its peers done) is killed during its start-up forever."""
    max_gap: float = 0.0
    status: dict | None = None
    rss_peak_mb: float | None = None


class Testnet:
    __test__ = False

    def __init__(self, opts: TestnetOptions) -> None:
        if opts.nodes < 1:
            raise ValueError("--nodes must be >= 1")
        if opts.rounds < 1:
            raise ValueError("--rounds must be >= 1")
        if opts.netns or opts.link or opts.partition or opts.sites != 1 or opts.kill_router:
            from fednode.testnet.netrun import validate_network_options
            validate_network_options(opts)  # before anything is created
        self.opts = opts
        self.federation = opts.federation or f"testnet-{secrets.token_hex(4)}"
        self._own_workdir = opts.workdir is None
        self.workdir = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="fednode-testnet-"))
        self.nodes: list[_Node] = []
        self.rng = random.Random(opts.seed)
        self.errors: list[str] = []
        self.started_at = 0.0
        self._env = dict(os.environ)
        self._env.update({"FEDNODE_SINGLE_THREAD": "1", "JAX_PLATFORMS": "cpu",
                          "PYTHONUNBUFFERED": "1",
                          "JAX_COMPILATION_CACHE_DIR": str(self.workdir / "jax-cache")})
        self.net = None
        if opts.netns:  # namespaces, impairment, partitions, sites (fednode/testnet/netrun.py)
            from fednode.testnet.netrun import NetRun
            self.net = NetRun(opts, self.workdir, say=self._say)

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        from fednode.testnet.adversary import byzantine_indices, check_options, node_config
        check_options(self.opts)
        self.attackers = byzantine_indices(self.opts.nodes, self.opts.byzantine, self.opts.seed)
        allow = AllowList()
        idents = []
        for i in range(self.opts.nodes):
            d = self.workdir / f"node{i}"
            d.mkdir(parents=True, exist_ok=True)
            ident = Identity.generate()
            ident.save(d / "identity.pem")
            allow.add(ident.public_key_bytes, name=f"node{i}")
            idents.append(ident)
        allow_path = self.workdir / "allow_list.txt"
        # a scouting port of its own: concurrent testnets on this machine never even connect to each other
        scout = self.scout = f"224.0.0.224:{20000 + secrets.randbelow(40000)}"
        allow.to_file(allow_path)
        libp2p = _libp2p_addresses(idents) if self.opts.transport == "libp2p" else None
        for i, ident in enumerate(idents):
            d = self.workdir / f"node{i}"
            cfg = NodeConfig(federation=self.federation, state_dir=d, allow_list=allow_path,
                             listen=["tcp/127.0.0.1:0"], interface="lo", multicast=True, multicast_address=scout,
                             task=self.opts.task,
                             data_dir=Path(self.opts.data_dir) if self.opts.data_dir else None,
                             split=self.opts.split, alpha=self.opts.alpha, node_index=i,
                             node_count=self.opts.nodes, seed=self.opts.seed, rounds=self.opts.rounds,
                             local_epochs=self.opts.local_epochs, t_hello=self.opts.t_hello,
                             t_agg=self.opts.t_agg, t_commit=self.opts.t_commit,
                             min_peers=self.opts.nodes - 1, lease_ms=self.opts.lease_ms,
                             degree=self.opts.degree, aggregator=self.opts.aggregator,
                             max_retries=self.opts.max_retries, record_trajectory=True,
                             wait_peers_s=self.opts.wait_peers_s if self.opts.wait_peers_s is not None
                             else 60.0 + 2.0 * self.opts.nodes,
                             secure_aggregation=self.opts.secure_aggregation, dp=self.opts.dp,
                             dp_noise_multiplier=self.opts.dp_noise_multiplier, dp_clip=self.opts.dp_clip,
                             dp_epsilon=self.opts.dp_epsilon, dp_delta=self.opts.dp_delta)
            if libp2p is not None:
                cfg.transport, cfg.libp2p_listen = "libp2p", [libp2p[i][0]]
                cfg.bootstrap = [f"{a}/p2p/{lp}" for j, (a, lp) in enumerate(libp2p[:2]) if j != i]
            cfg = node_config(self.opts, cfg.validate(), i, self.attackers)
            if self.net is not None:
                cfg = self.net.node_config(i, cfg)
            cfg_path = d / "config.toml"
            cfg_path.write_text(cfg.to_toml())
            self.nodes.append(_Node(i, d, cfg_path, d / "node.log", ident.peer_id))

    def _launch(self, node: _Node) -> None:
        node.progressed = False
        node.last_progress_t = None  # a round gap is measured within one incarnation: downtime is not a stall
        log = open(node.log_path, "ab")
        argv = [sys.executable, "-m", "fednode", "start", "--config", str(node.config_path), *self.opts.extra_args]
        if self.net is not None:
            argv = self.net.command(node.index, argv)
        try:
            node.proc = subprocess.Popen(
                argv,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env,
                start_new_session=True, preexec_fn=lambda n=self.opts.node_nice: node_child_setup(n))
        finally:
            log.close()
        node.killed = False
        node.exit_code = None

    # ------------------------------------------------------------------ running

    def run(self) -> dict[str, Any]:
        self.started_at = time.time()
        self.progress = Progress(self.opts.rounds, quiet=self.opts.quiet)
        try:
            if self.net is not None:
                self.net.start(self.started_at)
            for node in self.nodes:
                self._launch(node)
                if self.opts.stagger_s:
                    time.sleep(self.opts.stagger_s)
            self._monitor()
        except _Abort:
            pass
        except KeyboardInterrupt:
            self.errors.append("interrupted")
            self._say("\ninterrupted: stopping every node")
        finally:
            # a second Ctrl-C (or SIGTERM) while nodes stop and namespaces are removed must not cut
            # the cleanup short: it would leave namespaces, routers and shims until the next --netns run
            with signals_deferred(self._say) as deferred:
                try:
                    self._stop_all()
                    self.progress.finish()
                finally:
                    if self.net is not None:
                        self.net.close()
                        self.errors += self.net.errors
            if deferred and "interrupted" not in self.errors:
                self.errors.append("interrupted")
        wall = time.time() - self.started_at
        report = build_report(self, wall)
        if self.net is not None:
            report.update(self.net.report(report))
        if self.opts.report is not None:
            Path(self.opts.report).write_text(json.dumps(report, indent=2))
        if not self.opts.quiet:
            print_summary(report)
        if self._own_workdir and not self.opts.keep and report.get("ok"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif not self.opts.quiet:
            print(f"node logs and state: {self.workdir}", file=sys.stderr)
        return report

    def _say(self, text: str) -> None:
        if not self.opts.quiet:
            if getattr(self, "progress", None) is not None:
                self.progress.finish()  # a message never lands in the middle of the refreshing line
            print(text, file=sys.stderr, flush=True)

    def request_stop(self) -> None:
        """Stop every node and end :meth:`run` (from another thread, e.g. the dashboard quitting)."""
        self._stop_requested = True

    def _monitor(self) -> None:
        deadline = self.started_at + self.opts.timeout
        next_kill = self.started_at + self.opts.kill_every if self.opts.kill_every else None
        last_rss = 0.0
        while True:
            now = time.time()
            self._poll_status(now)
            if self.net is not None:
                self.net.tick(now, any(n.last_round_done >= 0 for n in self.nodes))
            for node in self.nodes:
                if node.proc is not None and node.exit_code is None:
                    code = node.proc.poll()
                    if code is not None:
                        node.exit_code = code
                        if not node.killed and code != 0:
                            tail = _log_tail(node.log_path)
                            self.errors.append(f"node{node.index} exited with code {code}: {tail}")
                if node.killed and node.restart_at is not None and now >= node.restart_at:
                    node.restart_at = None
                    node.restarts += 1
                    self._say(f"restarting node{node.index}")
                    self._launch(node)
            if self.errors and any(n.exit_code not in (None, 0) and not n.killed for n in self.nodes):
                # a node failed on its own (bad input, crash): report it instead of waiting
                if now - self.started_at < 120 or all(n.exit_code is not None for n in self.nodes):
                    raise _Abort()
            if all(n.exit_code is not None and not n.killed for n in self.nodes):
                return
            if getattr(self, "_stop_requested", False):
                self.errors.append("stopped from the dashboard")
                raise _Abort()
            if now >= deadline:
                self.errors.append(f"timeout after {self.opts.timeout:.0f} s")
                return
            if next_kill is not None and now >= next_kill:
                next_kill = now + self.opts.kill_every
                self._kill_random(now)
            if now - last_rss >= 1.0:
                last_rss = now
                self._sample_memory()
            self._progress(now)
            time.sleep(0.2)

    def _kill_random(self, now: float) -> None:
        candidates = [n for n in self.nodes if n.proc is not None and n.exit_code is None and not n.killed]
        unfinished = [n for n in candidates if n.last_round_done + 1 < self.opts.rounds and n.progressed]
        if not unfinished:
            return
        node = self.rng.choice(unfinished)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=10)
        node.killed = True
        node.restart_at = now + self.opts.restart_delay
        try:
            ckpt_round = peek_round(node.state_dir / "checkpoint.fnck")
        except (CheckpointError, OSError):
            ckpt_round = 0
        node.pending_resume = {"killed_at_round": node.max_round_seen, "checkpoint_round": ckpt_round,
                               "resumed_at_round": None, "killed_at_s": round(now - self.started_at, 2)}
        node.resumes.append(node.pending_resume)
        self._say(f"SIGKILL node{node.index} at round {node.max_round_seen} (checkpoint round {ckpt_round})")

    def _poll_status(self, now: float) -> None:
        for node in self.nodes:
            st = read_status(node)
            if st is None:
                continue
            node.status = st
            rnd = int(st.get("round", 0))
            if node.pending_resume is not None and node.restarts > 0 and not node.killed and \
                    st.get("restarts", 0) >= node.restarts:
                node.pending_resume["resumed_at_round"] = rnd
                if rnd < node.pending_resume["checkpoint_round"]:
                    node.went_backwards = True
                node.pending_resume = None
            if rnd < node.max_round_seen and st.get("restarts", 0) == node.restarts:
                node.went_backwards = True
            node.max_round_seen = max(node.max_round_seen, rnd)
            done = rnd - 1
            if done > node.last_round_done:
                if node.last_progress_t is not None and not node.killed:
                    node.max_gap = max(node.max_gap, now - node.last_progress_t)
                node.last_progress_t = now
                node.last_round_done = done
                node.progressed = node.progressed or (not node.killed and node.pending_resume is None)

    def _sample_memory(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                mem = rss_mb(n.proc.pid)
                if mem is not None:
                    n.rss_peak_mb = round(max(n.rss_peak_mb or 0.0, mem[1]), 1)

    def _progress(self, now: float) -> None:
        statuses = [n.status or {} for n in self.nodes]
        accs = [s["accuracy"] for s in statuses if isinstance(s.get("accuracy"), float)]
        self.progress.update(now, now - self.started_at,
                             [min(self.opts.rounds, int(s.get("round", 0))) for s in statuses],
                             [n.proc is not None and n.exit_code is None and not n.killed for n in self.nodes],
                             accs, sum(n.restarts for n in self.nodes))

    def _stop_all(self) -> None:
        procs = [n.proc for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for n in self.nodes:
            if n.proc is not None and n.exit_code is None:
                n.exit_code = n.proc.returncode


class _Abort(Exception):
    pass


def _libp2p_addresses(idents: list[Identity]) -> list[tuple[str, str]]:
    """(listen multiaddr, libp2p peer id) per node: a free 127.0.0.1 port each, kept across restarts
    so that peers re-dial a restarted node where it was."""
    import socket

    from fednode.gossip.transports.binding import libp2p_peer_id
    socks = []
    try:
        for _ in idents:  # hold every socket until all ports are drawn: no port twice
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    return [(f"/ip4/127.0.0.1/tcp/{port}", libp2p_peer_id(ident.public_key_bytes))
            for port, ident in zip(ports, idents)]


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if "fednode: error:" in ln]
    return (errs[-1] if errs else (lines[-1] if lines else "(empty log)"))[:300]


def run_testnet(opts: TestnetOptions) -> dict[str, Any]:
    net = Testnet(opts)
    net.prepare()
    return net.run()


def run_testnet_with_dashboard(opts: TestnetOptions, *, headless: bool = False,
                               quit_when_done: bool = False) -> dict[str, Any]:
    """The testnet in a background thread, the dashboard over it in the foreground.

    The dashboard joins the testnet's federation through the same loopback scouting group the
    nodes use; quitting it stops the testnet, and the testnet's end is shown in its event log.
    """
    import threading

    from fednode.gossip.transports.zenoh_transport import ZenohSettings
    from fednode.tui.app import DashboardApp, StatusFeed
    opts.quiet = True
    if not opts.node_nice:
        opts.node_nice = 5
    net = Testnet(opts)
    net.prepare()
    allow = AllowList.from_file(net.workdir / "allow_list.txt")
    settings = ZenohSettings.loopback(net.federation, secrets.token_bytes(32), multicast_address=net.scout)
    result: dict[str, Any] = {}
    app = DashboardApp(net.federation, feed_factory=lambda q: StatusFeed(settings, allow, q),
                       subtitle=f"testnet {net.federation}")

    def background() -> None:
        report = net.run()
        result.update(report)
        app.inbox.put(("note", f"testnet finished: {'OK' if report.get('ok') else 'FAILED'} in "
                               f"{report.get('wall_time_s', 0):.1f} s; press q to quit", time.time()))
        if quit_when_done:
            app.call_from_thread(app.exit)

    thread = threading.Thread(target=background, name="testnet", daemon=True)
    thread.start()
    try:
        app.run(headless=headless)
    finally:
        net.request_stop()
        thread.join(timeout=60)
    if result:
        net.opts.quiet = False
        print_summary(result)
    result["dashboard"] = {"statuses_seen": app.view.statuses_seen, "peers": len(app.view.peers),
                           "rejected_statuses": app.view.rejected_statuses}
    return result
