"""What one job runs: a run, or a lockstep group, of an experiment folder, in this process or as a submitit job.

:func:`run_one` / :func:`run_group` are the units every executor runs (picklable for submitit): lock, snapshot
lookup, train, failure recorded; never raising for a failing run. :class:`RunJob` / :class:`GroupJob` are the
same as submitit *checkpointable* callables, and the Slurm side of a job lives here too: inside a Slurm job a
stop signal leaves no result (the job's state says what happens next), and Slurm's warning signal (submitit's
USR2: time limit near, preemption) requeues the job after the runs saved their state (:func:`_requeue`).
Submitting jobs is the executors' business (``pool.py``, ``slurm.py``), following them the scheduler's
(``schedule.py``).
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from ..signals import STOP_SIGNALS, Interrupted, StopOnSignals, signal_name
from ..store import ExperimentFolder, Run, RunBusyError, RunLock, failure_state
from ..store.switch import SwitchError

__all__ = ["run_one", "run_group", "RunJob", "GroupJob", "make_job"]


def _train(config: dict[str, Any], out_dir: Path, lock: RunLock) -> dict[str, Any]:
    # imported here: the trainer pulls in torch and the model zoo, not needed to plan or show status
    from ..train import TrainConfig, train

    return train(TrainConfig.from_dict(config), out_dir, lock=lock)


def _init_from(exp: ExperimentFolder, run: Run) -> str | None:
    """``config['init_from']`` of a run: its snapshot (``snapshot_for``), relative to the run's own folder (where
    the trainer reads a relative path from: ``TrainConfig.init_path``), so an experiment folder copied or moved
    whole trains from its own files. None for a run from scratch, or while the snapshot cannot be known yet.

    ``snapshot_for`` keeps the file a started run was given while it exists (a re-planned parent with the same
    training identity has a new folder but the same weights), so the trainer's resume check, which compares
    configs, still accepts it. A saved config that names the snapshot otherwise (an absolute path written by an
    older version, a folder that moved) is rewritten to the relative path of the same file here.
    """
    path = exp.snapshot_for(run)
    if path is None:
        return None
    folder = exp.run(run.id)
    new = os.path.relpath(path, folder.path)
    saved = folder.read_config()
    if saved is not None and saved.get("init_from") not in (None, new) and path.is_file():
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
    """``body(stop)`` with the stop signals recorded (a signal stops training at a safe point instead of killing
    it mid-step), and what a stop means for a job: a result naming the signal, or, inside a Slurm job, no result
    (after a requeue on Slurm's warning)."""
    warning = _slurm_warning_signal()
    # recorded from here on, so a signal arriving before training starts stops it too
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


def make_job(experiment: str, run_ids: list[str]) -> RunJob:
    """The job that trains ``run_ids``: a :class:`RunJob` for one run, a :class:`GroupJob` for a lockstep group."""
    return RunJob(experiment, run_ids[0]) if len(run_ids) == 1 else GroupJob(experiment, run_ids)


# ---- inside a Slurm job -----------------------------------------------------------------------------------------------


def _in_slurm_job() -> bool:
    """This process is a submitit job on Slurm (not a scheduler that happens to run inside an allocation)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and getattr(spec, "name", "") == "submitit.core._submit"


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


# ---- one run, one group -----------------------------------------------------------------------------------------------


def _config(exp: ExperimentFolder, run: Run) -> dict[str, Any] | None:
    """The run's config with its snapshot as ``init_from``; None after recording ``failed`` in its status when the
    parent ended without writing that snapshot, or (an auto run) when no switch time can be chosen from it. An auto
    run not resolved yet (a job submitted ahead, a detached Slurm plan) gets its time here, as the scheduler does."""
    if run.auto and run.snapshot_epoch is None:
        try:
            run = exp.resolve_auto(run)
        except SwitchError as e:
            exp.run(run.id).write_status("failed", error=str(e))
            return None
    config = {**run.config, "init_from": _init_from(exp, run)}
    if exp.run(run.id).read_status().status == "damaged":  # its checkpoint is: resume from its latest intact snapshot
        config["restart"] = "intact"
    snapshot = exp.snapshot_for(run)
    if run.depends_on is not None and not (snapshot is not None and snapshot.is_file()):
        exp.run(run.id).write_status("failed", error=_missing_snapshot(exp, run))
        return None
    return config


def _missing_snapshot(exp: ExperimentFolder, run: Run) -> str:
    """Why the snapshot ``run`` starts from is not there: its parent ended before the step that writes it, or the
    parent passed that step (so it wrote the file) and the file has gone since."""
    parent = exp.run(run.depends_on)
    st = parent.read_status()
    t = float(run.snapshot_epoch)
    spe = parent.steps_per_epoch()
    if st.status == "pending":
        passed = False
    elif st.step is not None and spe is not None:
        passed = st.step >= round(t * spe)  # the trainer's snapshot step (train.schedule.time_steps)
    else:
        passed = st.epoch >= t
    where = f"run {run.depends_on} is {st.status!r} at epoch {st.epoch:g}"
    if passed:
        return (f"snapshot {run.snapshot} is missing: {where}, past this switch time {t:g}, so it wrote the file, "
                "which has been deleted or moved since; put it back, or delete the folder "
                f"runs/{run.depends_on} so that the next `archrelax run` trains that run again (the same snapshot)")
    if st.finished:
        why = f" (stop reason {st.stop_reason})" if st.stop_reason else ""
        return (f"snapshot {run.snapshot} was not written: {where}: it ended{why} before this switch time {t:g}, "
                "so this snapshot will not exist; choose switch times within the parent's length")
    return (f"snapshot {run.snapshot} was not written: {where}: it stopped before this switch time {t:g}; the next "
            "`archrelax run` retries it, then this run")


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
