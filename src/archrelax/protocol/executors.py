"""Executors and the scheduler that feeds them.

Every executor has submitit's shape: ``submit(fn, *args) -> job`` with ``job.done()`` and ``job.result()``,
and ``batch()`` (a context manager grouping submissions; a Slurm job array under submitit).

- :class:`InProcessExecutor`: runs each job at submission, in this process, one after another.
- :class:`ProcessExecutor`: ``N`` worker processes (spawned); with GPUs, worker ``i`` sees only GPU
  ``i % n_gpus`` through CUDA_VISIBLE_DEVICES.
- :func:`submitit_executor`: submitit.AutoExecutor with the spec's Slurm options (``cluster: local`` uses
  submitit's LocalExecutor, which is how the tests drive this path).

:func:`execute` schedules a plan on any of them: a run is submitted as soon as the snapshot it starts from
exists (snapshots are written atomically, so existence means complete), so relaxed runs can start while
their CNN is still training wherever there is more than one worker.

Lockstep (``lockstep=True``, the spec's ``lockstep: true``): ready runs of one kind whose configs agree apart from
seed, start snapshot and snapshot list (``archrelax.train.config.lockstep_key``) are submitted together as one
job, :func:`run_group`, which holds every member's lock and trains them with
``archrelax.train.lockstep.train_lockstep``. So that a group is whole, a ready run is held back while a run of
its group still waits for its snapshot (its parent is still training); a group of one is an ordinary
:func:`run_one`.
"""
from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401  (BrokenProcessPool)
import contextlib
import multiprocessing as mp
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from ..store import FINISHED, ExperimentFolder, Run, RunBusyError, RunLock
from .spec import SlurmOptions

__all__ = ["InProcessExecutor", "ProcessExecutor", "submitit_executor", "run_one", "run_group", "execute",
           "lockstep_groups"]


def _train(config: dict[str, Any], out_dir: Path, lock: RunLock) -> dict[str, Any]:
    # imported here: the trainer pulls in torch and the model zoo, not needed to plan or show status
    from ..train import TrainConfig, train

    return train(TrainConfig.from_dict(config), out_dir, lock=lock)


def _init_from(exp: ExperimentFolder, run: Run) -> str | None:
    """Absolute snapshot path for ``config['init_from']`` (None when it cannot be known yet).

    ``snapshot_for`` keeps the file a started run was given while it exists (a re-planned parent with the
    same training identity has a new folder but the same weights), so the trainer's resume check, which
    compares configs, still accepts it. When the whole experiment folder moved, the saved config is pointed
    at the same snapshot in the new place.
    """
    path = exp.snapshot_for(run)
    new = None if path is None else str(path)
    folder = exp.run(run.id)
    saved = folder.read_config()
    if saved is not None and new and saved.get("init_from") not in (None, new) and Path(new).is_file():
        folder.write_config({**saved, "init_from": new})
    return new


def _config(exp: ExperimentFolder, run: Run) -> dict[str, Any] | None:
    """The run's config with its snapshot as ``init_from``; None after recording ``failed`` in its status when the
    parent ended without writing that snapshot."""
    config = {**run.config, "init_from": _init_from(exp, run)}
    if run.depends_on is not None and not (config["init_from"] and Path(config["init_from"]).is_file()):
        parent = exp.run(run.depends_on).read_status()
        err = (f"snapshot {run.snapshot} was not written: run {run.depends_on} ended with status "
               f"{parent.status!r} at epoch {parent.epoch:g} before this switch time")
        exp.run(run.id).write_status("failed", error=err)
        return None
    return config


def _outcome(run_id: str, folder: Any) -> dict[str, Any]:
    st = folder.read_status()
    return {"id": run_id, "status": st.status, "error": st.error}


def run_one(experiment: str, run_id: str) -> dict[str, Any]:
    """Train one run of an experiment folder (the unit every executor runs; picklable for submitit).

    Never raises for a failing run: the failure is recorded in the run's status.json and returned.
    Returns ``{"id", "status", "error"}``; status ``"busy"`` when another live process holds the run.
    The lock taken here is handed to the trainer (one acquisition path; see archrelax.store.lock).
    """
    exp = ExperimentFolder(experiment)
    run = exp.read_plan()[run_id]
    folder = exp.run(run_id)
    try:
        lock = folder.lock().acquire()
    except RunBusyError as e:
        return {"id": run_id, "status": "busy", "error": f"held by {e.holder}"}
    with lock:
        st = folder.read_status()
        if st.finished:
            return {"id": run_id, "status": st.status, "error": st.error, "skipped": True}
        config = _config(exp, run)
        if config is not None:
            try:
                _train(config, folder.path, lock)
            except Exception as e:  # any failure of one run (incl. CUDA OOM) is recorded; the others go on
                folder.write_error_log(traceback.format_exc())
                folder.write_status("failed", error=f"{type(e).__name__}: {e}")
        out = _outcome(run_id, folder)
    exp.write_summary()
    return out


