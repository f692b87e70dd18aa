"""Slurm, through submitit: the executor the scheduler feeds, detached submission of a whole plan, job states.

- :func:`submitit_executor` -> :class:`SubmititExecutor`: submitit's AutoExecutor with the spec's ``slurm.*``
  options, job states from ``squeue`` where accounting is off, stop signals forwarded to jobs, a job record
  (``runs/<id>/job.json``) per submitted run, and :meth:`~SubmititExecutor.adopt` to follow a live job an
  earlier submission left instead of submitting a second one.
- :func:`submit_detached`: ``archrelax run --executor slurm --detach``: every unfinished run submitted at
  once, relaxed runs held by ``afterok`` dependencies on the job of the run they start from; no process
  stays behind.
- :func:`job_states`: one ``squeue`` call (and one ``sacct`` call where accounting works) for
  ``archrelax status`` and for deciding what a rerun must submit.

Nothing here imports torch; submitit only when a job is submitted or followed.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ..signals import signal_name
from ..store import ExperimentFolder, JobRecord, Run
from .jobs import make_job
from .schedule import lockstep_groups
from .spec import SlurmOptions

__all__ = ["JobState", "LIVE_STATES", "squeue_states", "job_states", "submitit_executor", "SubmititExecutor",
           "submit_detached", "DEPENDENCY"]

# ---- job states ----------------------------------------------------------------------------------------

# states of a job that may still run (or is running): its run must not get a second job
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                         "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"})
# a job pending on a dependency that can no longer be met (its parent's job failed, and the cluster
# ignored kill-on-invalid-dep): dead, though squeue lists it
_NEVER = "DependencyNeverSatisfied"


@dataclass(frozen=True)
class JobState:
    """``state``: Slurm's word (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...), or ``GONE`` when
    neither squeue nor sacct knows the job (it ended; Slurm forgets ended jobs after MinJobAge). ``reason``:
    squeue's reason for a pending job (Dependency, BeginTime, Resources, ...), else ""."""

    job_id: str
    state: str
    reason: str = ""

    @property
    def live(self) -> bool:
        """Queued or running, and able to run."""
        return self.state in LIVE_STATES and self.reason != _NEVER

    def describe(self) -> str:
        """``slurm 123_0 PENDING (Dependency)``; ``slurm 120 ended`` for a job Slurm no longer knows."""
        state = "ended" if self.state == "GONE" else self.state
        why = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"slurm {self.job_id} {state}{why}"


