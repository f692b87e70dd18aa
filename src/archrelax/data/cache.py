"""Decoded data sets cached on disk as uint8 tensors, keyed by the source's identity.

One file per source: ``<cache_dir>/<name>-<hash>.pt`` holding ``{"key", "classes", "train_images",
"train_labels", "test_images", "test_labels"}``; it loads with ``weights_only=True`` and memory-mapped, so a
second load of CIFAR-10 costs milliseconds. The key records what the tensors were decoded from (path,
size, mtime, ...); a changed source gets a new file, and a stale, corrupt or foreign file is decoded again.
Every load verifies the content digest written with the file (:mod:`archrelax.integrity`): a damaged cache
(a flipped label byte) is decoded again from the source, with a one-line warning naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from archrelax.integrity import DIGEST_KEY, load_verified
from archrelax.store import DamagedFileError
from archrelax.utils import atomic_torch_save

_FORMAT = 1  # bump when the decoding changes, so old caches are not reused


def default_cache_dir() -> Path:
    """``$ARCHRELAX_CACHE`` or ``~/.cache/archrelax``."""
    env = os.environ.get("ARCHRELAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archrelax"


def cache_path(cache_dir: Path, name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return cache_dir / f"{safe}-{digest}.pt"


def cached(name: str, key: dict[str, Any], decode: Callable[[], dict[str, Any]], cache_dir: Path | None) -> dict[str, Any]:
    """The cached record for ``key``, decoding (and writing the cache atomically) on a miss."""
    key = {**key, "format": _FORMAT}
    path = cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), name, key)
    if path.exists():
        try:
            # mmap: only the pages a subset touches are read (the digest check reads every page once)
            rec = load_verified(path, what="data cache", advice="decoding it again from the source", mmap=True)
            if isinstance(rec, dict) and rec.get("key") == key:
                if DIGEST_KEY not in rec:  # written before digests, verified by its zip CRCs: sealed once
                    _write(rec, path)
                return rec
            warnings.warn(f"data cache {path} belongs to another source; decoding again", stacklevel=3)
        except DamagedFileError as e:  # truncated, corrupt or damaged: the source is still there
            warnings.warn(str(e), stacklevel=3)
        except Exception as e:  # a foreign file
            warnings.warn(f"data cache {path} is unreadable ({e}); decoding again", stacklevel=3)
    rec = {"key": key, **decode()}
    _write(rec, path)
    return rec


def _write(rec: dict[str, Any], path: Path) -> None:
    try:
        atomic_torch_save(rec, path)  # sealed with its content digest
    except OSError as e:
        warnings.warn(f"could not write data cache {path} ({e}); continuing without it", stacklevel=4)