def run_group(experiment: str, run_ids: list[str]) -> list[dict[str, Any]]:
    """Train runs of an experiment folder together, in lockstep (one job: picklable for submitit, like run_one).

    Takes every member's lock (a member held by another live process comes back ``"busy"`` and is not
    trained here), skips finished ones, records a missing snapshot as run_one does, and hands the held locks
    to ``train_lockstep``; each member's failure is recorded in its own status.json and error.log, and the
    others go on. Returns one ``run_one``-style result per id, in order; ``"notes"`` (lockstep's remarks, e.g.
    a fallback to separate training) ride on the first.
    """
    from ..train.lockstep import train_lockstep  # torch, only where a group trains

    exp = ExperimentFolder(experiment)
    plan = exp.read_plan()
    out: dict[str, dict[str, Any]] = {}
    locks: list[RunLock] = []
    members: list[tuple[str, Any, RunLock, dict[str, Any]]] = []
    notes: list[str] = []
    try:
        for rid in run_ids:
            folder = exp.run(rid)
            try:
                lock = folder.lock().acquire()
            except RunBusyError as e:
                out[rid] = {"id": rid, "status": "busy", "error": f"held by {e.holder}"}
                continue
            locks.append(lock)
            st = folder.read_status()
            if st.finished:
                out[rid] = {"id": rid, "status": st.status, "error": st.error, "skipped": True}
                continue
            config = _config(exp, plan[rid])
            if config is None:
                out[rid] = _outcome(rid, folder)
                continue
            members.append((rid, folder, lock, config))
        if members:
            try:
                results = train_lockstep([c for *_, c in members], [f.path for _, f, *_ in members],
                                         locks=[lk for _, _, lk, _ in members], log=notes.append)
                for (_, folder, *_), res in zip(members, results):
                    if res.get("traceback"):
                        folder.write_error_log(res["traceback"])
            except Exception as e:  # the group as a whole could not start: every member recorded, as run_one does
                tb = traceback.format_exc()
                for _, folder, *_ in members:
                    folder.write_error_log(tb)
                    folder.write_status("failed", error=f"{type(e).__name__}: {e}")
            for rid, folder, *_ in members:
                out[rid] = _outcome(rid, folder)
    finally:
        for lock in locks:
            lock.release()
    exp.write_summary()
    results = [out[rid] for rid in run_ids]
    if notes and results:
        results[0]["notes"] = notes
    return results


# ---- executors ----------------------------------------------------------------------------------------


class _DoneJob:
    def __init__(self, fn: Callable, args: tuple):
        try:
            self._value, self._exc = fn(*args), None
        except Exception as e:
            self._value, self._exc = None, e

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value


class InProcessExecutor:
    """Runs each submitted job immediately, in this process (the default: simplest to debug)."""

    def submit(self, fn: Callable, *args: Any) -> _DoneJob:
        return _DoneJob(fn, args)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        pass


