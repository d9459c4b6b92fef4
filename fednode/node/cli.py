"""The ``fednode`` command line: keygen, start, status, testnet.

Every user error ends in one line on stderr (``fednode: error: ...``) and exit code 2;
nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from fednode.node.config import ConfigError, NodeConfig


class UserError(Exception):
    """A one-line, user-facing error."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug (imported lazily: JAX and Zenoh are slow)."""
    from fednode.node.checkpoint import CheckpointError
    from fednode.security.identity import IdentityError
    types: list[type[BaseException]] = [UserError, ConfigError, IdentityError, CheckpointError]
    try:
        from fednode.node.trainer import DataError, TaskError
        types += [DataError, TaskError]
    except ImportError:
        pass
    try:
        from fednode.gossip.transports.zenoh_transport import TransportError
        types.append(TransportError)
    except ImportError:
        pass
    return tuple(types)


# ---------------------------------------------------------------------------- keygen

def cmd_keygen(args: argparse.Namespace) -> int:
    from fednode.security.identity import AllowList, Identity
    path = Path(args.out) if args.out else Path(args.state_dir) / "identity.pem"
    if path.exists() and not args.force:
        raise UserError(f"{path} already exists (use --force to replace it; the old identity is lost)")
    ident = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    ident.save(path)
    if args.allow_list:
        al_path = Path(args.allow_list)
        allow = AllowList.from_file(al_path) if al_path.exists() else AllowList()
        allow.add(ident.public_key_bytes, name=args.name)
        allow.to_file(al_path)
    print(json.dumps({"identity": str(path), "peer_id": ident.peer_id.hex(), "short_id": ident.short_id,
                      "public_key": ident.public_key_bytes.hex()}))
    return 0


# ---------------------------------------------------------------------------- start

_START_FLAGS = {
    # flag -> (NodeConfig field, type, help)
    "--federation": ("federation", str, "federation id (nodes with other ids never exchange updates)"),
    "--state-dir": ("state_dir", str, "directory for identity, checkpoint and status"),
    "--identity": ("identity", str, "Ed25519 key file (default <state-dir>/identity.pem)"),
    "--allow-list": ("allow_list", str, "admitted public keys (default <state-dir>/allow_list.txt)"),
    "--interface": ("interface", str, "multicast scouting interface, e.g. lo or eth0 (default auto)"),
    "--mode": ("mode", str, "peer (LAN scouting) or client (through a Zenoh router)"),
    "--lease-ms": ("lease_ms", int, "liveliness lease in ms (default 3000)"),
    "--multicast-address": ("multicast_address", str, "scouting group:port (default 224.0.0.224:7446)"),
    "--task": ("task", str, "digits | fashion-mnist | package.module:attribute"),
    "--data-dir": ("data_dir", str, "dataset directory (fashion-mnist IDX .gz files)"),
    "--split": ("split", str, "iid | dirichlet"),
    "--alpha": ("alpha", float, "Dirichlet concentration for --split dirichlet"),
    "--node-index": ("node_index", int, "this node's shard index"),
    "--node-count": ("node_count", int, "number of shards"),
    "--seed": ("seed", int, "federation seed (initial model and data split)"),
    "--local-epochs": ("local_epochs", float, "local epochs per round"),
    "--batch-size": ("batch_size", int, "local batch size"),
    "--lr": ("learning_rate", float, "learning rate"),
    "--rounds": ("rounds", int, "stop after this many rounds (default: run forever)"),
    "--clip": ("clip", float, "L2 bound on each round's local update"),
    "--degree": ("degree", int, "overlay degree"),
    "--t-hello": ("t_hello", float, "HELLO wait (s)"),
    "--t-agg": ("t_agg", float, "aggregation wait per attempt (s)"),
    "--t-commit": ("t_commit", float, "COMMIT wait (s)"),
    "--max-retries": ("max_retries", int, "RETRY attempts per round"),
    "--aggregator": ("aggregator", str, "gossip | clipped | trimmed_mean | median"),
    "--dp": ("dp", str, "off | local | dpsgd | distributed (docs/privacy.md)"),
    "--dp-noise-multiplier": ("dp_noise_multiplier", float, "noise multiplier z (or give --dp-epsilon and --rounds)"),
    "--dp-clip": ("dp_clip", float, "clip C of a round's update (local, distributed) or of an example's gradient"),
    "--dp-epsilon": ("dp_epsilon", float, "privacy budget: stop releasing before epsilon would exceed it"),
    "--dp-delta": ("dp_delta", float, "delta at which epsilon is reported (default 1e-5)"),
    "--dp-colluders": ("dp_colluders", int, "distributed DP: contributors assumed to collude with the aggregator"),
    "--secure-aggregation": ("secure_aggregation", str,
                             "off | retry | secagg+: neighbours see only masked sums (docs/security.md)"),
    "--log-level": ("log_level", str, "debug | info | warning"),
}