def _command(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def squeue_states(job_ids: Iterable[str]) -> dict[str, JobState] | None:
    """One ``squeue`` call: the state of each job it still knows among ``job_ids`` (array tasks one by one).
    None when squeue itself fails (no Slurm client, controller unreachable): nothing can be said then."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return {}
    mains = sorted({j.split("_")[0] for j in job_ids})
    proc = _command(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(mains)])
    if proc is None or (proc.returncode != 0 and "Invalid job id" not in proc.stderr):
        return None
    states = {}
    for line in proc.stdout.splitlines():
        jid, state, reason = (line.strip().split("|", 2) + ["", ""])[:3]
        states[jid] = JobState(jid, state, reason if state == "PENDING" else "")
    return {j: states[j] for j in job_ids if j in states}


def _sacct_states(job_ids: list[str]) -> dict[str, JobState]:
    """Final states from accounting (empty where accounting is disabled)."""
    proc = _command(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)])
    if proc is None or proc.returncode != 0:
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if state:
            states[jid] = JobState(jid, state.split()[0])  # "CANCELLED by 0" -> CANCELLED
    return states


def job_states(job_ids: Iterable[str]) -> dict[str, JobState] | None:
    """The state of each job: squeue's for the jobs it knows, sacct's for the others where accounting works,
    ``GONE`` for the rest. None when squeue fails."""
    job_ids = sorted(set(job_ids))
    known = squeue_states(job_ids)
    if known is None:
        return None
    rest = [j for j in job_ids if j not in known]
    if rest:
        known.update({j: s for j, s in _sacct_states(rest).items() if j in rest})
    return {j: known.get(j, JobState(j, "GONE")) for j in job_ids}


# ---- the executor ----------------------------------------------------------------------------------------

DEPENDENCY = "afterok"  # a relaxed run's job starts once its parent's job completed (see submit_detached)


def submitit_executor(options: SlurmOptions, folder: str | os.PathLike, name: str = "archrelax", *,
                      dependency: str | None = None) -> "SubmititExecutor":
    """submitit.AutoExecutor configured from the spec's ``slurm`` section (``timeout_min`` always explicit:
    submitit's local executor would otherwise kill jobs after its short default), wrapped in
    :class:`SubmititExecutor`. ``dependency``: a Slurm job id every job submitted through it waits for
    (``afterok``; cancelled by Slurm if that job fails: ``kill-on-invalid-dep``)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster,
                               slurm_max_num_timeout=options.max_num_timeout,
                               local_max_num_timeout=options.max_num_timeout)
    extra = dict(options.additional)
    for key in ("account", "qos", "constraint"):
        if getattr(options, key) is not None:
            extra[key] = getattr(options, key)
    if dependency is not None:
        extra.update({"dependency": f"{DEPENDENCY}:{dependency}", "kill-on-invalid-dep": "yes"})
    params: dict[str, Any] = dict(
        name=name, timeout_min=options.timeout_min, gpus_per_node=options.gpus_per_node,
        cpus_per_task=options.cpus_per_task, mem_gb=options.mem_gb,
        slurm_array_parallelism=options.array_parallelism,
    )
    if options.cluster == "slurm":  # sbatch --signal=USR2@N
        params["slurm_signal_delay_s"] = options.signal_delay_s
    if options.partition is not None:
        params["slurm_partition"] = options.partition
    if extra:
        params["slurm_additional_parameters"] = extra
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    ex.update_parameters(**params)
    return SubmititExecutor(ex, dependency=dependency)


class SubmititExecutor:
    """A submitit executor (attributes pass through) with what the scheduler needs on a real cluster:

    - job states from ``squeue`` where ``sacct`` fails (clusters without accounting): submitit alone logs a
      "Bypassing sacct error" warning (three terminal lines) at every poll, and never sees a job that ended
      without a result (cancelled, killed for memory) end, so the scheduler would wait forever;
    - :meth:`interrupt`: a stop signal forwarded to the running jobs (``scancel --signal``), pending ones
      cancelled (their runs stay pending);
    - :meth:`record` and :meth:`adopt`: the job record of a submitted run (``runs/<id>/job.json``), and a live
      job of an earlier submission (a detached one, or a scheduler that died) followed instead of a new one.
    """

    def __init__(self, ex: Any, dependency: str | None = None):
        self._ex = ex
        self._batch: list[Any] | None = None
        self.dependency = dependency

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ex, name)

    def submit(self, fn: Callable, *args: Any) -> Any:
        job = self._ex.submit(fn, *args)
        if self._batch is None:
            _watch_quietly(job)
        else:
            self._batch.append(job)  # a placeholder until the batch (job array) is submitted
        return job

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self._batch = []
        try:
            with self._ex.batch():
                yield
        finally:
            jobs, self._batch = self._batch, None
        for job in jobs:
            _watch_quietly(job)

    def record(self, job: Any) -> JobRecord | None:
        """What ``runs/<id>/job.json`` keeps of a job submitted to a real cluster (None for local jobs)."""
        if self._ex.cluster != "slurm":
            return None
        dep = f"{DEPENDENCY}:{self.dependency}" if self.dependency else None
        return JobRecord.now(str(job.job_id), folder=str(self._ex.folder), dependency=dep)

    def adopt(self, records: dict[str, JobRecord | None]) -> dict[str, Any]:
        """run id -> a submitit job following its recorded job, for each run whose job is live (queued or
        running; one ``squeue`` call). A rerun of the scheduler follows these instead of submitting again."""
        records = {rid: r for rid, r in records.items()
                   if r is not None and r.cluster == "slurm" and self._ex.cluster == "slurm"}
        if not records:
            return {}
        states = squeue_states(r.job_id for r in records.values()) or {}
        from submitit.slurm.slurm import SlurmJob

        jobs = {}
        for rid, rec in records.items():
            if rec.job_id in states and states[rec.job_id].live:
                jobs[rid] = SlurmJob(folder=rec.folder or self._ex.folder, job_id=rec.job_id)
                _watch_quietly(jobs[rid])
        return jobs

    def interrupt(self, signum: int, jobs: list[Any]) -> None:
        if self._ex.cluster == "local":  # submitit's local controller forwards SIGTERM to its task
            for job in jobs:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(job.job_id), signal.SIGTERM)
            return
        states = squeue_states([job.job_id for job in jobs]) or {}
        for job in jobs:
            # `scancel --signal` on a pending job blocks, retrying, until the job starts: cancel those instead
            st = states.get(job.job_id)
            if st is not None and st.state == "PENDING":
                cmd = ["scancel", "--state=PENDING", job.job_id]
            else:
                cmd = ["scancel", f"--signal={signal_name(signum).removeprefix('SIG')}", job.job_id]
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(cmd, capture_output=True, timeout=30)

    def shutdown(self) -> None:
        pass


