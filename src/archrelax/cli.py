"""The ``archrelax`` command. Thin: each area registers its subcommands from its own ``_cli`` module."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# (module, ...) each providing ``register(subparsers)``; order is the order of ``--help``.
_COMMAND_MODULES = (
    "archrelax.protocol._cli",  # run, status, demo
    "archrelax.train._cli",  # train
    "archrelax.analysis._cli",  # analyse ...
    "archrelax.report._cli",  # report
    "archrelax.embed._cli",  # footprint
    "archrelax.data._cli",  # data
    "archrelax.models._cli",  # models
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archrelax",
        description="Embed CNNs into their eLCN/eFCN equivalents, train across the relaxation, analyse and report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `archrelax status EXP | head`: the reader left; point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # user-facing errors: the message names the bad value and what is valid
        print(f"archrelax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
