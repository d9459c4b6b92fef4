"""``fednode testnet``: N local nodes and a JSON report."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from fednode.cli.common import UserError


def cmd_testnet(args: argparse.Namespace) -> int:
    from fednode.testnet.launcher import TestnetOptions, run_testnet
    opts = TestnetOptions(nodes=args.nodes, rounds=args.rounds, seed=args.seed, task=args.task, split=args.split,
                          alpha=args.alpha, federation=args.federation, kill_every=args.kill_every,
                          restart_delay=args.restart_delay, report=Path(args.report) if args.report else None,
                          workdir=Path(args.workdir) if args.workdir else None, data_dir=args.data_dir,
                          local_epochs=args.local_epochs, timeout=args.timeout, quiet=args.quiet,
                          keep=args.keep, extra_args=args.node_arg or [],
                          secure_aggregation=args.secure_aggregation, dp=args.dp,
                          dp_noise_multiplier=args.dp_noise_multiplier, dp_clip=args.dp_clip,
                          dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta)
    for name in _PASS_THROUGH:  # round parameters every node gets (README "The testnet")
        setattr(opts, name, getattr(args, name))
    opts.transport = args.transport
    opts.check()
    if args.transport == "libp2p":
        from fednode.gossip.transports.libp2p_settings import INSTALL_HINT, libp2p_available
        if not libp2p_available():
            raise UserError(INSTALL_HINT)
        if args.tui:
            raise UserError("the dashboard observes over Zenoh only; run the libp2p testnet without --tui")
    opts.netns, opts.link, opts.partition = args.netns, args.link or [], args.partition
    opts.sites, opts.kill_router = args.sites, args.kill_router
    if args.transport == "libp2p" and (args.netns or args.sites != 1):
        raise UserError("--transport libp2p runs on loopback only; --netns and --sites use Zenoh")
    if opts.netns or opts.link or opts.partition or opts.sites != 1 or opts.kill_router:
        from fednode.testnet.netrun import validate_network_options
        validate_network_options(opts)
        if args.tui:
            raise UserError("--tui does not work with --netns yet (the dashboard runs outside the namespaces)")

    def on_term(signum, frame):  # SIGTERM cleans up like Ctrl-C: nodes, shims, routers, namespaces
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    from fednode.testnet.adversary import apply_cli
    apply_cli(opts, args)
    if args.tui:
        from fednode.testnet.launcher import run_testnet_with_dashboard
        report = run_testnet_with_dashboard(opts)
    else:
        report = run_testnet(opts)
    return 0 if report.get("ok") else 1


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
    p = sub.add_parser("testnet", help="run N local nodes on loopback and write a JSON report")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="digits")
    p.add_argument("--split", default="iid", choices=["iid", "dirichlet"])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--federation", default=None, help="federation id (default: a fresh random one)")
    p.add_argument("--kill-every", type=float, default=None, help="SIGKILL a random node every N seconds")
    p.add_argument("--restart-delay", type=float, default=5.0, help="restart a killed node after N seconds")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--workdir", help="directory for node state and logs (default: a temporary one)")
    p.add_argument("--data-dir")
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--node-arg", action="append", help="extra flag passed to every `fednode start`")
    p.add_argument("--secure-aggregation", default="off", choices=["off", "retry", "secagg+"],
                   help="mask every contribution (docs/security.md); default off")
    p.add_argument("--dp", default="off", choices=["off", "local", "dpsgd", "distributed"],
                   help="differential privacy mechanism (docs/privacy.md)")
    p.add_argument("--dp-noise-multiplier", type=float, default=None)
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--dp-epsilon", type=float, default=None,
                   help="budget per node at --dp-delta (calibrates the noise when no multiplier is given)")
    p.add_argument("--dp-delta", type=float, default=1e-5)
    p.add_argument("--tui", action="store_true", help="open the dashboard over the testnet (docs/dashboard.md)")
    p.add_argument("--degree", type=int, default=8, help="overlay degree of every node (default 8)")
    p.add_argument("--aggregator", default="gossip", help="gossip | clipped | trimmed_mean | median")
    p.add_argument("--t-hello", type=float, default=5.0, help="HELLO wait of every node (s)")
    p.add_argument("--t-agg", type=float, default=5.0, help="aggregation wait per attempt (s)")
    p.add_argument("--t-commit", type=float, default=2.0, help="COMMIT wait (s)")
    p.add_argument("--max-retries", type=int, default=2, help="RETRY attempts per round")
    p.add_argument("--lease-ms", type=int, default=2000, help="liveliness lease of every node (ms)")
    p.add_argument("--wait-peers", dest="wait_peers_s", type=float, default=None,
                   help="a fresh node waits this long for all peers before round 0 (default 60 + 2 per node)")
    p.add_argument("--stagger", dest="stagger_s", type=float, default=0.0,
                   help="seconds between two node launches (large testnets on few cores)")
    p.add_argument("--netns", action="store_true",
                   help="each node in a network namespace of its own (root; README 'Real networks')")
    p.add_argument("--link", action="append", metavar="SPEC",
                   help='egress impairment, e.g. "delay=50ms jitter=10ms loss=2%% rate=20mbit"; prefix "3:" '
                        'for one node or "site1:" for one site (repeatable; needs --netns)')
    p.add_argument("--partition", metavar="SPEC",
                   help='cut the federation, e.g. "at=20s for=30s groups=0-3|4-7" (needs --netns)')
    p.add_argument("--sites", type=int, default=1,
                   help="put the nodes in N sites joined only through Zenoh routers (needs --netns)")
    p.add_argument("--kill-router", metavar="SPEC", help='e.g. "site=1 at=20s for=20s": SIGKILL that '
                   'site\'s router and restart it (needs --sites)')
    p.add_argument("--transport", default="zenoh", choices=["zenoh", "libp2p"],
                   help="libp2p: nodes on fixed loopback ports, bootstrapping to nodes 0 and 1")
    from fednode.testnet.adversary import register_flags
    register_flags(p)
    p.set_defaults(func=cmd_testnet)


_PASS_THROUGH = ("degree", "aggregator", "t_hello", "t_agg", "t_commit", "max_retries", "lease_ms",
                 "wait_peers_s", "stagger_s")
