"""``archrelax export EXP``: the experiment's metrics as one tidy table (see :mod:`archrelax.store.export`)."""
from __future__ import annotations

import argparse
import sys

from archrelax.cli import add_experiment_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser(
        "export", help="write an experiment's metrics as one table (CSV, or Parquet) for pandas",
        description="Write one row per evaluation of every run (columns: run, kind, t_w, t_w2, seed, status, step, "
                    "epoch, global_epoch on the CNN's clock, then every metric recorded: train_loss, train_acc, "
                    "test_loss, test_acc, offlocal_ratio, lr, ...). Read it with pandas.read_csv; docs/export_example.py "
                    "draws a figure from it.")
    add_experiment_argument(p)
    p.add_argument("--out", metavar="FILE", help="file to write (default: EXPERIMENT/metrics.csv, or "
                   "EXPERIMENT/metrics.parquet with --format parquet)")
    p.add_argument("--format", choices=("csv", "parquet"), default=None,
                   help="table format (default: from --out's suffix, else csv; parquet needs pyarrow)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .export import export_metrics

    path, n, problems = export_metrics(args.experiment, args.out, format=args.format)
    for line in problems:
        print(f"archrelax export: warning: run left out, its metrics cannot be read: {line}", file=sys.stderr)
    print(f"{path}  ({n} rows)")
    return 0
