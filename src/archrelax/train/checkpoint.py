"""Checkpoints and snapshots: plain dicts of tensors and plain data, loadable with ``weights_only=True``.

Layout (see docs/architecture.md): ``{"format", "model", "optimizer", "param_names", "config", "arch",
"epoch", "global_epoch", "step", "rng", "progress"}``. ``param_names`` lists the model's parameter names in
the optimiser's order, so optimiser state can be re-keyed by name (``optimizer_state="carry"``).
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_checkpoint", "model_from_checkpoint", "FORMAT"]

FORMAT = "archrelax.checkpoint/1"
_REQUIRED = ("model", "config", "arch", "epoch", "step")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an archrelax checkpoint or snapshot safely (``weights_only=True``; no code is executed).

    Raises FileNotFoundError for a missing file and ValueError for a truncated, corrupt or foreign one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist" +
                                ("" if path.parent.is_dir() else f" (no folder {str(path.parent)!r})"))
    size = path.stat().st_size
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types here (RuntimeError, EOFError, KeyError, UnpicklingError...)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            # a readable pickle of arbitrary objects: written by something else, and never executed here
            raise ValueError(f"{str(path)!r} is not an archrelax checkpoint: it holds objects that cannot be "
                             f"loaded safely with weights_only=True ({_unsupported(str(e))})") from e
        raise ValueError(f"checkpoint {str(path)!r} ({size} bytes) is truncated or corrupt and cannot be read: "
                         f"{type(e).__name__}: {detail}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{str(path)!r} is not an archrelax checkpoint: expected a dict with keys {list(_REQUIRED)}, "
                         f"found {found}")
    return ckpt


def _unsupported(message: str) -> str:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return f"e.g. {m.group(1)}" if m else "see torch.load(weights_only=True)"


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike) -> nn.Module:
    """Rebuild the model of a checkpoint (architecture from its ``arch`` record) with its weights loaded."""
    from archrelax.models import build_architecture

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_architecture(ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    return model


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
