"""Command-line entry points of archrelax.analysis (see archrelax.cli)."""
from __future__ import annotations

import argparse
import dataclasses

# the analysis names, repeated here so `archrelax --help` does not import torch-heavy modules
_NAMES = ("memory", "distance", "sharpness", "ablation", "templates", "interpolation")
# settings exposed as options: --sharpness-samples N etc. (AnalysisSettings fields)
_OPTIONS = ("device", "seed", "batch_size", "sharpness_samples", "sharpness_k", "sharpness_tol", "sharpness_max_iter",
            "trace_probes", "eval_train_samples", "eval_test_samples", "alphas", "interp_start", "interp_end",
            "interp_max_runs", "template_count")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser(
        "analyse", aliases=["analyze"], help="compute the analyses of an experiment folder (cached in EXPERIMENT/analysis/)",
        description="Run the analyses (" + ", ".join(_NAMES) + ") over an experiment folder and write "
                    "EXPERIMENT/analysis/<name>.json; unchanged inputs reuse the cached result.")
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment folder (with plan.json and runs/)")
    p.add_argument("--only", nargs="+", choices=_NAMES, metavar="NAME", help=f"only these analyses: {', '.join(_NAMES)}")
    p.add_argument("--force", action="store_true", help="recompute even when the cache is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    for name in _OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="V",
                       help=f"override AnalysisSettings.{name}")
    p.set_defaults(func=_analyse)


def _analyse(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .experiment import AnalysisSettings, analyse_experiment

    defaults = AnalysisSettings()
    overrides = {}
    for f in dataclasses.fields(AnalysisSettings):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        default = getattr(defaults, f.name)
        try:  # cast the text to the default's type (None-defaults are optional ints)
            overrides[f.name] = raw if isinstance(default, str) else type(default)(raw) if default is not None else int(raw)
        except ValueError as e:
            raise ValueError(f"--{f.name.replace('_', '-')} {raw!r}: expected {type(default or 0).__name__}") from e
    exp = Path(args.experiment)
    if not exp.is_dir():
        raise FileNotFoundError(f"experiment folder {str(exp)!r} does not exist")
    results = analyse_experiment(exp, only=args.only, progress=not args.quiet,
                                 settings=AnalysisSettings(**overrides), force=args.force)
    failed = 0
    for name, obj in results.items():
        state = f"error: {obj['error']}" if obj.get("error") else f"{len(obj.get('missing') or [])} missing"
        failed += bool(obj.get("error"))
        print(f"{name:<14} {exp / 'analysis' / (name + '.json')}  ({state})")
    return 1 if failed else 0
