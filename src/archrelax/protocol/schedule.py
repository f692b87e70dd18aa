"""The scheduler: :func:`execute` trains a plan on any executor (``pool.py``, ``slurm.py``).

A run is submitted as soon as the snapshot it starts from exists (snapshots are written atomically, so
existence means complete), so relaxed runs can start while their CNN is still training wherever there is
more than one worker. A run whose parent ended without writing its snapshot is failed with the reason (by
``run_one``); a run held by another live process is waited for (its lock), never trained twice; a run whose
parent was interrupted is left for the next ``archrelax run``. Failures never stop the other runs.

An auto run (``Run.auto``: its switch time chosen by a rule from its CNN's whole training) waits for its CNN to
end; it then gets its time from :meth:`ExperimentFolder.resolve_auto` (recorded in switch.json, so a rerun makes
the same choice) before it is classified as ready; a CNN the rule cannot decide from fails the run, naming why.

Lockstep (``lockstep=True``, the spec's ``lockstep: true``): ready runs of one kind whose configs agree apart from
seed, start snapshot and snapshot list (``archrelax.train.config.lockstep_key``) are submitted together as one
job, a :class:`~archrelax.protocol.jobs.GroupJob`. So that a group is whole, a ready run is held back while a
run of its group still waits for its snapshot (its parent is still training); a group of one is an ordinary
:class:`~archrelax.protocol.jobs.RunJob`. A group is one job everywhere: one entry in flight, one job record
written into every member's folder, one signal (every member checkpointed and marked 'interrupted'), one
requeue on Slurm.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable, Iterable

from ..signals import Interrupted, StopOnSignals, signal_name
from ..store import ENDED, FINISHED, ExperimentFolder, Run, Status
from ..store.switch import SwitchError
from .jobs import make_job

__all__ = ["execute", "lockstep_groups"]


Key = tuple[str, ...]  # the runs one job trains (one run, or a lockstep group)


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
        return _Schedule(exp, plan, executor, stop, poll_s=poll_s, log=log, lockstep=lockstep).run()


class _Schedule:
    """One pass of :func:`execute` over a plan: the runs left to train (``todo``), the jobs in flight (the runs
    of a job -> the job) and each run's outcome (``result``)."""

    def __init__(self, exp: ExperimentFolder, plan: dict[str, Run], executor: Any, stop: StopOnSignals, *,
                 poll_s: float, log: Callable[[str], None], lockstep: bool):
        self.exp, self.plan, self.executor, self.stop = exp, plan, executor, stop
        self.poll_s, self.log, self.lockstep = poll_s, log, lockstep
        self.result = {rid: exp.run(rid).read_status().status for rid in plan}
        self.todo = [rid for rid in plan if self.result[rid] not in FINISHED]
        self.flying: dict[Key, Any] = {}
        self.submitted: dict[Key, float] = {}
        self.told_busy: set[str] = set()

    def run(self) -> dict[str, str]:
        skipped = len(self.plan) - len(self.todo)
        self.log(f"{len(self.plan)} runs planned: {skipped} already finished, {len(self.todo)} to run")
        if hasattr(self.executor, "adopt"):
            self.adopt()
        while self.todo or self.flying:
            if self.stop.signum is not None:
                _stop(self.exp, self.plan, self.executor, self.flying, self.stop.signum, poll_s=self.poll_s,
                      log=self.log)
            self.collect()
            ready, waiting = self.classify()
            groups = [[rid] for rid in ready]
            if self.lockstep and ready:
                groups, _held = lockstep_groups(self.plan, ready, waiting)
            if groups:
                self.submit(groups)
                continue
            if self.todo or self.flying:
                time.sleep(self.poll_s)
        self.exp.write_summary(self.plan)
        return self.result

    def adopt(self) -> None:
        """Slurm: follow the runs whose job (a detached one, a dead scheduler's) is still live. A group's job is
        recorded in each member's folder: one entry in flight."""
        adopted: dict[str, list[str]] = {}
        jobs_by_id: dict[str, Any] = {}
        for rid, job in self.executor.adopt({rid: self.exp.read_job(rid) for rid in self.todo}).items():
            adopted.setdefault(str(job.job_id), []).append(rid)
            jobs_by_id.setdefault(str(job.job_id), job)
        for job_id, rids in adopted.items():
            for rid in rids:
                self.todo.remove(rid)
            self.flying[tuple(rids)] = jobs_by_id[job_id]
            self.log(f"  {', '.join(rids)}: following {'their' if len(rids) > 1 else 'its'} live job {job_id} "
                     "(submitted earlier)")

    def collect(self) -> None:
        """Take the outcomes of the jobs that ended; a run another process held ("busy") goes back to ``todo``."""
        for ids, job in list(self.flying.items()):
            if not job.done():
                continue
            del self.flying[ids]
            outs = _job_outcomes(self.exp, ids, job, self.submitted.get(ids, 0.0))
            for note in outs[0].get("notes", ()):
                self.log(f"  {note}")
            for rid, out in zip(ids, outs):
                if out.get("status") == "busy":
                    self.todo.append(rid)
                    continue
                self.result[rid] = out.get("status")
                msg = f" ({out.get('error')})" if out.get("error") else ""
                self.log(f"  {rid}: {self.result[rid]}{msg}")

    def classify(self) -> tuple[list[str], list[str]]:
        """``(ready, waiting)``: the runs of ``todo`` that can start now, and those waiting for their snapshot.
        Runs held by another process, finished meanwhile, or whose parent was interrupted are neither."""
        in_flight = {rid for ids in self.flying for rid in ids}
        ready, waiting = [], []
        for rid in list(self.todo):
            run = self.plan[rid]
            snap = self.exp.snapshot_for(run)
            if run.depends_on is not None and not (snap is not None and snap.is_file()):
                wait = self.parent_pending(run, in_flight)
                if wait is None:
                    continue
                if wait:
                    waiting.append(rid)
                    continue  # parent still training (here or elsewhere): wait for the snapshot
                if run.auto and run.snapshot_epoch is None and not self.resolve(run):
                    continue
                # parent ended without this snapshot: run_one records why
            holder = self.exp.run(rid).holder()
            if holder is not None:
                if rid not in self.told_busy:
                    self.log(f"  {rid}: held by {holder}; waiting for it")
                    self.told_busy.add(rid)
                continue
            now = self.exp.run(rid).read_status()
            if now.finished:  # finished meanwhile by another process
                self.todo.remove(rid)
                self.result[rid] = now.status
                continue
            ready.append(rid)
        return ready, waiting

    def resolve(self, run: Run) -> bool:
        """Choose (or read back) an auto run's switch time, now that its CNN has ended: the plan here then holds
        the resolved run. False after failing the run when no time can be chosen (the reason in its status)."""
        try:
            self.plan[run.id] = resolved = self.exp.resolve_auto(run)
        except SwitchError as e:
            self.exp.run(run.id).write_status("failed", error=str(e))
            self.todo.remove(run.id)
            self.result[run.id] = "failed"
            self.log(f"  {run.id}: failed ({e})")
            return False
        self.log(f"  {run.id}: switch time by rule {run.auto!r}: t_w = {resolved.t_w:g}")
        return True

    def parent_pending(self, run: Run, in_flight: set[str]) -> bool | None:
        """For a run whose snapshot is not there: True while its parent may still write it, False when the
        parent ended without it, None when the parent was interrupted (the run is then dropped from ``todo``:
        both resume on the next ``archrelax run``; waiting here would never end)."""
        parent_busy = run.depends_on in in_flight or run.depends_on in self.todo
        parent = self.exp.run(run.depends_on)
        parent_status = parent.read_status().status
        if not parent_busy and parent_status == "interrupted" and parent.holder() is None:
            # the parent's job was stopped (scancel, preemption, a signal to its worker)
            self.todo.remove(run.id)
            self.result[run.id] = self.exp.run(run.id).read_status().status
            self.log(f"  {run.id}: not started: its parent {run.depends_on} was interrupted before writing "
                     f"{run.snapshot or 'the whole training its switch rule reads'}; rerun to resume both")
            return None
        return parent_busy or (parent_status not in ENDED)

    def submit(self, groups: list[list[str]]) -> None:
        """One job per group, in one batch (a Slurm job array); each member's folder names the job."""
        for g in groups:
            for rid in g:
                self.todo.remove(rid)
            if len(g) > 1:
                self.log(f"  lockstep: {len(g)} {self.plan[g[0]].kind} runs in one process: {', '.join(g)}")
        with self.executor.batch():
            jobs = [self.executor.submit(make_job(str(self.exp.root), g)) for g in groups]
        for g, job in zip(groups, jobs):
            self.flying[tuple(g)] = job
            self.submitted[tuple(g)] = time.time()
            # which job owns the runs, for `status` and for reruns: every member of a group names it
            if hasattr(self.executor, "record") and (rec := self.executor.record(job)) is not None:
                for rid in g:
                    self.exp.write_job(rid, rec)


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


def _stop(exp: ExperimentFolder, plan: dict[str, Run], executor: Any, flying: dict[Key, Any], signum: int, *,
          poll_s: float, log: Callable[[str], None]) -> None:
    """Stop on a signal: forward it to the jobs in flight, wait for their checkpoints, mark any run
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
