"""The relaxation protocol: experiment spec -> plan (run graph) -> run store, on a local or Slurm executor.

    spec = load_spec(preset="demo", overrides=["seeds=[0,1]"])
    exp = run_experiment(spec, "experiments/demo")          # idempotent: rerun to resume
    print(format_status(Store(exp)))

``Store`` is :class:`archrelax.store.ExperimentFolder`, the one owner of the experiment folder's format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..store import FINISHED, SUMMARY_COLUMNS, ExperimentFolder
from ..store import ExperimentFolder as Store
from .executors import GroupJob, InProcessExecutor, ProcessExecutor, RunJob, execute, run_group, run_one
from .plan import KINDS, Run, make_plan
from .slurm import SubmititExecutor, job_states, submit_detached, submitit_executor
from .spec import (RUNTIME_KEYS, ExperimentSpec, SpecError, list_presets, load_spec, preset_path, spec_from_dict,
                   spec_to_dict)
from .table import format_status, format_summary

__all__ = [
    "ExperimentSpec", "SpecError", "load_spec", "spec_from_dict", "list_presets", "preset_path",
    "Run", "make_plan", "KINDS", "Store", "ExperimentFolder", "SUMMARY_COLUMNS", "FINISHED",
    "InProcessExecutor", "ProcessExecutor", "SubmititExecutor", "submitit_executor", "run_one", "run_group",
    "RunJob", "GroupJob", "execute", "submit_detached", "job_states",
    "run_experiment", "format_status", "format_summary",
]


def make_executor(spec: ExperimentSpec, exp: ExperimentFolder, executor: str | None = None,
                  workers: int | None = None) -> Any:
    """The executor the spec (or the command line's overrides) asks for."""
    kind = executor or spec.executor
    n = workers if workers is not None else spec.workers
    if kind == "local":
        return InProcessExecutor() if n == 1 else ProcessExecutor(n)
    if kind == "slurm":
        return submitit_executor(spec.slurm, exp.root / "slurm", name=spec.name)
    raise ValueError(f"executor {kind!r} is not known; choose 'local' or 'slurm'")


def lockstep_device(spec: ExperimentSpec, executor: str | None = None) -> str:
    """The device type the runs will train on ("cuda", "cpu", "mps"): for Slurm, "cuda" when jobs get GPUs and
    ``train.device`` allows them; locally, what ``train.device`` resolves to here."""
    device = spec.train.device
    if device != "auto":
        return device.split(":")[0]
    if (executor or spec.executor) == "slurm":
        return "cuda" if spec.slurm.gpus_per_node > 0 else "cpu"
    from ..utils import default_device

    return default_device().type


def check_inputs(plan: dict[str, Run]) -> None:
    """Fail before anything is written or trained when an input every run needs is bad (a typo in a data path
    must not leave a folder of failed runs behind): the optional packages the runs' settings need
    (``train.tensorboard: true``), and each data source (missing path, unreadable zip, one class, ...), checked
    without decoding it. (The model factory's arguments are checked when the spec is
    parsed.)"""
    from ..data import check_data
    from ..train.config import missing_packages  # plain data, no torch

    for name, pkg in dict.fromkeys(m for r in plan.values() for m in missing_packages(r.config)):
        key = f"train.{name}"  # the only place such settings have in a spec
        raise ValueError(f"'{key}' = true needs the {pkg} package, which is not installed here: "
                         f"pip install 'archrelax[{pkg}]', or --set {key}=false (it changes no run)")
    for source, root in dict.fromkeys((r.config["data"], r.config.get("data_root")) for r in plan.values()):
        check_data(source, root)


def check_start(spec: ExperimentSpec, exp: ExperimentFolder, plan: dict[str, Run], *, executor: str | None = None,
                workers: int | None = None, detach: bool = False) -> list[str]:
    """What :func:`run_experiment` checks before it writes anything: the command line's executor and workers (by
    the spec's own checks), ``detach``'s cluster, and the inputs of the runs still to train
    (:func:`check_inputs`); returns those runs' ids, in plan order. Reads the folder, writes nothing."""
    given = {k: v for k, v in (("executor", executor), ("workers", workers)) if v is not None}
    if given:
        spec_from_dict({**spec_to_dict(spec), **given}, " ".join(f"--{k} {v}" for k, v in given.items()))
    if detach and ((executor or spec.executor) != "slurm" or spec.slurm.cluster != "slurm"):
        what = (f"executor {executor or spec.executor!r}" if (executor or spec.executor) != "slurm"
                else f"slurm.cluster {spec.slurm.cluster!r}")
        raise ValueError(f"--detach needs a Slurm cluster (--executor slurm, slurm.cluster: slurm), not {what}: "
                         "a detached run leaves no process behind to run local jobs")
    todo = [rid for rid in plan if not exp.run(rid).read_status().finished]
    check_inputs({rid: plan[rid] for rid in todo})  # a bad data path creates nothing
    return todo


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    """A spec as plain data with every default filled in, so that two spellings of one spec compare equal."""
    return spec_to_dict(spec_from_dict(data, "spec.yaml"))


def run_experiment(spec: ExperimentSpec, out_dir: str | Path, *, executor: str | None = None,
                   workers: int | None = None, poll_s: float = 2.0, force: bool = False, detach: bool = False,
                   log: Callable[[str], None] = print) -> Path:
    """Plan ``spec`` into ``out_dir`` and train every unfinished run; returns the experiment folder.

    Rerunning is safe and cheap: finished runs are skipped, interrupted ones resume from their checkpoint.
    A folder holding a different spec (other than in the keys that change no run, ``spec.RUNTIME_KEYS``: executor,
    workers, lockstep, slurm, analyses, analysis_settings and the runtime training settings such as
    train.tensorboard) is refused with the differing keys (SpecMismatchError), nothing written; with
    ``force=True`` its spec and plan are replaced, and only the runs whose configuration changed are
    trained (run ids hash configs).

    ``detach`` (Slurm only): submit every unfinished run at once, with job dependencies, and return without
    waiting (:func:`archrelax.protocol.slurm.submit_detached`); a rerun submits only what is missing.
    ``spec.lockstep``: runs that can share a process are trained together, one job per group
    (:func:`archrelax.protocol.schedule.execute`; detached: groups within the runs waiting for one job).
    """
    exp = ExperimentFolder(out_dir)
    plan = make_plan(spec)
    todo = check_start(spec, exp, plan, executor=executor, workers=workers, detach=detach)

    def write() -> None:
        exp.write_spec(spec_to_dict(spec), force=force, normalise=_normalised, runtime=RUNTIME_KEYS)
        exp.write_plan(plan)
        exp.write_summary(plan)

    # held until this returns: while it is, no other `archrelax run` may give the folder another plan
    session = exp.begin(plan, write)
    try:
        return _train_plan(spec, exp, plan, todo, executor=executor, workers=workers, poll_s=poll_s, detach=detach,
                           log=log)
    finally:
        session.release()


def _train_plan(spec: ExperimentSpec, exp: ExperimentFolder, plan: dict[str, Run], todo: list[str], *,
                executor: str | None, workers: int | None, poll_s: float, detach: bool,
                log: Callable[[str], None]) -> Path:
    if not todo:  # nothing to train: no executor (worker processes, Slurm folders) is started
        log(f"{len(plan)} runs planned: {len(plan)} already finished, 0 to run")
        return exp.root
    if spec.lockstep:
        where = lockstep_device(spec, executor)
        if where != "cuda":
            log(f"lockstep: true with a {where} executor: runs are grouped as on a GPU (same results to float "
                "tolerance); on CPU this shares data and batches but is no faster (docs/protocol.md)")
    if detach:
        log(f"{len(plan)} runs planned: {len(plan) - len(todo)} already finished; submitting the rest to Slurm")
        submit_detached(exp, plan, spec.slurm, name=spec.name, log=log, lockstep=spec.lockstep)
        return exp.root
    ex = make_executor(spec, exp, executor, workers)
    try:
        execute(exp, plan, ex, poll_s=poll_s, log=log, lockstep=spec.lockstep)
    finally:
        if hasattr(ex, "shutdown"):
            ex.shutdown()
    return exp.root
