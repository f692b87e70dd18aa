"""Executors and the scheduler that feeds them.

Every executor has submitit's shape: ``submit(fn, *args) -> job`` with ``job.done()`` and ``job.result()``,
and ``batch()`` (a context manager grouping submissions; a Slurm job array under submitit).

- :class:`InProcessExecutor`: runs each job at submission, in this process, one after another.
- :class:`ProcessExecutor`: ``N`` worker processes (spawned); with GPUs, worker ``i`` sees only GPU
  ``i % n_gpus`` through CUDA_VISIBLE_DEVICES.
- :func:`archrelax.protocol.slurm.submitit_executor`: submitit.AutoExecutor with the spec's Slurm options
  (``cluster: local`` uses submitit's LocalExecutor); jobs are :class:`RunJob` (checkpointable: a job warned
  by Slurm requeues itself and resumes its run).

:func:`execute` schedules a plan on any of them: a run is submitted as soon as the snapshot it starts from
exists (snapshots are written atomically, so existence means complete), so relaxed runs can start while
their CNN is still training wherever there is more than one worker.

Lockstep (``lockstep=True``, the spec's ``lockstep: true``): ready runs of one kind whose configs agree apart from
seed, start snapshot and snapshot list (``archrelax.train.config.lockstep_key``) are submitted together as one
job, :class:`GroupJob` (:func:`run_group`), which holds every member's lock and trains them with
``archrelax.train.lockstep.train_lockstep``. So that a group is whole, a ready run is held back while a run of
its group still waits for its snapshot (its parent is still training); a group of one is an ordinary
:class:`RunJob`. A group is one job everywhere: one entry in flight, one job record written into every
member's folder, one signal (every member checkpointed and marked 'interrupted'), one requeue on Slurm.
"""
from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401  (BrokenProcessPool)
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..store import ENDED, FINISHED, ExperimentFolder, Run, RunBusyError, RunLock, Status, failure_state
from ..signals import STOP_SIGNALS, Interrupted, StopOnSignals, request_stop, signal_name