def _add_start_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (flags override it)")
    for flag, (dest, typ, help_) in _START_FLAGS.items():
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--listen", action="append", default=None, help="listen endpoint, e.g. tcp/0.0.0.0:7447")
    p.add_argument("--connect", action="append", default=None, help="endpoint to connect to (router or peer)")
    p.add_argument("--no-multicast", dest="multicast", action="store_const", const=False, default=None,
                   help="disable multicast scouting (use --connect)")
    p.add_argument("--forever", action="store_true", help="run until stopped (overrides rounds in the config)")
    p.add_argument("--tui", action="store_true", help="show the dashboard, focused on this node (logs go to "
                   "<state-dir>/node.log)")


def _start_config(args: argparse.Namespace) -> NodeConfig:
    overrides = {dest: getattr(args, dest) for _, (dest, _, _) in _START_FLAGS.items()}
    overrides["listen"] = args.listen
    overrides["connect"] = args.connect
    overrides["multicast"] = args.multicast
    cfg = NodeConfig.from_sources(Path(args.config) if args.config else None, overrides)
    if args.forever:
        cfg.rounds = None
    return cfg


def zenoh_settings_for(cfg: NodeConfig, peer_id: bytes):
    from fednode.gossip.transports.zenoh_transport import ZenohSettings
    return ZenohSettings(federation=cfg.federation, peer_id=peer_id, mode=cfg.mode, listen=list(cfg.listen),
                         connect=list(cfg.connect), multicast_scouting=cfg.multicast,
                         multicast_interface=cfg.interface, multicast_address=cfg.multicast_address,
                         lease_ms=cfg.lease_ms)


def _setup_logging(level: str, short: str = "") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format=f"%(asctime)s {short} %(levelname)s %(message)s".replace("  ", " "),
                        datefmt="%H:%M:%S", stream=sys.stderr)


def _configure_dp(cfg: NodeConfig, trainer) -> None:
    """Calibrate z for the whole run when only a budget is given, and switch the trainer to DP-SGD."""
    if cfg.dp == "off":
        return
    q, steps = (trainer.sampling_rate, trainer.steps_per_round) if cfg.dp == "dpsgd" else (1.0, 1)
    if cfg.dp_noise_multiplier is None:
        from fednode.security.accountant import noise_for_epsilon
        assert cfg.dp_epsilon is not None and cfg.rounds is not None
        cfg.dp_noise_multiplier = noise_for_epsilon(cfg.dp_epsilon, q, cfg.rounds * steps, cfg.dp_delta)
        logging.getLogger("fednode.node").info(
            "DP (%s): noise multiplier %.4f spends epsilon %.3g at delta %g over %d rounds (q %.4g, %d steps/round)",
            cfg.dp, cfg.dp_noise_multiplier, cfg.dp_epsilon, cfg.dp_delta, cfg.rounds, q, steps)
    if cfg.dp == "dpsgd":
        trainer.enable_dp_sgd(cfg.dp_noise_multiplier, cfg.dp_clip)


