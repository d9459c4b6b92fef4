"""The ``fednode`` command line: keygen, start, status, dashboard, testnet, privacy, plot.

It sits above the parts it wires together (node runtime, testnet, dashboard); nothing in
``fednode/`` imports it. One module per subcommand, each with a ``register(sub)``.
Every user error ends in one line on stderr (``fednode: error: ...``) and exit code 2;
nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys

from fednode.cli import keygen, observe, plot, privacy, router, start, testnet
from fednode.cli.common import UserError, user_errors

__all__ = ["UserError", "build_parser", "main"]

_COMMANDS = (keygen, start, observe, testnet, privacy, plot, router)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fednode", description="Fully decentralized federated learning node")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS:
        module.register(sub)
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
        if isinstance(exc, user_errors()):
            print(f"fednode: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
