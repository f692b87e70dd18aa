"""Checkpoints and snapshots: plain dicts of tensors and plain data, loadable with ``weights_only=True``.

Layout (see docs/architecture.md): ``{"format", "model", "optimizer", "param_names", "config", "arch",
"epoch", "global_epoch", "step", "rng", "progress", "digest"}`` (``digest``: the content digest written with
it by ``atomic_torch_save`` and verified by every load, :mod:`archrelax.integrity`). ``param_names`` lists the model's parameter names in
the optimiser's order, so optimiser state can be re-keyed by name (``optimizer_state="carry"``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archrelax.integrity import ADVICE, load_verified
from archrelax.store import DamagedCheckpointError, DamagedFileError, RunFolder, atomic_write_bytes

__all__ = ["load_checkpoint", "model_from_checkpoint", "resume_point", "RESTART", "FORMAT"]

FORMAT = "archrelax.checkpoint/1"
_REQUIRED = ("model", "config", "arch", "epoch", "step")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    advice: str = ADVICE) -> dict[str, Any]:
    """Load an archrelax checkpoint or snapshot safely (``weights_only=True``; no code is executed) and verify
    its content digest (:mod:`archrelax.integrity`).

    Raises FileNotFoundError for a missing file, :class:`~archrelax.store.DamagedFileError` (a ValueError,
    ending with ``advice``) for a truncated, corrupt or damaged one, and ValueError for a foreign one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist" +
                                ("" if path.parent.is_dir() else f" (no folder {str(path.parent)!r})"))
    ckpt = load_verified(path, what="checkpoint", advice=advice, map_location=map_location)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{str(path)!r} is not an archrelax checkpoint: expected a dict with keys {list(_REQUIRED)}, "
                         f"found {found}")
    return ckpt


RESTART = ("intact", "scratch")  # TrainConfig.restart: what to do with a run whose checkpoint is damaged


def resume_point(folder: RunFolder, restart: str | None = None) -> dict[str, Any] | None:
    """The state a run resumes from: its ``checkpoints/last.pt``, verified; None when it has none (a fresh start).

    When last.pt is damaged (it cannot be read, or no longer matches its digest), ``restart`` decides:

    - None: raise :class:`~archrelax.store.DamagedCheckpointError` (the trainer marks the run ``damaged``);
    - ``"intact"``: the latest intact snapshot that holds a training state (a snapshot is written by the same
      ``_state()`` as a checkpoint: weights, optimiser, RNG, step, metric count), copied over last.pt (the
      resume then truncates the metrics to its row count and continues bit for bit); a fresh start when there
      is none;
    - ``"scratch"``: last.pt removed, a fresh start (step 0, metrics emptied).

    One line on stderr says what was done.
    """
    path = folder.checkpoint_path
    if not path.exists():
        return None
    try:
        return load_checkpoint(path)
    except DamagedFileError as e:
        damage = e.detail
    if restart is None:
        raise DamagedCheckpointError(path, damage, "the run cannot resume from it: rerun with `archrelax train "
                                     "--restart intact` (from its latest intact snapshot) or `--restart scratch`; "
                                     "`archrelax run` restarts it from its latest intact snapshot")
    if restart not in RESTART:
        raise ValueError(f"restart={restart!r}; valid: {list(RESTART)} or None")
    ck = None
    if restart == "intact":
        for epoch, snap in reversed(folder.snapshots()):
            try:
                cand = load_checkpoint(snap)
            except ValueError as e:  # damaged (a DamagedFileError) or foreign: not a resume point
                print(f"{folder.path}: skipping snapshot {snap.name} ({e})", file=sys.stderr)
                continue
            if all(cand.get(k) is not None for k in ("optimizer", "rng", "progress")):
                ck, where = cand, f"resuming from its latest intact snapshot {snap.name} (step {cand['step']})"
                atomic_write_bytes(path, snap.read_bytes())  # last.pt is a valid resume point again at once
                break
    if ck is None:
        path.unlink()
        where = ("starting again from scratch" if restart == "scratch" else
                 "no intact snapshot holds a training state: starting again from scratch")
    print(f"{damage}; {where} (restart={restart})", file=sys.stderr)
    return ck


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
