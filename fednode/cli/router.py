"""``fednode router``: run a Zenoh router (real Zenoh, router mode) that joins sites of a federation."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from fednode.cli.common import setup_logging


def cmd_router(args: argparse.Namespace) -> int:
    from fednode.gossip.transports.zenoh_router import RouterSettings, ZenohRouter
    settings = RouterSettings(listen=args.listen or ["tcp/127.0.0.1:7447"], connect=args.connect or [],
                              multicast_scouting=args.interface is not None,
                              multicast_interface=args.interface or "lo",
                              multicast_address=args.multicast_address, lease_ms=args.lease_ms,
                              tls_certificate=Path(args.tls_cert) if args.tls_cert else None,
                              tls_private_key=Path(args.tls_key) if args.tls_key else None,
                              tls_root_ca=Path(args.tls_root_ca) if args.tls_root_ca else None)
    settings.preflight()  # one line for a bad or busy endpoint, before logging starts
    setup_logging(args.log_level, "router")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    with ZenohRouter(settings):
        while not stop.wait(1.0):
            pass
        logging.getLogger("fednode.router").info("signal received: closing")
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
    p = sub.add_parser("router", help="run a Zenoh router that joins sites (nodes connect to it)")
    p.add_argument("--listen", action="append", help="listen endpoint, e.g. tcp/198.18.0.1:7447 or "
                   "tls/0.0.0.0:7448 (repeatable; default tcp/127.0.0.1:7447)")
    p.add_argument("--connect", action="append", help="another router's endpoint (repeatable)")
    p.add_argument("--interface", default=None, help="answer multicast scouting on this interface "
                   "(default: no scouting; nodes give --connect)")
    p.add_argument("--multicast-address", default="224.0.0.224:7446")
    p.add_argument("--lease-ms", type=int, default=3000, help="link lease: a silent link is dropped after it")
    p.add_argument("--tls-cert", help="PEM certificate for tls/ listen endpoints")
    p.add_argument("--tls-key", help="PEM private key for tls/ listen endpoints")
    p.add_argument("--tls-root-ca", help="PEM CA that this router trusts when it connects over tls/")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_router)
