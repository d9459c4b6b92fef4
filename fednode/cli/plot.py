"""``fednode plot``: accuracy and consensus of one or more testnet reports, overlaid, into an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from fednode.cli.common import UserError


def cmd_plot(args: argparse.Namespace) -> int:
    from fednode.testnet.plot import PlotError, load_report, plot_reports
    labels = args.label or []
    if len(labels) > len(args.reports):
        raise UserError(f"{len(labels)} --label for {len(args.reports)} report(s)")
    try:
        reports = [load_report(Path(path)) for path in args.reports]
        runs = [(labels[i] if i < len(labels) else f"{Path(path).stem} ({len(r.get('nodes') or [])} nodes)", r)
                for i, (path, r) in enumerate(zip(args.reports, reports))]
        out = plot_reports(runs, Path(args.output), title=args.title)
    except PlotError as exc:
        raise UserError(str(exc)) from None
    print(out)
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the ``fednode`` parser."""
    p = sub.add_parser("plot", help="plot accuracy and consensus of testnet reports (needs fednode[plot])")
    p.add_argument("reports", nargs="+", help="JSON reports written by `fednode testnet --report`")
    p.add_argument("-o", "--output", required=True, help="image file to write (.png, .svg, .pdf)")
    p.add_argument("--label", action="append", help="legend label of each report, in order (default: file name)")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=cmd_plot)