def cmd_start(args: argparse.Namespace) -> int:
    cfg = _start_config(args)
    from fednode.security.identity import AllowList, Identity
    if not cfg.identity_path.exists():
        raise UserError(f"no identity at {cfg.identity_path}: run `fednode keygen --state-dir {cfg.state_dir}` first")
    identity = Identity.load(cfg.identity_path)
    if not cfg.allow_list_path.exists():
        raise UserError(f"no allow-list at {cfg.allow_list_path}: list the admitted public keys there "
                        f"(`fednode keygen --allow-list FILE` appends one)")
    allow_list = AllowList.from_file(cfg.allow_list_path)
    if identity.peer_id not in allow_list:
        raise UserError(f"this node's own key is not on the allow-list {cfg.allow_list_path}")
    # check the network settings before the slow trainer start: bad endpoints fail at once, in one line
    zenoh_settings_for(cfg, identity.peer_id).preflight()
    _setup_logging(cfg.log_level, identity.short_id)
    from fednode.node.trainer import configure_jax_for_multiprocess
    if os.environ.get("FEDNODE_SINGLE_THREAD") == "1":
        configure_jax_for_multiprocess()  # before JAX is imported
    from fednode.node.trainer import Trainer, resolve_task
    task = resolve_task(cfg.task)
    trainer = Trainer(task, seed=cfg.seed, node_index=cfg.node_index, node_count=cfg.node_count,
                      split=cfg.split, alpha=cfg.alpha, data_dir=cfg.data_dir, local_epochs=cfg.local_epochs,
                      batch_size=cfg.batch_size, learning_rate=cfg.learning_rate)
    _configure_dp(cfg, trainer)
    from fednode.gossip.transports.zenoh_transport import ZenohTransport
    settings = zenoh_settings_for(cfg, identity.peer_id)
    from fednode.node.runtime import NodeRuntime

    def factory(**callbacks):
        return ZenohTransport(settings, **callbacks)

    runtime = NodeRuntime(cfg, trainer=trainer, identity=identity, allow_list=allow_list,
                          transport_factory=factory)

    def on_signal(signum, frame):  # noqa: ARG001
        logging.getLogger("fednode.node").info("signal %d: stopping after saving state", signum)
        runtime.stop()

    signal.signal(signal.SIGTERM, on_signal)
    if getattr(args, "tui", False):
        return _run_with_dashboard(runtime, cfg, settings, allow_list, identity)
    signal.signal(signal.SIGINT, on_signal)
    return runtime.run()


def _run_with_dashboard(runtime, cfg: NodeConfig, settings, allow_list, identity) -> int:
    """The node in a background thread, the dashboard (focused on it) in the foreground."""
    import dataclasses
    import secrets as _secrets
    import threading

    from fednode.tui.app import run_dashboard
    root = logging.getLogger()
    for handler in list(root.handlers):  # the terminal belongs to the dashboard: log to a file
        root.removeHandler(handler)
    file_handler = logging.FileHandler(Path(cfg.state_dir) / "node.log")
    file_handler.setFormatter(logging.Formatter(f"%(asctime)s {identity.short_id} %(levelname)s %(message)s"))
    root.addHandler(file_handler)
    outcome: dict[str, int] = {}
    node = threading.Thread(target=lambda: outcome.setdefault("rc", runtime.run()), name="node", daemon=True)
    node.start()
    observer = dataclasses.replace(settings, peer_id=_secrets.token_bytes(32))
    try:
        run_dashboard(observer, allow_list, focus=identity.peer_id, subtitle=f"node {identity.short_id}")
    finally:
        runtime.stop()
        node.join(timeout=60)
    return outcome.get("rc", 0)


# ---------------------------------------------------------------------------- status

def cmd_dashboard(args: argparse.Namespace) -> int:
    import secrets as _secrets

    from fednode.gossip.transports.zenoh_transport import ZenohSettings
    from fednode.security.identity import AllowList
    from fednode.tui.app import run_dashboard
    allow_path = Path(args.allow_list)
    if not allow_path.exists():
        raise UserError(f"no allow-list at {allow_path}")
    settings = ZenohSettings(federation=args.federation, peer_id=_secrets.token_bytes(32), mode=args.mode,
                             listen=["tcp/127.0.0.1:0"] if args.interface == "lo" else ["tcp/0.0.0.0:0"],
                             connect=args.connect or [], multicast_scouting=not args.no_multicast,
                             multicast_interface=args.interface, multicast_address=args.multicast_address)
    run_dashboard(settings, AllowList.from_file(allow_path), screenshot_dir=args.screenshot_dir)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fednode.gossip.transports.zenoh_transport import ZenohSettings, list_status
    from fednode.node.status import StatusVerifier
    from fednode.security.envelope import Reject
    from fednode.security.identity import AllowList
    allow = AllowList.from_file(Path(args.allow_list))
    settings = ZenohSettings(federation=args.federation, peer_id=b"\x00" * 32, mode=args.mode,
                             listen=["tcp/127.0.0.1:0"] if args.interface == "lo" else ["tcp/0.0.0.0:0"],
                             connect=args.connect or [], multicast_scouting=not args.no_multicast,
                             multicast_interface=args.interface)
    raw = list_status(settings, timeout_s=args.timeout)
    verifier = StatusVerifier(args.federation, allow)
    rows = []
    for peer, data in sorted(raw.items()):
        res = verifier.verify(data)
        if isinstance(res, Reject):
            rows.append({"peer": peer.hex(), "rejected": res.reason})
        else:
            rows.append(dict(res.meta))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no live peers answered in federation {args.federation!r} within {args.timeout:.0f} s")
        return 1
    print(f"{'peer':14} {'state':12} {'round':>6} {'acc':>7} {'loss':>8} {'nbrs':>4} {'in MB':>8} {'out MB':>8}")
    for r in rows:
        if "rejected" in r:
            print(f"{r['peer'][:12]:14} REJECTED ({r['rejected']})")
            continue
        acc = f"{r['accuracy']:.4f}" if isinstance(r.get("accuracy"), float) else "-"
        loss = f"{r['loss']:.4f}" if isinstance(r.get("loss"), float) else "-"
        print(f"{r.get('short', '?'):14} {r.get('state', '?'):12} {r.get('round', 0):>6} {acc:>7} {loss:>8} "
              f"{len(r.get('neighbours') or []):>4} {r.get('bytes_in', 0) / 1e6:>8.2f} "
              f"{r.get('bytes_out', 0) / 1e6:>8.2f}")
    return 0