_WATCHER: Any = None


def _watch_quietly(job: Any) -> None:
    """Give a Slurm job the :func:`_squeue_watcher` (local jobs keep theirs)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    if isinstance(getattr(job, "watcher", None), SlurmInfoWatcher):
        job.watcher = _squeue_watcher()


def _squeue_watcher() -> Any:
    """One per process, like submitit's own: sacct while it works, else squeue (one line said once)."""
    global _WATCHER
    if _WATCHER is not None:
        return _WATCHER
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        sacct = True

        def update(self) -> None:  # submitit's update, with the fallback and without a warning per call
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            info = None
            if self.sacct:
                proc = subprocess.run(command, capture_output=True)
                if proc.returncode == 0:
                    info = self.read_info(proc.stdout)
                else:
                    self.sacct = False
                    why = proc.stderr.decode(errors="replace").strip().splitlines()
                    print(f"archrelax: sacct is not usable here ({why[0] if why else f'exit {proc.returncode}'}); "
                          "job states are read from squeue", file=sys.stderr)
            if info is None:
                info = _squeue_info(self._registered - self._finished)
            self._info_dict.update(info)
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    _WATCHER = SqueueWatcher(delay_s=30)
    return _WATCHER


def _squeue_info(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """submitit's ``{job_id: {"JobID", "State"}}`` from squeue. A job squeue no longer knows ended (Slurm
    forgets ended jobs after MinJobAge): state "GONE", which counts as finished, so the caller reads its
    result or learns it has none. Empty when squeue itself fails (keep what is known)."""
    job_ids = sorted(set(job_ids))
    states = squeue_states(job_ids)
    if states is None:
        return {}
    return {j: {"JobID": j, "State": states[j].state if j in states else "GONE"} for j in job_ids}


# ---- detached submission ---------------------------------------------------------------------------------


def submit_detached(exp: ExperimentFolder, plan: dict[str, Run], options: SlurmOptions, *, name: str = "archrelax",
                    log: Callable[[str], None] = print, lockstep: bool = False) -> dict[str, str]:
    """Submit every unfinished run of ``plan`` that has no live job, and return; id -> what was done.

    Runs that start from scratch (CNNs, baselines) and runs whose snapshot already exists go in one job
    array. A run whose snapshot is yet to be written waits for the job of the run it starts from
    (``afterok``: it starts once that job completed, i.e. once ``run_one`` returned, whether the run ended
    done, diverged or failed: the job then finds the snapshot, or records why it is missing, as the
    scheduler does). A parent job that does not complete (cancelled, killed, timed out without a requeue,
    stopped by a signal) makes its dependants' jobs invalid, and Slurm cancels them
    (``kill-on-invalid-dep=yes``); a requeued parent keeps them waiting. Runs with one parent job share one
    array.

    A rerun submits only what is missing: a run whose recorded job (``job.json``) is queued or running is
    left to it, a finished run gets none, and a run held by a live process (a local ``archrelax run``) is
    left to that process, with its dependants not submitted (said in the log). The job states come from one
    ``squeue`` call; when it fails nothing is submitted (a second job for a run could not be ruled out).

    ``lockstep``: among the runs of one array (those waiting for the same job, or for none), the runs that can
    share a process (``schedule.lockstep_groups``) go as one :class:`~archrelax.protocol.jobs.GroupJob`,
    recorded in every member's job.json; so the relaxed runs of one kind from one CNN (all its switch times)
    train together once the CNN's job completed. Runs waiting for different jobs (other seeds' CNNs) are not
    grouped: a detached group would have to wait for all of its parents.
    """
    if options.cluster != "slurm":
        raise ValueError(f"--detach needs a Slurm cluster (slurm.cluster: slurm), not {options.cluster!r}: "
                         "with a local submitit executor the jobs would die with this process")
    folders = {rid: exp.run(rid) for rid in plan}
    records = {rid: exp.read_job(rid) for rid in folders}
    states = job_states(r.job_id for r in records.values() if r is not None)
    if states is None:
        raise RuntimeError("cannot read the Slurm job states (`squeue` failed): nothing submitted, since a run "
                           "could otherwise get a second job; check `squeue` and rerun")
    outcome: dict[str, str] = {}
    job_of: dict[str, str] = {}  # run id -> its live or new job id
    todo: list[str] = []
    for rid, folder in folders.items():
        st = folder.read_status()
        rec = records[rid]
        if st.finished:
            outcome[rid] = st.status
        elif rec is not None and states[rec.job_id].live:
            job_of[rid] = rec.job_id
            outcome[rid] = f"has its job: {states[rec.job_id].describe()}"
        elif (holder := folder.holder()) is not None:
            outcome[rid] = f"not submitted: held by {holder}"
        else:
            todo.append(rid)
    # waves: a run is submitted once the job it waits for (if any) has an id
    while todo:
        groups: dict[str | None, list[str]] = {}
        for rid in todo:
            run = plan[rid]
            snap = exp.snapshot_for(run)
            if run.depends_on is None or (snap is not None and snap.is_file()):
                groups.setdefault(None, []).append(rid)
            elif run.depends_on in job_of:
                groups.setdefault(job_of[run.depends_on], []).append(rid)
            elif run.depends_on not in todo:  # finished without this snapshot, or held elsewhere
                parent = outcome.get(run.depends_on, "")
                if folders[run.depends_on].read_status().finished:
                    groups.setdefault(None, []).append(rid)  # its job records why the snapshot is missing
                else:
                    outcome[rid] = f"not submitted: its parent {run.depends_on} is {parent.removeprefix('not submitted: ')}"
        waiting = [rid for rid in todo if rid not in outcome and not any(rid in g for g in groups.values())]
        if not groups:
            for rid in waiting:
                outcome[rid] = "not submitted: its parent has no job"
            break
        for dep, rids in groups.items():
            ex = submitit_executor(options, exp.root / "slurm", name=name, dependency=dep)
            units = lockstep_groups(plan, rids)[0] if lockstep else [[rid] for rid in rids]
            with ex.batch():
                jobs = [ex.submit(make_job(str(exp.root), unit)) for unit in units]
            for unit, job in zip(units, jobs):
                rec = ex.record(job)
                notes = ([f"{DEPENDENCY}:{dep}"] if dep else []) + (
                    [f"lockstep with {len(unit) - 1} other run(s)"] if len(unit) > 1 else [])
                for rid in unit:  # a group's job is every member's job
                    exp.write_job(rid, rec)
                    job_of[rid] = rec.job_id
                    outcome[rid] = f"submitted: slurm {rec.job_id}" + (f" ({'; '.join(notes)})" if notes else "")
        todo = [rid for rid in todo if rid not in outcome]
    for rid in plan:
        log(f"  {rid}: {outcome[rid]}")
    return outcome
