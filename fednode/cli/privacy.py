"""``fednode privacy``: the epsilon calculator."""

from __future__ import annotations

import argparse
import json

from fednode.cli.common import UserError


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


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
    p = sub.add_parser("privacy", help="epsilon of a (Poisson-subsampled) Gaussian mechanism, as JSON")
    p.add_argument("--noise-multiplier", type=float, help="z: noise std / clip bound")
    p.add_argument("--target-epsilon", type=float, help="print the smallest z that meets this epsilon instead")
    p.add_argument("--sampling-rate", type=float, default=1.0, help="q (1 = every round, node-level)")
    p.add_argument("--steps", type=int, required=True, help="number of composed releases")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", choices=["rdp", "pld"], default="rdp", help="for --target-epsilon")
    p.set_defaults(func=cmd_privacy)