# ---------------------------------------------------------------------------- testnet

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
    if args.tui:
        from fednode.testnet.launcher import run_testnet_with_dashboard
        report = run_testnet_with_dashboard(opts)
    else:
        report = run_testnet(opts)
    return 0 if report.get("ok") else 1


# ---------------------------------------------------------------------------- privacy

def cmd_privacy(args: argparse.Namespace) -> int:
    from fednode.security.accountant import epsilon, noise_for_epsilon
    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        raise UserError("give exactly one of --noise-multiplier and --target-epsilon")
    try:
        if args.target_epsilon is not None:
            z = noise_for_epsilon(args.target_epsilon, args.sampling_rate, args.steps, args.delta,
                                  accountant=args.accountant)
            out = epsilon(z, args.sampling_rate, args.steps, args.delta)
            out["target_epsilon"] = args.target_epsilon
        else:
            out = epsilon(args.noise_multiplier, args.sampling_rate, args.steps, args.delta)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fednode", description="Fully decentralized federated learning node")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="create an Ed25519 identity (mode 0600)")
    p.add_argument("--state-dir", default="fednode-state")
    p.add_argument("--out", help="key file (default <state-dir>/identity.pem)")
    p.add_argument("--allow-list", help="also append the public key to this allow-list file")
    p.add_argument("--name", help="name written next to the key in the allow-list")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("start", help="run a node")
    _add_start_flags(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("dashboard", help="live terminal dashboard of a federation (read-only observer)")
    p.add_argument("--federation", default="default")
    p.add_argument("--allow-list", required=True, help="admitted public keys: statuses by others are rejected")
    p.add_argument("--interface", default="auto", help="multicast scouting interface (lo keeps it local)")
    p.add_argument("--multicast-address", default="224.0.0.224:7446")
    p.add_argument("--connect", action="append", help="endpoint of a router or peer")
    p.add_argument("--mode", default="peer", choices=["peer", "client"])
    p.add_argument("--no-multicast", action="store_true")
    p.add_argument("--screenshot-dir", default=".", help="where the s key saves SVG screenshots")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("status", help="list the federation's live peers and their last status")
    p.add_argument("--federation", default="default")
    p.add_argument("--allow-list", required=True)
    p.add_argument("--interface", default="auto")
    p.add_argument("--connect", action="append")
    p.add_argument("--mode", default="peer")
    p.add_argument("--no-multicast", action="store_true")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

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
    p.set_defaults(func=cmd_testnet)

    p = sub.add_parser("privacy", help="epsilon of a (Poisson-subsampled) Gaussian mechanism, as JSON")
    p.add_argument("--noise-multiplier", type=float, help="z: noise std / clip bound")
    p.add_argument("--target-epsilon", type=float, help="print the smallest z that meets this epsilon instead")
    p.add_argument("--sampling-rate", type=float, default=1.0, help="q (1 = every round, node-level)")
    p.add_argument("--steps", type=int, required=True, help="number of composed releases")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", choices=["rdp", "pld"], default="rdp", help="for --target-epsilon")
    p.set_defaults(func=cmd_privacy)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fednode: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"fednode: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
