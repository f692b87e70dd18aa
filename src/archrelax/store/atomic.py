"""Crash-safe writes: every file of an experiment folder goes through these.

A whole-file write lands in a temporary file in the same folder, is fsync'ed, given the mode an ordinary
``open()`` would have given it (0666 less the umask: ``mkstemp`` alone makes 0600, which hides results from
the group on a shared cluster), then renamed over the target; the folder is fsync'ed so the rename
survives a power cut. A reader sees the old file or the new one, never half of one.

Append-only logs (metrics.jsonl) use :func:`append_line` instead: a crash can then only tear the last line,
which the readers ignore (see :mod:`archrelax.store.metrics`); a refused write (full disk) takes back the
part of the line that did land.

A refused write (full disk, read-only folder, ...) raises the ``OSError`` with the target file named (a failed
``write()`` names none), so the command line can say in one line which path it could not write.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "append_line", "umask", "file_mode"]

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's current umask, read without changing it (Linux: /proc; elsewhere set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it; restore at once
        old = os.umask(0o022)
        os.umask(old)
    return old


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 & ~umask (0644 under umask 022, 0664 under 002)."""
    return 0o666 & ~umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, umask mode, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name the target
            raise _named(e, path) from e
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems cannot fsync a folder; the data itself is on disk
        pass


def _named(e: OSError, path: Path) -> OSError:
    """The same error (same subclass: errno picks it) with the file it was writing named."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> None:
    """JSON with 2-space indent and a final newline; ``sort_keys=False`` keeps the mapping's order."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync: a crash loses at most the line being written, and a refused write (full
    disk) leaves no partial line behind (the file is cut back to its previous size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # 0666 & ~umask, like open()
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # a nearly full disk can take part of the line, then refuse the rest
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)  # no torn line left behind (truncating needs no space)
            raise _named(e, path) from e
    finally:
        os.close(fd)
