"""``archrelax models``: list the registered models."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the registered models",
                              description="List the registered model names (use one with `archrelax train NAME`; "
                              "a user factory is given as package.module:factory).")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from . import get_factory, list_models

    for name in list_models():
        doc = (get_factory(name).__doc__ or "").strip().splitlines()
        print(f"{name:14s} {doc[0] if doc else ''}")
    return 0
