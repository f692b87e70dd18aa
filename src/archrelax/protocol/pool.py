"""The local executors, with submitit's shape (``submit(fn, *args) -> job`` with ``job.done()`` and
``job.result()``, ``batch()``):

- :class:`InProcessExecutor`: runs each job at submission, in this process, one after another.
- :class:`ProcessExecutor`: ``N`` worker processes (spawned); with GPUs, worker ``i`` sees only GPU
  ``i % n_gpus`` through CUDA_VISIBLE_DEVICES. The workers die with the scheduler (:func:`_die_with_parent`)
  and ignore stop signals while idle: the scheduler decides, and forwards a stop to them (``interrupt``).
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
from typing import Any, Callable, Iterator

from ..signals import STOP_SIGNALS, request_stop

__all__ = ["InProcessExecutor", "ProcessExecutor"]


class _DoneJob:
    """The job of :class:`InProcessExecutor`: run at construction, its value or exception kept."""

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


# ---- workers die with their parent ----------------------------------------------------------------------
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
