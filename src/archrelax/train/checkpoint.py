"""Checkpoints and snapshots: plain dicts of tensors and plain data, loadable with ``weights_only=True``.

Layout (see docs/architecture.md): ``{"format", "model", "optimizer", "param_names", "config", "arch",
"epoch", "global_epoch", "step", "rng", "progress", "digest"}`` (``digest``: the content digest written with
it by ``atomic_torch_save`` and verified by every load, :mod:`archrelax.integrity`). ``param_names`` lists the model's parameter names in
the optimiser's order, so optimiser state can be re-keyed by name (``optimizer_state="carry"``).

A checkpoint is a resume point only together with its folder: :func:`resume_point` returns one that its folder
agrees with (:func:`check_record`: the config it was trained under, the metrics rows it was written after), so
that a run goes on only where its record says it stands.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from archrelax.integrity import ADVICE, load_verified
from archrelax.store import DamagedCheckpointError, DamagedFileError, RunFolder, atomic_write_bytes

from .config import RUNTIME_FIELDS, TrainConfig

__all__ = ["load_checkpoint", "model_from_checkpoint", "resume_point", "check_record", "config_changes",
           "RowsDigest", "RecordMismatchError", "RESTART", "FORMAT"]

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


RESTART = ("intact", "scratch")  # TrainConfig.restart: what to do with a run that cannot resume as its folder stands
_RESTARTS = ("rerun with `archrelax train --restart intact` ({intact}) or `--restart scratch`; `archrelax run` "
             "restarts it from {that}")


class RecordMismatchError(DamagedCheckpointError):
    """The run's metrics log no longer holds the rows its checkpoint was written after (rows lost, edited or
    replaced): the run cannot resume from that checkpoint as its folder stands. Handled as a damaged checkpoint
    (``store.failure_state``: the run is marked ``damaged``; the same restarts)."""


class RowsDigest:
    """Digest of a metrics log's rows in order, each as the trainer appends it (``json.dumps(row)``; a row read back
    dumps to the same text): ``progress["metrics_digest"]`` of every checkpoint, so a resume can tell whether the
    log still holds the very rows the checkpoint was written after."""

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        self._h = hashlib.blake2b(digest_size=16)
        for row in rows:
            self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        self._h.update(json.dumps(row).encode() + b"\n")

    def hexdigest(self) -> str:
        return "blake2b_128:" + self._h.hexdigest()


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (a's, b's)}`` for the keys in which two configs of one run differ, the runtime fields (``RUNTIME_FIELDS``:
    how a run is watched and saved, never its numbers) apart. Both are read as TrainConfigs first (defaults filled,
    spellings canonical), so an older file that lacks a newer key with its default is the same config."""
    x, y = TrainConfig.from_dict(dict(a)).to_dict(), TrainConfig.from_dict(dict(b)).to_dict()
    return {k: (x[k], y[k]) for k in x if k not in RUNTIME_FIELDS and x[k] != y[k]}


def _same_snapshot(a: str | None, b: str | None) -> bool:
    """Two ``init_from`` paths name the same snapshot: equal, or equal in their last parts (run folder, snapshots/,
    file), which is what an experiment folder that moved keeps (the protocol points the run's config.json at the
    snapshot's new place)."""
    return a == b or (a is not None and b is not None and Path(a).parts[-3:] == Path(b).parts[-3:])


