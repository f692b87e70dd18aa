"""Command-line entry points of archrelax.analysis (see archrelax.cli)."""
from __future__ import annotations

import argparse
import dataclasses

from archrelax.cli import add_experiment_argument
from .registry import analysis_names  # light: `archrelax --help` imports no torch
from .settings import AnalysisSettings

# every setting with a scalar value becomes an option: --sharpness-samples N etc.
_OPTIONS = tuple(f.name for f in dataclasses.fields(AnalysisSettings) if not isinstance(f.default, tuple))
# what each option means, for --help (its default is read from AnalysisSettings; a test checks every option has one)
HELP = {
    "device": "device the analyses run on: auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps",
    "seed": "seed of the fixed data subsets and of the random probes (Hutchinson vectors, Lanczos starts)",
    "batch_size": "images per forward pass of the evaluations and Hessian-vector products (memory, not results)",
    "sharpness_samples": "training images in the fixed subset the Hessian of the mean cross-entropy is taken on",
    "sharpness_k": "top Hessian eigenvalues estimated per point (largest magnitude first)",
    "sharpness_tol": "an eigenvalue θ is converged once its residual ||Hv - θv|| <= sqrt(tol)·|θ| (Lanczos stops "
                     "when every one of the k is)",
    "sharpness_max_iter": "Hessian-vector products of the Lanczos run at most, all k eigenvalues together (an "
                          "estimate not converged by then is marked unconverged and left out of the claims)",
    "sharpness_basis": "Lanczos vectors kept (memory: basis x parameters x 4 bytes); a full basis restarts from its "
                       "best Ritz vectors (thick restart)",
    "sharpness_blocks": "also the top eigenvalue of each relaxed (or conv) layer's own Hessian block (per-layer "
                        "sharpness)",
    "workers": "processes for the per-run analysis jobs (default: the spec's workers); the results do not change",
    "trace_probes": "Rademacher probes of the Hutchinson estimate of the Hessian's trace (its standard error "
                    "shrinks as 1/sqrt(probes))",
    "eval_train_samples": "training images (a fixed subset) the interpolation curves are evaluated on",
    "eval_test_samples": "test images (a fixed subset) the ablation and interpolation are evaluated on; the report "
                         "states the size",
    "alphas": "points α in [0, 1] of each interpolation curve, both ends included",
    "interp_start": "where the interpolation starts: switch (the relaxed run's start, its embedded snapshot) or "
                    "cnn_end (the CNN's final weights)",
    "interp_end": "where it ends: efcn_end (the eFCN's final weights), cnn_end or switch",
    "interp_max_runs": "interpolate at most this many finished eFCNs, in plan order; none: every one",
    "template_count": "units of the first relaxed layer drawn as templates (largest off-local norm first)",
}
_METAVAR = {int: "N", float: "X", str: "NAME"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    names = analysis_names()
    p = subparsers.add_parser(
        "analyse", aliases=["analyze"], help="compute the analyses of an experiment folder (cached in EXPERIMENT/analysis/)",
        description="Run the analyses (" + ", ".join(names) + ") over an experiment folder and write "
                    "EXPERIMENT/analysis/<name>.json; unchanged inputs reuse the cached result.")
    add_experiment_argument(p)
    p.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"only these analyses: {', '.join(names)}")
    p.add_argument("--force", action="store_true", help="recompute even when the cache is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    defaults = AnalysisSettings()
    for name in _OPTIONS:
        default = getattr(defaults, name)
        shown = "none" if default is None else default
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       metavar=_METAVAR.get(type(default), "N"),
                       help=f"{HELP.get(name, name.replace('_', ' '))} (default: {shown}, or the spec's "
                            f"analysis_settings.{name})".replace("%", "%%"))
    p.set_defaults(func=_analyse)

    p = subparsers.add_parser(
        "claims", help="the paper's claims tested on an experiment folder (verdicts; files only, fast)",
        description="Test each claim of the paper on an experiment folder: the statistic measured, the number "
                    "of seeds and a verdict (supported, contradicted, not enough evidence, not measured), read "
                    "from the runs' metrics and the cached analyses (run `archrelax analyse` first for the "
                    "claims that need them). Rules and thresholds: docs/claims.md.")
    add_experiment_argument(p)
    p.add_argument("--json", action="store_true", help="print the claims as JSON (with the thresholds)")
    p.set_defaults(func=_claims)


def _analyse(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .experiment import analyse_experiment
    from .settings import settings_from_spec

    exp = Path(args.experiment)
    if not exp.is_dir():
        raise FileNotFoundError(f"experiment folder {str(exp)!r} does not exist")
    defaults = settings_from_spec(exp)  # the experiment's own settings, then the command line's
    overrides = {}
    for name in _OPTIONS:
        raw = getattr(args, name, None)
        if raw is None:
            continue
        default = getattr(AnalysisSettings(), name)
        try:  # cast the text to the default's type (None-defaults are optional ints)
            overrides[name] = _cast(raw, default)
        except ValueError as e:
            raise ValueError(f"--{name.replace('_', '-')} {raw!r}: expected {type(default or 0).__name__}") from e
    try:  # the settings' own checks, before anything is computed or written
        settings = dataclasses.replace(defaults, **overrides)
    except ValueError as e:
        given = " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in overrides)
        raise ValueError(f"{given}: {e}" if given else str(e)) from None
    results = analyse_experiment(exp, only=args.only, progress=not args.quiet, settings=settings, force=args.force)
    failed = 0
    for name, res in results.items():
        state = f"error: {res.error}" if res.error else f"{len(res.missing)} missing"
        failed += bool(res.error)
        took = f", {results.seconds[name]:.1f} s" if name in results.seconds else ", cached"
        print(f"{name:<14} {exp / 'analysis' / (name + '.json')}  ({state}{took})")
    return 1 if failed else 0


_BOOLS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def _cast(raw: str, default: object) -> object:
    if isinstance(default, bool):  # bool("false") is True: read the word instead
        if raw.lower() not in _BOOLS:
            raise ValueError(f"not a yes/no word ({', '.join(_BOOLS)})")
        return _BOOLS[raw.lower()]
    if isinstance(default, str):
        return raw
    return type(default)(raw) if default is not None else int(raw)


def _claims(args: argparse.Namespace) -> int:
    import shutil

    from .claims import dumps, evaluate_claims, format_claims

    found = evaluate_claims(args.experiment)
    if args.json:
        print(dumps(args.experiment, found))
    else:
        print(format_claims(found, width=max(60, min(shutil.get_terminal_size((110, 24)).columns, 140) - 2)))
    return 0
