"""Executors and the scheduler that feeds them: where each part lives.

Every executor has submitit's shape: ``submit(fn, *args) -> job`` with ``job.done()`` and ``job.result()``,
and ``batch()`` (a context manager grouping submissions; a Slurm job array under submitit); optionally
``interrupt(signum, jobs)`` (forward a stop), ``record(job)`` and ``adopt(records)`` (Slurm's job records).

- ``jobs.py``: what a job runs: :func:`run_one` (one run) and :func:`run_group` (a lockstep group), and
  :class:`RunJob` / :class:`GroupJob`, the same as submitit checkpointable jobs (a job warned by Slurm requeues
  itself and resumes its runs).
- ``pool.py``: the local executors, :class:`InProcessExecutor` and :class:`ProcessExecutor` (worker processes
  that die with their parent).
- ``slurm.py``: :func:`~archrelax.protocol.slurm.submitit_executor` (submitit.AutoExecutor with the spec's Slurm
  options; ``cluster: local`` uses submitit's LocalExecutor) and detached submission.
- ``schedule.py``: :func:`execute`, which schedules a plan on any of them, and :func:`lockstep_groups`.

The names are re-exported here (and jobs pickled by submitit before this split still load).
"""
from __future__ import annotations

from .jobs import GroupJob, RunJob, make_job, run_group, run_one
from .pool import InProcessExecutor, ProcessExecutor
from .schedule import execute, lockstep_groups

__all__ = ["InProcessExecutor", "ProcessExecutor", "run_one", "run_group", "RunJob", "GroupJob", "execute",
           "lockstep_groups", "make_job"]
