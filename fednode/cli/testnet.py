"""``fednode testnet``: N local nodes and a JSON report."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    opts.transport = args.transport
    if args.transport == "libp2p":
        from fednode.cli.common import UserError
        from fednode.gossip.transports.libp2p_settings import INSTALL_HINT, libp2p_available
        if not libp2p_available():
            raise UserError(INSTALL_HINT)
        if args.tui:
            raise UserError("the dashboard observes over Zenoh only; run the libp2p testnet without --tui")
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
    p.add_argument("--transport", default="zenoh", choices=["zenoh", "libp2p"],
                   help="libp2p: nodes on fixed loopback ports, bootstrapping to nodes 0 and 1")
    p.set_defaults(func=cmd_testnet)
