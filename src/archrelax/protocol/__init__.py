"""The relaxation protocol: experiment spec -> plan (run graph) -> run store, on a local or Slurm executor.

    spec = load_spec(preset="demo", overrides=["seeds=[0,1]"])
    exp = run_experiment(spec, "experiments/demo")          # idempotent: rerun to resume
    print(format_status(Store(exp)))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .executors import InProcessExecutor, ProcessExecutor, execute, run_one, submitit_executor
from .plan import KINDS, Run, make_plan
from .spec import ExperimentSpec, SpecError, list_presets, load_spec, preset_path, spec_from_dict
from .store import FINISHED, SUMMARY_COLUMNS, Store
from .table import format_status, format_summary

__all__ = [
    "ExperimentSpec", "SpecError", "load_spec", "spec_from_dict", "list_presets", "preset_path",
    "Run", "make_plan", "KINDS", "Store", "SUMMARY_COLUMNS", "FINISHED",
    "InProcessExecutor", "ProcessExecutor", "submitit_executor", "run_one", "execute",
    "run_experiment", "format_status", "format_summary",
]


def make_executor(spec: ExperimentSpec, store: Store, executor: str | None = None, workers: int | None = None) -> Any:
    """The executor the spec (or the command line's overrides) asks for."""
    kind = executor or spec.executor
    n = workers if workers is not None else spec.workers
    if kind == "local":
        return InProcessExecutor() if n == 1 else ProcessExecutor(n)
    if kind == "slurm":
        return submitit_executor(spec.slurm, store.root / "slurm", name=spec.name)
    raise ValueError(f"executor {kind!r} is not known; choose 'local' or 'slurm'")


def check_inputs(plan: dict[str, Run]) -> None:
    """Fail before anything is written or trained when an input every run needs is bad (issue 9): today
    each data source (missing path, unreadable zip, one class, ...), checked without decoding it."""
    from ..data import check_data

    for source, root in dict.fromkeys((r.config["data"], r.config.get("data_root")) for r in plan.values()):
        check_data(source, root)


def run_experiment(spec: ExperimentSpec, out_dir: str | Path, *, executor: str | None = None,
                   workers: int | None = None, poll_s: float = 2.0,
                   log: Callable[[str], None] = print) -> Path:
    """Plan ``spec`` into ``out_dir`` and train every unfinished run; returns the experiment folder.

    Rerunning is safe and cheap: finished runs are skipped, interrupted ones resume from their checkpoint,
    and a changed spec adds only the runs whose configuration changed (ids hash configs).
    """
    store = Store(out_dir)
    plan = make_plan(spec)
    check_inputs(plan)
    store.root.mkdir(parents=True, exist_ok=True)
    store.write_spec(spec)
    store.write_plan(plan)
    store.write_summary(plan)
    ex = make_executor(spec, store, executor, workers)
    try:
        execute(store, plan, ex, poll_s=poll_s, log=log)
    finally:
        if hasattr(ex, "shutdown"):
            ex.shutdown()
    return store.root
