"""``fednode status`` and ``fednode dashboard``: read-only views of a live federation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fednode.cli.common import UserError


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
    from fednode.gossip.status import StatusVerifier
    from fednode.security.envelope import Reject
    from fednode.security.identity import AllowList
    allow = AllowList.from_file(Path(args.allow_list))
    if getattr(args, "transport", "zenoh") == "libp2p":
        from fednode.cli.transports import list_status_libp2p
        raw = list_status_libp2p(args.bootstrap or [], args.timeout)
    else:
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


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
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
    p.add_argument("--transport", default="zenoh", choices=["zenoh", "libp2p"])
    p.add_argument("--bootstrap", action="append", help="libp2p: a member's /ip4/HOST/tcp/PORT/p2p/PEERID")
    p.set_defaults(func=cmd_status)
