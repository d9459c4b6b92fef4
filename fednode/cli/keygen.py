"""``fednode keygen``: create a node identity."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fednode.cli.common import UserError


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


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
    p = sub.add_parser("keygen", help="create an Ed25519 identity (mode 0600)")
    p.add_argument("--state-dir", default="fednode-state")
    p.add_argument("--out", help="key file (default <state-dir>/identity.pem)")
    p.add_argument("--allow-list", help="also append the public key to this allow-list file")
    p.add_argument("--name", help="name written next to the key in the allow-list")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_keygen)
