"""Small shared helpers: device choice, ``torch.save`` through an atomic write (sealed with a content digest).

The atomic file helpers, ``format_epoch`` and the JSON-lines reader live in :mod:`archrelax.store` (the
owner of the on-disk format) and are re-exported here for the modules that write files of their own.
"""
from __future__ import annotations

import io
import os
from typing import Any

import torch

from archrelax.store.atomic import append_line, atomic_write_bytes, atomic_write_json, atomic_write_text
from archrelax.store.metrics import read_metrics as read_jsonl
from archrelax.store.run import format_epoch

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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through an in-memory buffer and an atomic write; a dict is saved sealed with its content
    digest (:func:`archrelax.integrity.seal`), which :func:`archrelax.integrity.load_verified` checks."""
    from archrelax.integrity import seal

    buf = io.BytesIO()
    torch.save(seal(obj) if isinstance(obj, dict) else obj, buf)
    atomic_write_bytes(path, buf.getvalue())


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
