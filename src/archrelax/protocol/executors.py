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
from typing import Any, Callable, Iterator

from ..store import FINISHED, ExperimentFolder, Run, RunBusyError, RunLock, Status
from ..signals import STOP_SIGNALS, Interrupted, StopOnSignals, request_stop, signal_name

__all__ = ["InProcessExecutor", "ProcessExecutor", "run_one", "RunJob", "execute"]


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
    On SIGTERM/SIGINT/SIGUSR1 the trainer stops after its current step (checkpoint, status 'interrupted')
    and this returns ``{"status": "interrupted", "signal": N}``; inside a Slurm job it leaves no result
    instead (the job exits), and on Slurm's warning signal (submitit's USR2: time limit near, preemption) the
    job requeues itself first (see :class:`RunJob`).
    """
    warning = _slurm_warning_signal()
    # signals (issue 9): recorded from here on, so one arriving before training starts stops it too
    with StopOnSignals(STOP_SIGNALS + warning) as stop:
        try:
            return _run_one(experiment, run_id, stop)
        except Interrupted as e:  # the trainer saved its state and wrote 'interrupted' (or never started)
            exp = ExperimentFolder(experiment)
            exp.write_summary()
            if not _in_slurm_job():
                return {"id": run_id, "status": exp.run(run_id).read_status().status, "error": str(e),
                        "signal": e.signum}
            stopped = e
    # Inside a Slurm job, what happens next is Slurm's call: a requeued job (scontrol requeue, preemption)
    # starts again and resumes the run at the saved step; any other ends. So no result: the scheduler, if
    # any, follows the job's state (pending again, or ended) instead of taking the run for finished.
    if stopped.signum in warning:
        _requeue(stopped.signum, experiment, run_id)  # submitit's handler, back since the block ended
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

    def __call__(self) -> dict[str, Any]:
        return run_one(self.experiment, self.run_id)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"RunJob({self.experiment!r}, {self.run_id!r})"


def _slurm_warning_signal() -> tuple[int, ...]:
    """The signal Slurm warns this submitit job with (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise),
    as a 1-tuple inside a Slurm job; () elsewhere."""
    if not _in_slurm_job():
        return ()
    sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return (sig,) if sig is not None else ()


def _requeue(signum: int, experiment: str, run_id: str) -> None:
    """Hand Slurm's warning to submitit's handler, now that the run's state is saved: it calls
    ``RunJob.checkpoint``, dumps the job, requeues it and exits. It raises instead when it will not requeue
    (too many time-outs: ``slurm.max_num_timeout``); the job then ends with that error, and the run stays
    'interrupted' for the next ``archrelax run``. Either way the run's status says which."""
    handler = signal.getsignal(signum)
    if not callable(handler):
        return
    folder = ExperimentFolder(experiment).run(run_id)
    st = folder.read_status()
    if st.status != "interrupted":  # stopped before training started: nothing to say in the run's status
        handler(signum, None)
        return
    from submitit import JobEnvironment

    where = f"interrupted by {signal_name(signum)} at step {st.step} (epoch {st.epoch:g}); checkpoint written"
    job = JobEnvironment().job_id
    try:
        handler(signum, None)
    except SystemExit:
        folder.write_status("interrupted", error=f"{where}; Slurm job {job} requeued itself and resumes here")
        raise
    except Exception as e:
        folder.write_status("interrupted", error=f"{where}; Slurm job {job} not requeued ({e}): rerun to resume")
        raise


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
        config = {**run.config, "init_from": _init_from(exp, run)}
        if run.depends_on is not None and not (config["init_from"] and Path(config["init_from"]).is_file()):
            parent = exp.run(run.depends_on).read_status()
            err = (f"snapshot {run.snapshot} was not written: run {run.depends_on} ended with status "
                   f"{parent.status!r} at epoch {parent.epoch:g} before this switch time")
            folder.write_status("failed", error=err)
        else:
            try:
                _train(config, folder.path, lock)
            except Exception as e:  # any failure of one run (incl. CUDA OOM) is recorded; the others go on
                try:
                    folder.write_error_log(traceback.format_exc())
                    folder.write_status("failed", error=f"{type(e).__name__}: {e}")
                except OSError:  # the disk refuses even the record of the failure (full, read-only):
                    raise e from None  # stop with the error that names the first write refused
        st = folder.read_status()
    exp.write_summary()
    return {"id": run_id, "status": st.status, "error": st.error}


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
    _die_with_parent(parent_pid)
    # Ctrl-C and a group-wide SIGTERM reach every process of the group, but the scheduler decides: it
    # forwards the signal to its workers, and a worker training a run stops cleanly (run_one handles the
    # signals while it runs). An idle worker dying here would break the pool, and concurrent.futures would
    # then terminate every worker, runs in flight included. The worker started with these signals blocked
    # (_signals_blocked), so none arrived while it was importing; ignored from now on when idle.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
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


