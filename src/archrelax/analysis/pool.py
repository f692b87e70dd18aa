"""The per-run work of the analyses, in this process or in the experiment's worker processes.

``run_jobs(ctx, fn, items)`` is ``[fn(ctx, item) for item in items]``, in that order whatever finishes first.
With ``workers`` > 1 (``AnalysisSettings.workers``, else the spec's ``workers``) the items go to that many
spawned processes (``archrelax.protocol.executors.ProcessExecutor``, the trainer's pool: one GPU each when
there are GPUs, and they die with this process), each with its own :class:`~.context.Context` on the same
experiment and settings, kept for the whole ``analyse_experiment`` call (its data subsets loaded once per
process). ``fn`` must be a module-level function, items and results picklable.

Every job runs with ``threads`` = this process's torch threads // workers; a job's numbers depend only on its
inputs, its seed and that thread count (CPU kernels may sum in another order with other thread counts: last
bits), so for a given number of threads per job they are the same whatever the number of workers.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any, Callable, Sequence, TypeVar

from .context import Context
from .settings import AnalysisSettings

__all__ = ["Pool", "run_jobs", "workers_of"]

T = TypeVar("T")
R = TypeVar("R")


MAX_AUTO_WORKERS = 8  # each worker holds its own models, data subsets and Lanczos basis


def workers_of(ctx: Context) -> int:
    """``settings.workers`` when set; else the spec's ``workers`` when it is above 1; else, on a CPU device, one
    process per usable core (at most ``MAX_AUTO_WORKERS``); else 1.

    On CPU the per-run jobs are independent, and single-threaded processes side by side beat one process with
    as many threads (the models are small; measured: 40 s against 183 s for the demo's analyses on two shared
    cores, benchmarks/README.md). On a GPU the jobs share the one device in this process.
    """
    if ctx.s.workers is not None:
        return ctx.s.workers
    try:
        n = (ctx.exp.read_spec() or {}).get("workers")
    except Exception:  # noqa: BLE001 - an unreadable spec: decide without it
        n = None
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return n
    if ctx.device.type != "cpu":
        return 1
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_AUTO_WORKERS))


class Pool:
    """Worker processes for ``run_jobs``, started on first use and shut down by ``close()``."""

    def __init__(self, ctx: Context, workers: int):
        import torch

        self.ctx, self.workers = ctx, workers
        self.threads = max(1, torch.get_num_threads() // workers)
        self._executor: Any = None
        self._lock = threading.Lock()  # analyses computed side by side share one pool (experiment._analyse)

    def map(self, fn: Callable[[Context, T], R], items: Sequence[T], what: str,
            label: Callable[[T], str] = str) -> list[R]:
        if self.workers <= 1 or len(items) <= 1:
            out = []
            for i, item in enumerate(items):
                self.ctx.log(f"{what} {i + 1}/{len(items)}: {label(item)}")
                out.append(fn(self.ctx, item))
            return out
        root, settings = str(self.ctx.exp.root), self.ctx.s.to_dict()
        with self._lock:
            if self._executor is None:
                from archrelax.protocol.executors import ProcessExecutor

                self._executor = ProcessExecutor(self.workers)
            futures = {self._executor.submit(_job, fn, root, settings, self.threads, item): i
                       for i, item in enumerate(items)}
        out: list[Any] = [None] * len(items)
        for done, fut in enumerate(cf.as_completed(futures), 1):
            i = futures[fut]
            out[i] = fut.result()  # an exception in a job fails the analysis, as it would in this process
            self.ctx.log(f"{what} {done}/{len(items)} ({self.workers} workers): {label(items[i])}")
        return out

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None


def run_jobs(ctx: Context, fn: Callable[[Context, T], R], items: Sequence[T], what: str,
             label: Callable[[T], str] = str) -> list[R]:
    """``[fn(ctx, item) for item in items]``, on ``ctx.pool`` when ``analyse_experiment`` gave it one."""
    pool = ctx.pool if isinstance(ctx.pool, Pool) else Pool(ctx, 1)
    return pool.map(fn, items, what, label)


# ---- in a worker process ------------------------------------------------------------------------------------
_CONTEXTS: dict[tuple[str, str], Context] = {}


def _job(fn: Callable[[Context, Any], Any], root: str, settings: dict[str, Any], threads: int, item: Any) -> Any:
    import json

    import torch

    from archrelax.store import ExperimentFolder

    torch.set_num_threads(threads)
    key = (root, json.dumps(settings, sort_keys=True))
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = _CONTEXTS[key] = Context(ExperimentFolder(root), AnalysisSettings(**settings), progress=False)
    return fn(ctx, item)
