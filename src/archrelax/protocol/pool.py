"""The local executors, with submitit's shape (``submit(fn, *args) -> job`` with ``job.done()`` and
``job.result()``, ``batch()``):

- :class:`InProcessExecutor`: runs each job at submission, in this process, one after another.
- :class:`ProcessExecutor`: ``N`` worker processes (spawned); with GPUs, worker ``i`` sees only GPU
  ``i % n_gpus`` through CUDA_VISIBLE_DEVICES. Each worker runs one job at a time, and the executor knows which:
  a worker that dies (killed by the out-of-memory killer, ``kill -9``) fails its own job only, with
  :class:`WorkerDied` naming the process, the signal and the runs, and is replaced for the next job; the other
  workers and their runs go on. (``concurrent.futures.ProcessPoolExecutor`` cannot do this: one dead worker
  breaks its pool, which fails every pending job, finished ones included, and terminates the other workers.)
  The workers die with the scheduler (:func:`_die_with_parent`) and ignore stop signals while idle: the
  scheduler decides, and forwards a stop to them (``interrupt``).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

from ..signals import STOP_SIGNALS, request_stop, signal_name

__all__ = ["InProcessExecutor", "ProcessExecutor", "WorkerDied"]


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


def _worker_init(slot: int, n_gpus: int, threads: int, parent_pid: int) -> None:
    # Ctrl-C and a group-wide SIGTERM reach every process of the group, but the scheduler decides: it
    # forwards the signal to its workers, and a worker training a run stops cleanly (run_one handles the
    # signals while it runs); an idle one has nothing to save. The worker started with these signals blocked
    # (_signals_blocked), so none arrived while it was importing; ignored from now on when idle, except
    # _PARENT_GONE (SIGHUP, a stop signal too), whose handler, set after, tells a dead parent from a hangup.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if n_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % n_gpus)
    import torch

    torch.set_num_threads(threads)


def _worker_main(conn: Any, slot: int, n_gpus: int, threads: int, parent_pid: int) -> None:
    """A worker's life: set up, then run the jobs the executor sends (``(fn, args)``; None: stop) one at a time,
    answering each with ``(True, value)`` or ``(False, exception)``."""
    _worker_init(slot, n_gpus, threads, parent_pid)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the executor went away
            return
        if msg is None:
            return
        fn, args = msg
        try:
            reply = (True, _pool_job(fn, *args))
        except BaseException as e:  # noqa: BLE001 - the job's exception is its result
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # an unpicklable value or exception: say so instead
            conn.send((False, RuntimeError(f"the job's result could not be sent back: {type(e).__name__}: {e}")))


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


class WorkerDied(RuntimeError):
    """A worker process of :class:`ProcessExecutor` ended while it ran a job (killed by a signal, or exited)."""


def _death(pid: int, exitcode: int | None, fn: Any) -> WorkerDied:
    """The error of the job whose worker ended: the process, how it ended, and what it was running."""
    how = (f"was killed by {signal_name(-exitcode)}" if exitcode is not None and exitcode < 0
           else f"exited with status {exitcode}")
    if exitcode == -signal.SIGKILL:
        how += " (the system's out-of-memory killer sends it, as does kill -9)"
    runs = getattr(fn, "run_ids", None)
    what = (f"while it trained {', '.join(runs)}; rerun to resume from the last checkpoint" if runs
            else f"while it ran {fn!r}")
    return WorkerDied(f"worker process {pid} {how} {what}")


class _Worker:
    """One worker process, its end of the pipe, its GPU slot, and the job it runs (None: idle)."""

    def __init__(self, ctx: Any, slot: int, n_gpus: int, threads: int):
        self.conn, child = ctx.Pipe()
        self.slot = slot
        self.proc = ctx.Process(target=_worker_main, args=(child, slot, n_gpus, threads, os.getpid()),
                                name=f"archrelax-worker-{slot}")
        # the mask is inherited by the process (see _worker_init), and by multiprocessing's resource tracker, which
        # the first start launches and which unblocks only the signals it ignores (SIGINT, SIGTERM): SIGHUP and
        # SIGUSR1 stay blocked there, so a hangup of the whole group does not kill it
        with _signals_blocked():
            self.proc.start()
        child.close()
        self.job: tuple[cf.Future, Callable, tuple] | None = None
        self.gone = False  # its pipe broke: it is dying, and takes no job


class ProcessExecutor:
    """``workers`` spawned processes, one job each at a time; one GPU each (round-robin) when GPUs exist, else a
    share of the CPU cores. Workers start on demand and are replaced when one dies (:class:`WorkerDied`)."""

    def __init__(self, workers: int):
        import torch

        if workers < 1:
            raise ValueError(f"workers = {workers}; allowed: an integer >= 1")
        self.workers, self.n_gpus = workers, torch.cuda.device_count()
        self._ctx = mp.get_context("spawn")  # fork after torch/CUDA init is unsafe
        self._threads = max(1, (os.cpu_count() or 1) // workers)
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[cf.Future, Callable, tuple]] = collections.deque()
        self._live: list[_Worker] = []
        self._closed = False
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._manager = threading.Thread(target=self._manage, name="archrelax-pool", daemon=True)
        self._manager.start()

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("ProcessExecutor.submit after shutdown")
            self._queue.append((future, fn, args))
        self._wake()
        return future

    def interrupt(self, signum: int, jobs: list[Any]) -> None:
        """Forward a stop signal to every worker: those training stop after their step, idle ones ignore it."""
        with self._lock:
            pids = [w.proc.pid for w in self._live if w.proc.pid is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        """Cancel the jobs not started, wait for those running, stop the workers."""
        with self._lock:
            self._closed = True
            while self._queue:
                self._queue.popleft()[0].cancel()
        self._wake()
        self._manager.join()

    # ---- the manager thread: dispatch, results, deaths ----------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")

    def _manage(self) -> None:
        if hasattr(signal, "pthread_sigmask"):  # stop signals are the main thread's; workers inherit this mask
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while True:
            with self._lock:
                self._dispatch()
                live = list(self._live)
                if self._closed and not self._queue and all(w.job is None for w in live):
                    break
            waitables = [self._wake_r] + [w.conn for w in live if w.job is not None] + [w.proc.sentinel for w in live]
            ready = set(mpc.wait(waitables, timeout=1.0))
            if self._wake_r in ready:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
            with self._lock:
                for w in live:
                    if w.job is not None and (w.conn in ready or w.proc.sentinel in ready):
                        self._answer(w)
                    if w.proc.sentinel in ready:
                        self._bury(w)
        for w in live:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in live:
            w.proc.join()
            w.conn.close()

    def _dispatch(self) -> None:
        """Queued jobs to idle workers, starting workers up to ``workers`` (lock held)."""
        while self._queue:
            idle = next((w for w in self._live if w.job is None and not w.gone), None)
            if idle is None and len(self._live) < self.workers:
                slot = min(set(range(self.workers)) - {w.slot for w in self._live})
                idle = _Worker(self._ctx, slot, self.n_gpus, self._threads)
                self._live.append(idle)
            if idle is None:
                return
            future, fn, args = self._queue.popleft()
            if future.cancelled():
                continue
            try:
                idle.conn.send((fn, args))
            except (OSError, EOFError):  # it died just now: the job waits for the next worker
                self._queue.appendleft((future, fn, args))
                idle.gone = True
                return
            except Exception as e:  # the job cannot be pickled
                future.set_running_or_notify_cancel()
                future.set_exception(e)
                continue
            future.set_running_or_notify_cancel()
            idle.job = (future, fn, args)

    def _answer(self, w: _Worker) -> None:
        """The reply of ``w``'s job, if one came (lock held)."""
        future, *_ = w.job
        try:
            if not w.conn.poll():
                return
            ok, value = w.conn.recv()
        except (EOFError, OSError):  # it died mid-reply: _bury says so
            return
        w.job = None
        future.set_result(value) if ok else future.set_exception(value)

    def _bury(self, w: _Worker) -> None:
        """A worker that ended: its job (if it had one unanswered) fails naming it; the worker is replaced on demand."""
        w.proc.join()
        if w.job is not None:
            future, fn, _ = w.job
            future.set_exception(_death(w.proc.pid, w.proc.exitcode, fn))
            w.job = None
        self._live.remove(w)
        w.conn.close()
