"""Command-line entry points of archrelax.protocol (see archrelax.cli): ``run``, ``status``, ``demo``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser(
        "run", help="run (or resume) a relaxation experiment",
        description="Plan an experiment from a spec file, a preset or an experiment folder, and train every "
                    "unfinished run. Safe to rerun: finished runs are skipped, interrupted ones resumed.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("spec", nargs="?", help="spec file (YAML), or an experiment folder to resume")
    src.add_argument("--preset", help="a packaged preset (see --list-presets)")
    src.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set train.lr=0.1 --set seeds=[0,1,2] (repeatable)")
    p.add_argument("--executor", choices=("local", "slurm"), help="where runs execute (default: the spec's)")
    p.add_argument("--workers", type=int, help="local worker processes (default: the spec's)")
    p.add_argument("--out", help="experiment folder (default: experiments/<name>, or the folder given as SPEC)")
    p.add_argument("--force", action="store_true",
                   help="replace the spec and plan of an experiment folder that holds a different spec "
                        "(refused otherwise, listing the keys that differ)")
    p.add_argument("--detach", action="store_true",
                   help="with --executor slurm: submit every unfinished run at once (relaxed runs wait for their "
                        "CNN's job: afterok) and return; follow with `archrelax status`, rerun to submit what is "
                        "missing (never a second job for a run whose job is queued or running)")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing: check what `archrelax run` checks before it starts, then print the plan (run "
                        "ids, kind, t_w, seed, status where the run's folder exists), the model's footprint as CNN "
                        "and as each target it is relaxed to, and the memory guard's verdict per relaxation (bytes "
                        "needed, available memory); exit status 1 if the run would be refused or a relaxation not fit")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("status", help="table of an experiment's runs",
                              description="Show every run of an experiment: kind, t_w, status, epoch, best test "
                                          "accuracy and the start of any error.",
                              epilog="Exit status: 0 when no run has failed (runs may still be pending, running or "
                                     "interrupted); 1 when a run is failed, diverged, damaged or corrupt (its "
                                     "status.json unreadable); 2 when the experiment folder cannot be read.")
    p.add_argument("experiment", help="experiment folder")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "demo", help="the whole protocol on the offline mnist5k data, in a few minutes on a CPU",
        description="Run the 'demo' preset (CNN, FCN baseline, eFCN and eLCN from five switch times on mnist5k), "
                    "print its summary and write the report.")
    p.add_argument("--out", default="archrelax-demo", help="experiment folder (default: ./archrelax-demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo spec")
    p.add_argument("--workers", type=int, help="local worker processes")
    p.add_argument("--force", action="store_true", help="replace the spec of an existing folder that differs")
    p.set_defaults(func=cmd_demo)


def _finish(store, t0: float) -> int:
    from ..store import FINISHED
    from . import format_summary

    rows = store.read_summary()
    bad = [r for r in rows if r["status"] not in FINISHED]
    print(format_summary(store))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; summary: {store.summary_path}")
    if bad:
        print(f"{len(bad)} run(s) did not finish: see `archrelax status {store.root}` (rerun to retry)")
    return 1 if bad else 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import Store, list_presets, load_spec, run_experiment

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    spec_path = Path(args.spec) if args.spec else None
    spec = load_spec(spec_path, preset=args.preset, overrides=args.overrides)
    out = args.out
    if out is None:
        out = spec_path if spec_path is not None and spec_path.is_dir() else Path("experiments") / spec.name
    if args.dry_run:
        from .dryrun import dry_run

        text, ok = dry_run(spec, out, executor=args.executor, workers=args.workers, force=args.force,
                           detach=args.detach)
        print(text)
        return 0 if ok else 1
    t0 = time.perf_counter()
    root = run_experiment(spec, out, executor=args.executor, workers=args.workers, poll_s=args.poll,
                          force=args.force, detach=args.detach)
    if args.detach:
        print(f"submitted; follow with `archrelax status {root}`, rerun `archrelax run {root} --executor slurm "
              "--detach` to submit what is missing"
              + (f"; analyses {spec.analyses}: `archrelax analyse {root}` once the runs are done" if spec.analyses else ""))
        return 0
    rc = _finish(Store(root), t0)
    if spec.analyses:
        _analyse(root, spec.analyses)
    _claims_line(root)
    return rc


def _analyse(root: Path, names: list[str]):
    from archrelax.analysis.experiment import analyse_experiment  # lazy (torch), but never optional

    print(f"running analyses {names} ...")
    return analyse_experiment(root, only=names)


def _claims_line(root: Path) -> None:
    """One line: how many of the paper's claims this experiment supports so far (details: archrelax claims)."""
    from archrelax.analysis.claims import VERDICTS, evaluate_claims

    try:
        found = evaluate_claims(root)
    except Exception as e:  # noqa: BLE001 - a summary line must not fail a run that trained
        print(f"claims of the paper: not evaluated ({type(e).__name__}: {e})")
        return
    counts = ", ".join(f"{n} {v}" for v in VERDICTS if (n := sum(c.verdict == v for c in found)))
    print(f"claims of the paper: {counts} (details: `archrelax claims {root}`)")


def cmd_status(args: argparse.Namespace) -> int:
    from . import Store
    from .table import PROBLEM_STATES, status_table

    text, counts = status_table(Store(args.experiment))
    print(text)
    # a script waiting on an experiment learns from the exit status that a run went wrong or its record is
    # incomplete (its row says how)
    return 1 if any(counts.get(s) for s in (*PROBLEM_STATES, "incomplete")) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import Store, load_spec, run_experiment

    spec = load_spec(preset="demo", overrides=args.overrides)
    t0 = time.perf_counter()
    root = run_experiment(spec, args.out, workers=args.workers, force=args.force)
    rc = _finish(Store(root), t0)
    from archrelax.report import write_report

    # only the spec's analyses (the demo lists them all, at cheap settings), then the report from what is
    # there; the pass's outcome goes to the report, whose overview says what was computed and what reused
    if spec.analyses:
        outcome = _analyse(root, spec.analyses)
    else:
        from archrelax.analysis.experiment import AnalysisResults

        outcome = AnalysisResults()  # none requested: the overview lists them all as missing
    page = write_report(root, analyse=False, analysed=outcome)
    _claims_line(root)
    print(f"report: {page}  ({time.perf_counter() - t0:.0f} s in all)")
    return rc
