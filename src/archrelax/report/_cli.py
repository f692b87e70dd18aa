"""Command-line entry points of archrelax.report (see archrelax.cli)."""
from __future__ import annotations

import argparse

from archrelax.cli import add_experiment_argument


def _report(args: argparse.Namespace) -> int:
    from . import write_report  # lazy: keeps `archrelax --help` fast

    path = write_report(args.experiment, analyse=not args.no_analyse)
    print(path)
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"could not open a browser; open {path.resolve().as_uri()} by hand")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser("report", help="write EXPERIMENT/report/index.html from an experiment folder",
                              description="Write EXPERIMENT/report/index.html (figures in report/fig/): a "
                              "self-contained page that opens from disk. Works on a partial experiment and "
                              "says what is missing.")
    add_experiment_argument(p, help="experiment folder (spec.yaml, plan.json, runs/)")
    p.add_argument("--no-analyse", action="store_true",
                   help="do not bring the spec's analyses (its `analyses` list) up to date first; use "
                        "analysis/*.json as they are")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.set_defaults(func=_report)