def _worker_init(slot_queue: Any, n_gpus: int, threads: int) -> None:
    slot = slot_queue.get()
    if n_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % n_gpus)
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor:
    """``workers`` spawned processes; one GPU each (round-robin) when GPUs exist, else a share of the CPU cores."""

    def __init__(self, workers: int):
        import torch

        if workers < 1:
            raise ValueError(f"workers = {workers}; allowed: an integer >= 1")
        self.workers, self.n_gpus = workers, torch.cuda.device_count()
        self._pool = self._make_pool()

    def _make_pool(self) -> cf.ProcessPoolExecutor:
        ctx = mp.get_context("spawn")  # fork after torch/CUDA init is unsafe
        queue = ctx.Queue()
        for i in range(self.workers):
            queue.put(i)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        return cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                      initargs=(queue, self.n_gpus, threads))

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        try:
            return self._pool.submit(fn, *args)
        except cf.process.BrokenProcessPool:
            # a worker died (e.g. killed for memory): its in-flight jobs were reported failed; start afresh
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._make_pool()
            return self._pool.submit(fn, *args)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def submitit_executor(options: SlurmOptions, folder: str | os.PathLike, name: str = "archrelax") -> Any:
    """submitit.AutoExecutor configured from the spec's ``slurm`` section (``timeout_min`` always explicit:
    submitit's local executor would otherwise kill jobs after its short default)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster)
    extra = dict(options.additional)
    for key in ("account", "qos", "constraint"):
        if getattr(options, key) is not None:
            extra[key] = getattr(options, key)
    params: dict[str, Any] = dict(
        name=name, timeout_min=options.timeout_min, gpus_per_node=options.gpus_per_node,
        cpus_per_task=options.cpus_per_task, mem_gb=options.mem_gb,
        slurm_array_parallelism=options.array_parallelism,
    )
    if options.partition is not None:
        params["slurm_partition"] = options.partition
    if extra:
        params["slurm_additional_parameters"] = extra
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    ex.update_parameters(**params)
    return ex


# ---- scheduling ---------------------------------------------------------------------------------------


def lockstep_groups(plan: dict[str, Run], ready: list[str], waiting: list[str] = ()
                    ) -> tuple[list[list[str]], list[str]]:
    """``(groups, held)``: the ``ready`` runs grouped by (kind, ``lockstep_key`` of their config), in plan order, and
    the ready runs held back because a run of their group is ``waiting`` for its snapshot."""
    from ..train.config import lockstep_key  # plain data, no torch

    key = lambda rid: (plan[rid].kind, lockstep_key(plan[rid].config))  # noqa: E731
    incomplete = {key(rid) for rid in waiting}
    groups: dict[Any, list[str]] = {}
    held = []
    for rid in ready:
        k = key(rid)
        if k in incomplete:
            held.append(rid)
        else:
            groups.setdefault(k, []).append(rid)
    return list(groups.values()), held


def execute(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, *, poll_s: float = 2.0,
            log: Callable[[str], None] = print, lockstep: bool = False) -> dict[str, str]:
    """Train every unfinished run of ``plan`` on ``executor``; returns id -> final status.

    Runs start as soon as their snapshot exists; a run whose parent ended without writing the snapshot is
    marked failed with the reason; a run held by another live process is waited for (its lock), not
    trained twice. Failures never stop the other runs. ``lockstep``: runs that can share a process are
    submitted together (module docstring).
    """
    result = {rid: exp.run(rid).read_status().status for rid in plan}
    todo = [rid for rid in plan if result[rid] not in FINISHED]
    skipped = len(plan) - len(todo)
    log(f"{len(plan)} runs planned: {skipped} already finished, {len(todo)} to run")
    flying: list[tuple[list[str], Any]] = []  # (run ids, the job training them)
    told_busy: set[str] = set()
    while todo or flying:
        for ids, job in list(flying):
            if not job.done():
                continue
            flying.remove((ids, job))
            try:
                outs = job.result()
                outs = outs if isinstance(outs, list) else [outs]
            except Exception as e:  # the job itself died (worker killed, Slurm timeout, ...)
                outs = []
                for rid in ids:
                    exp.run(rid).write_status("failed", error=f"job failed: {type(e).__name__}: {e}")
                    outs.append({"status": "failed", "error": str(e)})
            for note in outs[0].get("notes", ()) if outs else ():
                log(f"  {note}")
            for rid, out in zip(ids, outs):
                if out.get("status") == "busy":
                    todo.append(rid)
                    continue
                result[rid] = out.get("status")
                msg = f" ({out.get('error')})" if out.get("error") else ""
                log(f"  {rid}: {result[rid]}{msg}")
        in_flight = {rid for ids, _ in flying for rid in ids}
        ready, waiting = [], []
        for rid in list(todo):
            run = plan[rid]
            snap = exp.snapshot_for(run)
            if run.depends_on is not None and not (snap is not None and snap.is_file()):
                parent_busy = run.depends_on in in_flight or run.depends_on in todo
                parent_status = exp.run(run.depends_on).read_status().status
                if parent_busy or (parent_status not in FINISHED + ("failed",)):
                    waiting.append(rid)
                    continue  # parent still training (here or elsewhere): wait for the snapshot
                # parent ended without this snapshot: run_one records why
            holder = exp.run(rid).holder()
            if holder is not None:
                if rid not in told_busy:
                    log(f"  {rid}: held by {holder}; waiting for it")
                    told_busy.add(rid)
                continue
            now = exp.run(rid).read_status()
            if now.finished:  # finished meanwhile by another process
                todo.remove(rid)
                result[rid] = now.status
                continue
            ready.append(rid)
        groups = [[rid] for rid in ready]
        if lockstep and ready:
            groups, _held = lockstep_groups(plan, ready, waiting)
        if groups:
            for g in groups:
                for rid in g:
                    todo.remove(rid)
                if len(g) > 1:
                    log(f"  lockstep: {len(g)} {plan[g[0]].kind} runs in one process: {', '.join(g)}")
            with executor.batch():
                jobs = [executor.submit(run_one, str(exp.root), g[0]) if len(g) == 1 else
                        executor.submit(run_group, str(exp.root), g) for g in groups]
            flying.extend(zip(groups, jobs))
            continue
        if todo or flying:
            time.sleep(poll_s)
    exp.write_summary(plan)
    return result
