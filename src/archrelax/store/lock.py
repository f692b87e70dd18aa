"""The lock of a run folder: an exclusive ``fcntl.flock`` on ``<run>/.lock``, held by the process training it.

flock locks belong to an open file description and die with their process, so a killed run never leaves a
stale lock; two ``open()`` of the file conflict even inside one process, which is why there is one
acquisition path: the trainer takes the lock unless its caller (the protocol's ``run_one``) already holds it
and hands it over. While held, the file says who holds it (``{"pid", "host", "since"}``), so a refusal can
name the holder. Needs a file system with working flock across hosts for cluster use (NFSv4, Lustre, GPFS).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import RunBusyError

__all__ = ["RunLock", "lock_holder"]

_TRIES = 5


class RunLock:
    """Non-blocking exclusive lock on ``path``. ``acquire()`` raises :class:`RunBusyError` naming the holder.

    Use as a context manager (``with RunLock(p):``) or with ``acquire()``/``release()``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # umask applies, as to every file
        try:
            for attempt in range(_TRIES):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # a status probe (lock_holder) holds it for microseconds; a trainer holds it for good
                    if attempt == _TRIES - 1:
                        raise RunBusyError(self.path.parent, lock_holder(self.path) or "another process") from None
                    time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as e:  # a full disk: give the lock back at once (not when a traceback is collected)
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it now
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is released with its object, as with its process
        try:
            self.release()
        except Exception:
            pass


def lock_holder(path: str | os.PathLike) -> str | None:
    """``"pid N on host H (since T)"`` of the live process holding the lock at ``path``; None when it is free.

    Probes with a second open file description (so it also sees a lock held by this very process).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe(text: str) -> str:
    text = text.strip()
    try:
        who = json.loads(text)
        return f"pid {who['pid']} on host {who['host']} (since {who['since']})"
    except (ValueError, KeyError, TypeError):
        return text or "another process (it has not written its name yet)"