def execute(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, *, poll_s: float = 2.0,
            log: Callable[[str], None] = print) -> dict[str, str]:
    """Train every unfinished run of ``plan`` on ``executor``; returns id -> final status.

    Runs start as soon as their snapshot exists; a run whose parent ended without writing the snapshot is
    marked failed with the reason; a run held by another live process is waited for (its lock), not
    trained twice. Failures never stop the other runs.

    SIGTERM, SIGINT or SIGUSR1 stop the whole schedule (see :func:`_stop`): nothing more starts, the signal
    goes on to the runs in flight, which checkpoint and end 'interrupted', then
    :class:`archrelax.signals.Interrupted` is raised.
    """
    with StopOnSignals() as stop:
        return _schedule(exp, plan, executor, stop, poll_s=poll_s, log=log)


def _schedule(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, stop: StopOnSignals, *,
              poll_s: float, log: Callable[[str], None]) -> dict[str, str]:
    result = {rid: exp.run(rid).read_status().status for rid in plan}
    todo = [rid for rid in plan if result[rid] not in FINISHED]
    skipped = len(plan) - len(todo)
    log(f"{len(plan)} runs planned: {skipped} already finished, {len(todo)} to run")
    flying: dict[str, Any] = {}
    submitted: dict[str, float] = {}
    told_busy: set[str] = set()
    if hasattr(executor, "adopt"):  # Slurm: runs whose job (a detached one, a dead scheduler's) is still live
        for rid, job in executor.adopt({rid: exp.run(rid).read_job() for rid in todo}).items():
            todo.remove(rid)
            flying[rid] = job
            log(f"  {rid}: following its live job {job.job_id} (submitted earlier)")
    while todo or flying:
        if stop.signum is not None:
            _stop(exp, plan, executor, flying, stop.signum, poll_s=poll_s, log=log)
        for rid, job in list(flying.items()):
            if not job.done():
                continue
            del flying[rid]
            st = exp.run(rid).read_status()
            stopped = _stopped_since(st, submitted.get(rid, 0.0))  # a Slurm job that saved its run, then ended
            try:
                if stopped and _no_result_file(job):  # no result is coming: do not wait for one (submitit: 15 s)
                    raise RuntimeError("the job ended without a result")
                out = job.result()
            except Exception as e:  # the job itself died (worker killed, Slurm timeout, ...)
                if stopped:
                    out = {"status": "interrupted", "error": st.error}
                else:
                    exp.run(rid).write_status("failed", error=f"job failed: {type(e).__name__}: {e}")
                    out = {"status": "failed", "error": str(e)}
            if out.get("status") == "busy":
                todo.append(rid)
                continue
            result[rid] = out.get("status")
            msg = f" ({out.get('error')})" if out.get("error") else ""
            log(f"  {rid}: {result[rid]}{msg}")
        ready = []
        for rid in list(todo):
            run = plan[rid]
            snap = exp.snapshot_for(run)
            if run.depends_on is not None and not (snap is not None and snap.is_file()):
                parent_busy = run.depends_on in flying or run.depends_on in todo
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
                if parent_busy or (parent_status not in FINISHED + ("failed",)):
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
        if ready:
            for rid in ready:
                todo.remove(rid)
            with executor.batch():
                jobs = [executor.submit(RunJob(str(exp.root), rid)) for rid in ready]
            flying.update(zip(ready, jobs))
            for rid, job in zip(ready, jobs):  # which job owns the run, for `status` and for reruns
                if hasattr(executor, "record") and (rec := executor.record(job)) is not None:
                    exp.run(rid).write_job(rec)
            submitted.update((rid, time.time()) for rid in ready)
            continue
        if todo or flying:
            time.sleep(poll_s)
    exp.write_summary(plan)
    return result


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


def _stop(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, flying: dict[str, Any], signum: int, *,
          poll_s: float, log: Callable[[str], None]) -> None:
    """Stop on a signal (issue 9): forward it to the runs in flight, wait for their checkpoints, mark any run
    still 'running' without a live holder 'interrupted', write the summary, raise Interrupted."""
    name = signal_name(signum)
    pending = [rid for rid, job in flying.items() if not job.done()]
    log(f"{name}: stopping; {len(pending)} run(s) in flight stop after their current step, nothing more starts")
    if pending and hasattr(executor, "interrupt"):
        executor.interrupt(signum, [flying[rid] for rid in pending])
    for rid, job in flying.items():
        while not job.done():
            time.sleep(min(poll_s, 0.5))
        try:
            out = job.result()
        except Exception as e:  # a job that died, or a cancelled pending Slurm job: its status says the rest
            out = {"status": exp.run(rid).read_status().status, "error": f"{type(e).__name__}: {e}"}
        log(f"  {rid}: {out.get('status')}")
    # a job can end before its process does (a broken pool fails every future at once): wait for the run
    # locks, which are held until the trainer has saved its state and released the run
    deadline = time.monotonic() + 120
    while any(exp.run(rid).holder() is not None for rid in flying) and time.monotonic() < deadline:
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
