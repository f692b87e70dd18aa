"""Stop on a signal at a safe point instead of dying mid-step, so that the state a rerun resumes from is saved.

``SIGTERM`` (``kill``, Slurm at a time limit or preemption), ``SIGINT`` (Ctrl-C), ``SIGHUP`` (the terminal
closed, the ssh session dropped) and ``SIGUSR1`` are, while a :class:`StopOnSignals` block is active,
*recorded* instead of ending the process. The code inside polls ``stop.signum`` at its safe points (the
trainer: after every step), saves its state, marks itself ``interrupted`` and raises :class:`Interrupted`; the
command line turns that into exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT, 129 for
SIGHUP), the shells' convention for "ended by signal N".

SIGHUP, two rules of its own. A process that started with SIGHUP ignored (``nohup``, or a parent that ignores
it: the disposition is inherited through exec) keeps ignoring it: whoever ran it under ``nohup`` asked for a
run that outlives the terminal, not for a stop. And a hangup leaves the terminal's descriptors failing every
write with EIO, so that a progress bar or the last message would turn the clean stop into an OSError: when
SIGHUP is recorded, standard output and error that no longer accept a write are pointed at /dev/null.

Blocks nest (the scheduler around a run, the trainer inside it, in one process): a signal is recorded in
every active block, and a block entered after a signal arrived starts with it already recorded, so the
trainer stops even when the signal came while the scheduler was between runs. Handlers are installed only
in the main thread (Python delivers signals there; elsewhere ``signal.signal`` raises), and the previous
handlers come back when the block ends, e.g. submitit's own handlers inside a Slurm job.

A second signal while stopping is recorded and ignored: the checkpoint being written is at most seconds
away, and every write is atomic anyway. A process that ends after a clean stop (the ``archrelax`` command,
see :func:`exit_after_stop`) keeps ignoring them once the outermost block has unwound, so an impatient
second Ctrl-C cannot turn the clean exit status into a traceback or a death by signal. ``kill -9`` still stops the process at once (a rerun then resumes
from the last periodic checkpoint).
"""
from __future__ import annotations

import errno
import os
import signal
import threading
from types import FrameType

__all__ = ["STOP_SIGNALS", "Interrupted", "StopOnSignals", "exit_after_stop", "request_stop", "signal_name"]

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1") if hasattr(signal, name))

_HANGUP = getattr(signal, "SIGHUP", None)
# read once, as the process starts (this module is imported before any block is entered): whether it was started
# with SIGHUP ignored (nohup), a state no block may undo. Later SIG_IGNs are not this: a clean stop of the command
# line leaves every stop signal ignored, and a worker of the pool ignores them while idle.
_HANGUP_IGNORED_AT_START = _HANGUP is not None and signal.getsignal(_HANGUP) == signal.SIG_IGN

_active: list["StopOnSignals"] = []  # innermost last
_exit_after_stop = False


def exit_after_stop(on: bool = True) -> None:
    """Declare that this process ends once a clean stop has unwound (the command line does).

    From then on, when the outermost :class:`StopOnSignals` block exits with :class:`Interrupted`, the stop
    signals stay ignored instead of getting their previous handlers back. Library callers (a notebook that
    catches ``Interrupted`` and goes on) never call this, so their Ctrl-C works again after a stop.
    """
    global _exit_after_stop
    _exit_after_stop = bool(on)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(BaseException):
    """Raised after a clean stop on a signal: state saved, status ``interrupted``.

    A ``BaseException`` like ``KeyboardInterrupt``: ``except Exception`` handlers (which record failures)
    let it through. ``exit_code`` is 128 + the signal number.
    """

    def __init__(self, signum: int, message: str = ""):
        super().__init__(signum, message)
        self.signum, self.message = int(signum), message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message or f"interrupted by {signal_name(self.signum)}"


def _record(signum: int, frame: FrameType | None) -> None:
    if signum == _HANGUP:
        _leave_hung_up_terminal()
    request_stop(signum)


def _leave_hung_up_terminal() -> None:
    """Point standard output and error at /dev/null where they no longer accept a write (a hung-up terminal:
    EIO, even for zero bytes), so that the stop's own messages cannot fail it. A live terminal, a file or a
    pipe accepts an empty write and is kept."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError as e:
            if e.errno != errno.EIO:
                continue  # closed (EBADF) or another state: nothing this can mend
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)


def request_stop(signum: int) -> bool:
    """Record ``signum`` in every active block, as if it had arrived; False when no block is active."""
    for block in _active:
        if block.signum is None:
            block.signum = signum
    return bool(_active)


class StopOnSignals:
    """Context manager: while inside, :data:`STOP_SIGNALS` set ``self.signum`` (the first one received); SIGHUP not
    in a process started with it ignored (module docstring)."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignals":
        if _active:  # a stop already asked of an enclosing block applies here too
            self.signum = _active[-1].signum
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                if s == _HANGUP and _HANGUP_IGNORED_AT_START:
                    continue  # nohup: the run outlives the terminal
                self._previous[s] = signal.signal(s, _record)
        _active.append(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        _active.remove(self)
        stopping = (_exit_after_stop and not _active and exc_type is not None
                    and issubclass(exc_type, Interrupted))
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_IGN if stopping else handler)  # type: ignore[arg-type]
        self._previous.clear()

    def check(self, message: str = "") -> None:
        """Raise :class:`Interrupted` if a stop signal arrived (call it where stopping is safe)."""
        if self.signum is not None:
            raise Interrupted(self.signum, message)