__all__ = ["InProcessExecutor", "ProcessExecutor", "run_one", "run_group", "RunJob", "GroupJob", "execute",
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


def run_one(experiment: str, run_id: str) -> dict[str, Any]:
    """Train one run of an experiment folder (the unit every executor runs; picklable for submitit).

    Never raises for a failing run: the failure is recorded in the run's status.json and returned.
    Returns ``{"id", "status", "error"}``; status ``"busy"`` when another live process holds the run.
    The lock taken here is handed to the trainer (one acquisition path; see archrelax.store.lock).
    On SIGTERM/SIGINT/SIGHUP/SIGUSR1 the trainer stops after its current step (checkpoint, status 'interrupted')
    and this returns ``{"status": "interrupted", "signal": N}``; inside a Slurm job it leaves no result
    instead (the job exits), and on Slurm's warning signal (submitit's USR2: time limit near, preemption) the
    job requeues itself first (see :class:`RunJob`).
    """
    return _stoppable(experiment, [run_id], lambda stop: _run_one(experiment, run_id, stop), group=False)


def run_group(experiment: str, run_ids: list[str]) -> list[dict[str, Any]]:
    """Train runs of an experiment folder together, in lockstep (one job: picklable for submitit, like run_one).

    Takes every member's lock (a member held by another live process comes back ``"busy"`` and is not
    trained here), skips finished ones, records a missing snapshot as run_one does, and hands the held locks
    to ``train_lockstep``; each member's failure is recorded in its own status.json and error.log, and the
    others go on. Returns one ``run_one``-style result per id, in order; ``"notes"`` (lockstep's remarks, e.g.
    a fallback to separate training) ride on the first. Signals as for :func:`run_one`: every member in
    training is checkpointed at the step reached and marked 'interrupted' (``train_lockstep``), each result
    then carries ``"signal"``; inside a Slurm job no result, and Slurm's warning requeues the whole group
    (:class:`GroupJob`).
    """
    ids = list(run_ids)
    return _stoppable(experiment, ids, lambda stop: _run_group(experiment, ids, stop), group=True)


def _stoppable(experiment: str, run_ids: list[str], body: Callable[[StopOnSignals], Any], *, group: bool) -> Any:
    """``body(stop)`` with the stop signals recorded (issue 9), and what a stop means for a job: a result
    naming the signal, or, inside a Slurm job, no result (after a requeue on Slurm's warning)."""
    warning = _slurm_warning_signal()
    # signals (issue 9): recorded from here on, so one arriving before training starts stops it too
    with StopOnSignals(STOP_SIGNALS + warning) as stop:
        try:
            return body(stop)
        except Interrupted as e:  # the trainer saved its state and wrote 'interrupted' (or never started)
            exp = ExperimentFolder(experiment)
            exp.write_summary()
            if not _in_slurm_job():
                outs = []
                for rid in run_ids:
                    st = exp.run(rid).read_status()
                    error = st.error if group and st.status == "interrupted" and st.error else str(e)
                    outs.append({"id": rid, "status": st.status, "error": error, "signal": e.signum})
                return outs if group else outs[0]
            stopped = e
    # Inside a Slurm job, what happens next is Slurm's call: a requeued job (scontrol requeue, preemption)
    # starts again and resumes the run at the saved step; any other ends. So no result: the scheduler, if
    # any, follows the job's state (pending again, or ended) instead of taking the run for finished.
    if stopped.signum in warning:
        _requeue(stopped.signum, experiment, run_ids)  # submitit's handler, back since the block ended
    raise SystemExit(stopped.exit_code)


class RunJob:
    """``run_one(experiment, run_id)`` as a submitit *checkpointable* job (the protocol of
    ``submitit.helpers.Checkpointable``, without importing submitit here).

    On Slurm's warning signal (``--signal=USR2@signal_delay_s`` before the time limit, or a preemption
    notice; submitit's ``SUBMITIT_PREEMPT_SIGNAL``) the trainer stops after its current step and saves its
    checkpoint (``run_one``); submitit's handler then calls :meth:`checkpoint`, which returns this very job:
    the run's state is in its own folder, so the requeued job simply runs ``run_one`` again, which resumes
    the run at the saved step. submitit requeues the job (``scontrol requeue``) and exits; no scheduler
    process takes part. Requeues after a time limit are capped by ``slurm.max_num_timeout``.
    """

    def __init__(self, experiment: str, run_id: str):
        self.experiment, self.run_id = str(experiment), run_id

    @property
    def run_ids(self) -> list[str]:
        return [self.run_id]

    def __call__(self) -> dict[str, Any]:
        return run_one(self.experiment, self.run_id)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"RunJob({self.experiment!r}, {self.run_id!r})"


class GroupJob(RunJob):
    """``run_group(experiment, run_ids)`` (a lockstep group) as a submitit checkpointable job: like
    :class:`RunJob`, a Slurm-warned group stops after its current step with every member checkpointed and
    'interrupted', and :meth:`checkpoint` requeues this very job, which resumes every member at its step."""

    def __init__(self, experiment: str, run_ids: list[str]):
        self.experiment, self.group = str(experiment), list(run_ids)

    @property
    def run_ids(self) -> list[str]:
        return list(self.group)

    def __call__(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return run_group(self.experiment, self.group)

    def __repr__(self) -> str:
        return f"GroupJob({self.experiment!r}, {self.group!r})"


def _slurm_warning_signal() -> tuple[int, ...]:
    """The signal Slurm warns this submitit job with (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise),
    as a 1-tuple inside a Slurm job; () elsewhere."""
    if not _in_slurm_job():
        return ()
    sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return (sig,) if sig is not None else ()


def _requeue(signum: int, experiment: str, run_ids: list[str]) -> None:
    """Hand Slurm's warning to submitit's handler, now that the runs' state is saved: it calls the job's
    ``checkpoint`` (:class:`RunJob`, :class:`GroupJob`), dumps the job, requeues it and exits. It raises
    instead when it will not requeue (too many time-outs: ``slurm.max_num_timeout``); the job then ends with
    that error, and the runs stay 'interrupted' for the next ``archrelax run``. Either way each interrupted
    run's status says which."""
    handler = signal.getsignal(signum)
    if not callable(handler):
        return
    exp = ExperimentFolder(experiment)
    stopped = [(f, st) for f in map(exp.run, run_ids) if (st := f.read_status()).status == "interrupted"]
    if not stopped:  # stopped before training started: nothing to say in the runs' status
        handler(signum, None)
        return
    from submitit import JobEnvironment

    where = {f.path: f"interrupted by {signal_name(signum)} at step {st.step} (epoch {st.epoch:g}); checkpoint "
                     "written" for f, st in stopped}
    job = JobEnvironment().job_id
    try:
        handler(signum, None)
    except SystemExit:
        for f, _ in stopped:
            f.write_status("interrupted", error=f"{where[f.path]}; Slurm job {job} requeued itself and resumes here")
        raise
    except Exception as e:
        for f, _ in stopped:
            f.write_status("interrupted", error=f"{where[f.path]}; Slurm job {job} not requeued ({e}): rerun to resume")
        raise


def _config(exp: ExperimentFolder, run: Run) -> dict[str, Any] | None:
    """The run's config with its snapshot as ``init_from``; None after recording ``failed`` in its status when the
    parent ended without writing that snapshot."""
    config = {**run.config, "init_from": _init_from(exp, run)}
    if exp.run(run.id).read_status().status == "damaged":  # its checkpoint is: resume from its latest intact snapshot
        config["restart"] = "intact"
    if run.depends_on is not None and not (config["init_from"] and Path(config["init_from"]).is_file()):
        parent = exp.run(run.depends_on).read_status()
        err = (f"snapshot {run.snapshot} was not written: run {run.depends_on} ended with status "
               f"{parent.status!r} at epoch {parent.epoch:g} before this switch time")
        exp.run(run.id).write_status("failed", error=err)
        return None
    return config


def _record_failure(folder: Any, e: Exception, tb: str) -> None:
    """A run's failure into its error.log and status.json."""
    try:
        folder.write_error_log(tb)
        folder.write_status(failure_state(e), error=f"{type(e).__name__}: {e}")  # failed, or damaged (its checkpoint)
    except OSError:  # the disk refuses even the record of the failure (full, read-only):
        raise e from None  # stop with the error that names the first write refused


def _outcome(run_id: str, folder: Any) -> dict[str, Any]:
    st = folder.read_status()
    return {"id": run_id, "status": st.status, "error": st.error}


def _run_one(experiment: str, run_id: str, stop: StopOnSignals) -> dict[str, Any]:
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
        stop.check(f"not started: {signal_name(stop.signum or 0)} arrived first")
        config = _config(exp, run)
        if config is not None:
            try:
                _train(config, folder.path, lock)
            except Exception as e:  # any failure of one run (incl. CUDA OOM) is recorded; the others go on
                _record_failure(folder, e, traceback.format_exc())
        out = _outcome(run_id, folder)
    exp.write_summary()
    return out


def _run_group(experiment: str, run_ids: list[str], stop: StopOnSignals) -> list[dict[str, Any]]:
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
        stop.check(f"not started: {signal_name(stop.signum or 0)} arrived first")
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
                    _record_failure(folder, e, tb)
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


def _worker_init(slot_queue: Any, n_gpus: int, threads: int, parent_pid: int) -> None:
    # Ctrl-C and a group-wide SIGTERM reach every process of the group, but the scheduler decides: it
    # forwards the signal to its workers, and a worker training a run stops cleanly (run_one handles the
    # signals while it runs). An idle worker dying here would break the pool, and concurrent.futures would
    # then terminate every worker, runs in flight included. The worker started with these signals blocked
    # (_signals_blocked), so none arrived while it was importing; ignored from now on when idle, except
    # _PARENT_GONE (SIGHUP, a stop signal too), whose handler, set after, tells a dead parent from a hangup.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    slot = slot_queue.get()
    if n_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % n_gpus)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread for the duration: a process started meanwhile inherits the mask
    (across exec too), so a worker cannot be killed by a Ctrl-C while it imports torch. Signals that arrive
    here meanwhile stay pending and are delivered at the end (multiprocessing's resource tracker is started
    the same way)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---- workers die with their parent (issue 9) ------------------------------------------------------------
# Without this, a worker outlives a killed scheduler: re-parented to PID 1 it blocks forever on its task
# queue (every worker holds a write end of it), and so does multiprocessing's resource tracker, which
# waits for every holder of its pipe. Linux: the kernel sends _PARENT_GONE when the parent dies
# (prctl PR_SET_PDEATHSIG, immediate even after kill -9); elsewhere a thread polls getppid() twice a second.
_PARENT_GONE = signal.SIGHUP
_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None


def _die_with_parent(parent_pid: int) -> None:
    global _parent_pid
    _parent_pid = parent_pid
    signal.signal(_PARENT_GONE, _on_parent_gone)
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(_PARENT_GONE), 0, 0, 0) == 0
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), _PARENT_GONE)

        threading.Thread(target=watch, name="archrelax-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os.kill(os.getpid(), _PARENT_GONE)


def _on_parent_gone(signum: int, frame: Any) -> None:
    if os.getppid() == _parent_pid:
        return  # a SIGHUP from elsewhere (terminal hang-up) while the scheduler lives: the scheduler decides
    # training: the trainer stops after its step (checkpoint, 'interrupted'), then _pool_job exits;
    # idle: nothing to save, exit now
    if not request_stop(signum):
        os._exit(128 + signum)


def _pool_job(fn: Callable, *args: Any) -> Any:
    """What a pool worker runs: ``fn(*args)``, then exit if the scheduler died meanwhile (no one to answer)."""
    try:
        return fn(*args)
    finally:
        if _parent_pid is not None and os.getppid() != _parent_pid:
            os._exit(128 + _PARENT_GONE)


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
        # multiprocessing's resource tracker starts with the queue's semaphore, and unblocks only the signals it
        # ignores (SIGINT, SIGTERM): started with the stop signals blocked, SIGHUP and SIGUSR1 stay blocked there,
        # so a hangup of the whole group does not kill it (a new tracker would not know the pool's semaphores)
        with _signals_blocked():
            queue = ctx.Queue()
        for i in range(self.workers):
            queue.put(i)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        return cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                      initargs=(queue, self.n_gpus, threads, os.getpid()))

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        with _signals_blocked():  # workers are started here, on demand: see _worker_init
            try:
                return self._pool.submit(_pool_job, fn, *args)
            except cf.process.BrokenProcessPool:
                # a worker died (e.g. killed for memory): its in-flight jobs were reported failed; start afresh
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._make_pool()
                return self._pool.submit(_pool_job, fn, *args)

    def interrupt(self, signum: int, jobs: list[Any]) -> None:
        """Forward a stop signal to every worker: those training stop after their step, idle ones ignore it."""
        for proc in list(self._pool._processes.values()):  # concurrent.futures keeps no public list of them
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---- scheduling ---------------------------------------------------------------------------------------