def check_record(folder: RunFolder, ck: dict[str, Any], config: TrainConfig | dict[str, Any] | None = None,
                 where: Path | None = None) -> None:
    """That ``folder`` agrees with checkpoint ``ck`` (read from ``where``, default ``checkpoints/last.pt``): the run
    may go on from it only then.

    - ``config`` (the run's, as in config.json; None: not checked) must equal the config ``ck`` was trained under
      (:func:`config_changes`; ``init_from`` by :func:`_same_snapshot`): otherwise ValueError naming both files and
      the keys. No restart mends this: the folder's weights were trained under the other config.
    - metrics.jsonl must hold at least the ``progress["n_metrics"]`` rows the checkpoint was written after, and those
      very rows (``progress["metrics_digest"]``, :class:`RowsDigest`; checkpoints written before it: the count
      only); later rows are the resume's to redo. Otherwise :class:`RecordMismatchError`.
    """
    where = folder.checkpoint_path if where is None else where
    if config is not None:
        new = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
        diff = config_changes(ck["config"], new)
        if diff and "init_from" in diff and _same_snapshot(*diff["init_from"]):
            del diff["init_from"]
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise ValueError(f"{str(folder.config_path)!r} differs from the config {str(where)!r} was trained under, in "
                             f"{len(diff)} key{'s' if len(diff) > 1 else ''} (checkpoint -> config.json: {shown}); the "
                             "run cannot go on under another config: restore config.json and rerun with the "
                             "checkpoint's settings, or train the new config into another folder")
    p = ck.get("progress") or {}
    n, want = p.get("n_metrics"), p.get("metrics_digest")
    if n is None:
        return
    rows = folder.read_metrics()
    log, step = str(folder.metrics_path), ck.get("step")
    if len(rows) < n:
        detail = (f"{log!r} holds {len(rows)} row{'s' if len(rows) != 1 else ''} but {str(where)!r} (step {step}) was "
                  f"written after {n}: the log lost rows")
    elif want is not None and RowsDigest(rows[:n]).hexdigest() != want:
        detail = (f"the first {n} rows of {log!r} are not those {str(where)!r} (step {step}) was written after: "
                  "the log lost, changed or replaced rows")
    else:
        return
    advice = ("restore the log from a copy, or " +
              _RESTARTS.format(intact="from the latest snapshot whose rows the log still holds", that="that snapshot"))
    raise RecordMismatchError(folder.metrics_path, detail, advice)


def resume_point(folder: RunFolder, restart: str | None = None,
                 config: TrainConfig | dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The state a run resumes from: its ``checkpoints/last.pt``, verified, and agreeing with its folder
    (:func:`check_record` against ``config``, the run's); None when it has none (a fresh start).

    When last.pt is damaged (it cannot be read, or no longer matches its digest), or the metrics log disagrees with
    it (:class:`RecordMismatchError`), ``restart`` decides:

    - None: raise :class:`~archrelax.store.DamagedCheckpointError` (the trainer marks the run ``damaged``);
    - ``"intact"``: the latest intact snapshot that holds a training state (a snapshot is written by the same
      ``_state()`` as a checkpoint: weights, optimiser, RNG, step, metric count) and that the folder agrees with
      (its rows still in the log), copied over last.pt (the resume then truncates the metrics to its row count and
      continues bit for bit); a fresh start when there is none;
    - ``"scratch"``: last.pt removed, a fresh start (step 0, metrics emptied).

    A config that differs from the checkpoint's is a ValueError whatever ``restart`` says. One line on stderr says
    what was done.
    """
    path = folder.checkpoint_path
    if not path.exists():
        return None
    try:
        ck = load_checkpoint(path)
    except DamagedFileError as e:
        problem: DamagedCheckpointError = DamagedCheckpointError(path, e.detail, "the run cannot resume from it: " +
                                                                 _RESTARTS.format(intact="from its latest intact "
                                                                                  "snapshot", that="its latest intact "
                                                                                  "snapshot"))
    else:
        try:
            check_record(folder, ck, config)
            return ck
        except RecordMismatchError as e:
            problem = e
    if restart is None:
        raise problem
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
            if not all(cand.get(k) is not None for k in ("optimizer", "rng", "progress")):
                continue
            try:
                check_record(folder, cand, config, where=snap)
            except RecordMismatchError as e:  # its rows are not in the log either: an earlier one may be
                print(f"{folder.path}: skipping snapshot {snap.name} ({e.detail})", file=sys.stderr)
                continue
            ck, where = cand, f"resuming from its latest intact snapshot {snap.name} (step {cand['step']})"
            atomic_write_bytes(path, snap.read_bytes())  # last.pt is a valid resume point again at once
            break
    if ck is None:
        path.unlink()
        where = ("starting again from scratch" if restart == "scratch" else
                 "no intact snapshot holds a training state its folder agrees with: starting again from scratch")
    print(f"{problem.detail}; {where} (restart={restart})", file=sys.stderr)
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
