"""``fednode start``: run one node (optionally under the dashboard)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from fednode.cli.common import UserError, setup_logging
from fednode.node.config import NodeConfig


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
    "--transport": ("transport", str, "zenoh (default) | libp2p (needs pip install -e '.[libp2p]')"),
}


def _add_start_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (flags override it)")
    for flag, (dest, typ, help_) in _START_FLAGS.items():
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--listen", action="append", default=None, help="listen endpoint, e.g. tcp/0.0.0.0:7447")
    p.add_argument("--connect", action="append", default=None, help="endpoint to connect to (router or peer)")
    p.add_argument("--no-multicast", dest="multicast", action="store_const", const=False, default=None,
                   help="disable multicast scouting (use --connect)")
    p.add_argument("--bootstrap", action="append", default=None,
                   help="libp2p: peer to join through, /ip4/HOST/tcp/PORT/p2p/PEERID (repeatable)")
    p.add_argument("--libp2p-listen", dest="libp2p_listen", action="append", default=None,
                   help="libp2p listen multiaddr, e.g. /ip4/0.0.0.0/tcp/4001 (repeatable)")
    p.add_argument("--announce", dest="libp2p_announce", action="append", default=None,
                   help="libp2p: address told to peers, e.g. /ip4/192.0.2.7/tcp/4001 (repeatable)")
    p.add_argument("--forever", action="store_true", help="run until stopped (overrides rounds in the config)")
    p.add_argument("--tui", action="store_true", help="show the dashboard, focused on this node (logs go to "
                   "<state-dir>/node.log)")


def _start_config(args: argparse.Namespace) -> NodeConfig:
    overrides = {dest: getattr(args, dest) for _, (dest, _, _) in _START_FLAGS.items()}
    overrides["listen"] = args.listen
    overrides["connect"] = args.connect
    overrides["multicast"] = args.multicast
    for key in ("bootstrap", "libp2p_listen", "libp2p_announce"):
        overrides[key] = getattr(args, key, None)
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
    from fednode.cli.transports import transport_factory_for
    factory = transport_factory_for(cfg, identity, allow_list)
    if getattr(args, "tui", False) and cfg.transport != "zenoh":
        raise UserError("the dashboard observes a federation over Zenoh only; over libp2p use "
                        "`fednode status --transport libp2p --bootstrap ADDR`")
    setup_logging(cfg.log_level, identity.short_id)
    from fednode.node.trainer import configure_jax_for_multiprocess
    if os.environ.get("FEDNODE_SINGLE_THREAD") == "1":
        configure_jax_for_multiprocess()  # before JAX is imported
    from fednode.node.trainer import Trainer, resolve_task
    task = resolve_task(cfg.task)
    trainer = Trainer(task, seed=cfg.seed, node_index=cfg.node_index, node_count=cfg.node_count,
                      split=cfg.split, alpha=cfg.alpha, data_dir=cfg.data_dir, local_epochs=cfg.local_epochs,
                      batch_size=cfg.batch_size, learning_rate=cfg.learning_rate)
    _configure_dp(cfg, trainer)
    settings = zenoh_settings_for(cfg, identity.peer_id)
    from fednode.node.runtime import NodeRuntime

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


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
    p = sub.add_parser("start", help="run a node")
    _add_start_flags(p)
    p.set_defaults(func=cmd_start)