def lockstep_groups(plan: dict[str, Run], ready: list[str], waiting: Iterable[str] = ()
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


def make_job(experiment: str, run_ids: list[str]) -> RunJob:
    """The job that trains ``run_ids``: a :class:`RunJob` for one run, a :class:`GroupJob` for a lockstep group."""
    return RunJob(experiment, run_ids[0]) if len(run_ids) == 1 else GroupJob(experiment, run_ids)


def execute(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, *, poll_s: float = 2.0,
            log: Callable[[str], None] = print, lockstep: bool = False) -> dict[str, str]:
    """Train every unfinished run of ``plan`` on ``executor``; returns id -> final status.

    Runs start as soon as their snapshot exists; a run whose parent ended without writing the snapshot is
    marked failed with the reason; a run held by another live process is waited for (its lock), not
    trained twice. Failures never stop the other runs. ``lockstep``: runs that can share a process are
    submitted together, one :class:`GroupJob` per group (module docstring).

    SIGTERM, SIGINT, SIGHUP or SIGUSR1 stop the whole schedule (see :func:`_stop`): nothing more starts, the signal
    goes on to the jobs in flight, whose runs checkpoint and end 'interrupted', then
    :class:`archrelax.signals.Interrupted` is raised.
    """
    with StopOnSignals() as stop:
        return _schedule(exp, plan, executor, stop, poll_s=poll_s, log=log, lockstep=lockstep)


Key = tuple[str, ...]  # the runs one job trains (one run, or a lockstep group)


def _schedule(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, stop: StopOnSignals, *,
              poll_s: float, log: Callable[[str], None], lockstep: bool = False) -> dict[str, str]:
    result = {rid: exp.run(rid).read_status().status for rid in plan}
    todo = [rid for rid in plan if result[rid] not in FINISHED]
    skipped = len(plan) - len(todo)
    log(f"{len(plan)} runs planned: {skipped} already finished, {len(todo)} to run")
    flying: dict[Key, Any] = {}  # the runs of a job -> the job
    submitted: dict[Key, float] = {}
    told_busy: set[str] = set()
    if hasattr(executor, "adopt"):  # Slurm: runs whose job (a detached one, a dead scheduler's) is still live
        adopted: dict[str, list[str]] = {}  # a group's job is recorded in each member's folder: one entry
        jobs_by_id: dict[str, Any] = {}
        for rid, job in executor.adopt({rid: exp.run(rid).read_job() for rid in todo}).items():
            adopted.setdefault(str(job.job_id), []).append(rid)
            jobs_by_id.setdefault(str(job.job_id), job)
        for job_id, rids in adopted.items():
            for rid in rids:
                todo.remove(rid)
            flying[tuple(rids)] = jobs_by_id[job_id]
            log(f"  {', '.join(rids)}: following {'their' if len(rids) > 1 else 'its'} live job {job_id} "
                "(submitted earlier)")
    while todo or flying:
        if stop.signum is not None:
            _stop(exp, plan, executor, flying, stop.signum, poll_s=poll_s, log=log)
        for ids, job in list(flying.items()):
            if not job.done():
                continue
            del flying[ids]
            outs = _job_outcomes(exp, ids, job, submitted.get(ids, 0.0))
            for note in outs[0].get("notes", ()):
                log(f"  {note}")
            for rid, out in zip(ids, outs):
                if out.get("status") == "busy":
                    todo.append(rid)
                    continue
                result[rid] = out.get("status")
                msg = f" ({out.get('error')})" if out.get("error") else ""
                log(f"  {rid}: {result[rid]}{msg}")
        in_flight = {rid for ids in flying for rid in ids}
        ready, waiting = [], []
        for rid in list(todo):
            run = plan[rid]
            snap = exp.snapshot_for(run)
            if run.depends_on is not None and not (snap is not None and snap.is_file()):
                parent_busy = run.depends_on in in_flight or run.depends_on in todo
                parent = exp.run(run.depends_on)
                parent_status = parent.read_status().status
                if not parent_busy and parent_status == "interrupted" and parent.holder() is None:
                    # the parent's job was stopped (scancel, preemption, a signal to its worker): it resumes
                    # on the next `archrelax run`, and so does this run; waiting here would never end
                    todo.remove(rid)
                    result[rid] = exp.run(rid).read_status().status
                    log(f"  {rid}: not started: its parent {run.depends_on} was interrupted before writing "
                        f"{run.snapshot}; rerun to resume both")
                    continue
                if parent_busy or (parent_status not in ENDED):
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
                jobs = [executor.submit(make_job(str(exp.root), g)) for g in groups]
            for g, job in zip(groups, jobs):
                flying[tuple(g)] = job
                submitted[tuple(g)] = time.time()
                # which job owns the runs, for `status` and for reruns: every member of a group names it
                if hasattr(executor, "record") and (rec := executor.record(job)) is not None:
                    for rid in g:
                        exp.run(rid).write_job(rec)
            continue
        if todo or flying:
            time.sleep(poll_s)
    exp.write_summary(plan)
    return result


def _job_outcomes(exp: ExperimentFolder, ids: Key, job: Any, t0: float) -> list[dict[str, Any]]:
    """One result per run of a finished job (a run_one dict, or run_group's list). A job that died is
    recorded as each run's failure, unless its runs were saved and marked 'interrupted' since ``t0`` (a Slurm
    job stopped by a signal exits without a result): then they are taken as interrupted, at once."""
    statuses = [exp.run(rid).read_status() for rid in ids]
    stopped = any(_stopped_since(st, t0) for st in statuses)  # a Slurm job that saved its runs, then ended
    try:
        if stopped and _no_result_file(job):  # no result is coming: do not wait for one (submitit: 15 s)
            raise RuntimeError("the job ended without a result")
        return _per_run(exp, ids, job.result())
    except Exception as e:  # the job itself died (worker killed, Slurm timeout, ...)
        outs = []
        for rid, st in zip(ids, statuses):
            if stopped:  # each run as its job left it: interrupted, or finished before the signal
                outs.append({"status": st.status, "error": st.error})
            else:
                exp.run(rid).write_status("failed", error=f"job failed: {type(e).__name__}: {e}")
                outs.append({"status": "failed", "error": str(e)})
        return outs


def _per_run(exp: ExperimentFolder, ids: Key, out: Any) -> list[dict[str, Any]]:
    """A job's result (run_one's dict or run_group's list) as one dict per run of ``ids``, matched by run id: an
    adopted group job (a rerun following it) may be followed for only some of its members (the others had
    finished), and its result lists them all. A run the result does not name reads its status."""
    outs = out if isinstance(out, list) else [out]
    by_id = {o.get("id"): o for o in outs if isinstance(o, dict)}
    if len(ids) == 1 and len(outs) == 1 and None in by_id:  # a result without an id: the one run's
        return outs
    per_run = []
    for rid in ids:
        if rid not in by_id:
            st = exp.run(rid).read_status()
            by_id[rid] = {"id": rid, "status": st.status, "error": st.error}
        per_run.append(by_id[rid])
    return per_run


def _stopped_since(status: Status, t0: float) -> bool:
    """Whether a run was marked 'interrupted' (by its trainer, on a signal) after time ``t0``."""
    if status.status != "interrupted" or status.updated is None:
        return False
    try:
        return datetime.fromisoformat(status.updated).timestamp() >= t0 - 1  # 'updated' has whole seconds
    except ValueError:
        return False


def _no_result_file(job: Any) -> bool:
    """A submitit job whose result file is absent (other executors' jobs always have their result)."""
    paths = getattr(job, "paths", None)
    return paths is not None and not paths.result_pickle.exists()


def _in_slurm_job() -> bool:
    """This process is a submitit job on Slurm (not a scheduler that happens to run inside an allocation)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and getattr(spec, "name", "") == "submitit.core._submit"


def _stop(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, flying: dict[Key, Any], signum: int, *,
          poll_s: float, log: Callable[[str], None]) -> None:
    """Stop on a signal (issue 9): forward it to the jobs in flight, wait for their checkpoints, mark any run
    still 'running' without a live holder 'interrupted', write the summary, raise Interrupted."""
    name = signal_name(signum)
    pending = [ids for ids, job in flying.items() if not job.done()]
    n_runs = sum(len(ids) for ids in pending)
    log(f"{name}: stopping; {n_runs} run(s) in flight stop after their current step, nothing more starts")
    if pending and hasattr(executor, "interrupt"):
        executor.interrupt(signum, [flying[ids] for ids in pending])
    for ids, job in flying.items():
        while not job.done():
            time.sleep(min(poll_s, 0.5))
        try:
            outs = _per_run(exp, ids, job.result())
        except Exception as e:  # a job that died, or a cancelled pending Slurm job: its status says the rest
            outs = [{"status": exp.run(rid).read_status().status, "error": f"{type(e).__name__}: {e}"} for rid in ids]
        for rid, out in zip(ids, outs):
            log(f"  {rid}: {out.get('status')}")
    # a job can end before its process does (a broken pool fails every future at once): wait for the run
    # locks, which are held until the trainer has saved its state and released the run
    runs = [rid for ids in flying for rid in ids]
    deadline = time.monotonic() + 120
    while any(exp.run(rid).holder() is not None for rid in runs) and time.monotonic() < deadline:
        time.sleep(min(poll_s, 0.5))
    for rid in plan:
        folder = exp.run(rid)
        if folder.read_status().status == "running" and folder.holder() is None:
            folder.write_status("interrupted", error=f"{name} stopped the scheduler before this run could save "
                                "its state; rerun to resume from its last checkpoint")
    exp.write_summary(plan)
    n = sum(exp.run(rid).read_status().status == "interrupted" for rid in plan)
    raise Interrupted(signum, f"stopped by {name}: {n} run(s) interrupted with their state saved; "
                              f"rerun `archrelax run {exp.root}` to resume")
