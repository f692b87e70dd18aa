"""The ``archrelax`` command. Thin: each area registers its subcommands from its own ``_cli`` module."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .signals import Interrupted, exit_after_stop

# (module, ...) each providing ``register(subparsers)``; order is the order of ``--help``.
_COMMAND_MODULES = (
    "archrelax.protocol._cli",  # run, status, demo
    "archrelax.train._cli",  # train
    "archrelax.analysis._cli",  # analyse ...
    "archrelax.report._cli",  # report
    "archrelax.store._cli",  # export
    "archrelax.embed._cli",  # footprint
    "archrelax.data._cli",  # data
    "archrelax.models._cli",  # models
)


def add_experiment_argument(parser: argparse.ArgumentParser,
                            help: str = "experiment folder (with plan.json and runs/)") -> None:
    """The positional EXPERIMENT argument of the subcommands that read an experiment folder."""
    parser.add_argument("experiment", metavar="EXPERIMENT", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archrelax",
        description="Embed CNNs into their eLCN/eFCN equivalents, train across the relaxation, analyse and report.",
    )
    parser.add_argument("--version", action="version", version=f"archrelax {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml); the package's own when it runs from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("archrelax")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _cwd_on_path() -> None:
    """Put the current folder first on sys.path, as ``python -m`` does: a ``mymodels:net`` factory beside the
    user's spec imports. A console script's sys.path starts with the script's own folder instead."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _os_error(e: OSError) -> str:
    """'No space left on device: /exp/runs/x/metrics.jsonl' (the path, when the error knows it)."""
    what = e.strerror or str(e)
    if e.filename is None:
        return what
    return f"{what}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _cwd_on_path()
    exit_after_stop(True)  # this process ends after a clean stop: a second signal then is ignored, not fatal
    try:
        rc = args.func(args)
    except Interrupted as e:  # stopped cleanly on SIGTERM/SIGINT/SIGHUP/SIGUSR1: state saved, status 'interrupted'
        print(f"archrelax {args.command}: {e}", file=sys.stderr)
        return e.exit_code
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
    except OSError as e:  # read-only folder, full disk, ...: one line naming the path (writes are atomic)
        print(f"archrelax {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 1
    finally:
        exit_after_stop(False)  # in-process callers (tests, scripts) get the library's behaviour back
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
