"""Small shared helpers: atomic file writes, device choice, epoch formatting.

Writes that must survive a crash (checkpoints, metrics, status, summaries) go through the atomic helpers:
the bytes land in a temporary file in the same folder, are fsync'ed, then renamed over the target, so a
reader sees either the old file or the new one, never half of one.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "append_line",
    "default_device",
    "resolve_device",
    "format_epoch",
    "read_jsonl",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
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
    # fsync the folder so the rename itself survives a power cut
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _named(e: OSError, path: Path) -> OSError:
    """The same error (same subclass: errno picks it) with the file it was writing named."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through an in-memory buffer and an atomic write."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync: a crash loses at most the line being written.

    Readers of append-only logs (metrics.jsonl) must ignore a truncated last line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
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


def default_device() -> torch.device:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` picks :func:`default_device`; anything else must be a valid, available device."""
    if device is None or device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def format_epoch(t: float) -> str:
    """Stable text for an epoch time, used in file names: 0, 0.5, 2, 13, 0.125."""
    t = float(t)
    if t == int(t):
        return str(int(t))
    return f"{t:.6g}"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of an append-only JSON-lines log written by :func:`append_line` ([] if it is missing).

    A crash can only tear the last line; reading stops at the first line that does not decode.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(rec, dict):
            rows.append(rec)
    return rows
