"""The plan: an experiment spec turned into a graph of runs, each a full TrainConfig plus where it starts from.

Per seed: one CNN (saving snapshots at every switch time); from each snapshot an eFCN and/or eLCN run;
hierarchical runs (CNN -> eLCN at t_w1 -> eFCN at t_w2) start from the eLCN's snapshot taken at its own
epoch t_w2 - t_w1 (= global epoch t_w2 on the CNN's clock, see the trainer's ``global_epoch``); baselines
(``fcn``/``lcn``) train from scratch.

Run ids are ``<readable prefix>-<hash8>`` where the hash covers the run's whole configuration except its
runtime fields (TrainConfig fields marked ``runtime``: progress, checkpointing, the memory guard's override),
with ``init_from`` replaced by the *training identity* of the parent (its hashed config without the fields
marked ``identity=False``: the snapshot list) and the snapshot epoch. So changing one option changes exactly
the ids of the runs it affects; adding a switch time re-runs the CNN (it must save one more snapshot) but
keeps the ids of the relaxed runs already done; a runtime option changes no id.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

from ..store.plan import Run, plan_from_json, plan_to_json  # the plan.json record is the store's
from ..store.run import format_epoch
from ..train.config import NOT_IDENTITY, RUNTIME_FIELDS, TrainConfig
from .spec import ExperimentSpec

__all__ = ["Run", "make_plan", "plan_to_json", "plan_from_json", "KINDS"]

KINDS = ("cnn", "efcn", "elcn", "hier", "fcn", "lcn")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _make(prefix: str, kind: str, seed: int, config: dict, parent: Run | None = None, snap_epoch: float | None = None,
          t_w: float | None = None, t_w2: float | None = None) -> Run:
    keyed = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}
    snapshot = None
    if parent is not None:
        keyed["init_from"] = f"{parent.identity}@{format_epoch(snap_epoch)}"
        snapshot = f"runs/{parent.id}/snapshots/epoch_{format_epoch(snap_epoch)}.pt"
    identity = _digest({k: v for k, v in keyed.items() if k not in NOT_IDENTITY})
    return Run(id=f"{prefix}-{_digest(keyed)[:8]}", kind=kind, seed=seed, config=config,
               depends_on=parent.id if parent else None, snapshot=snapshot, snapshot_epoch=snap_epoch, t_w=t_w, t_w2=t_w2, identity=identity)


def _tw(t: float) -> str:
    return f"tw{format_epoch(t)}"


def _common(spec: ExperimentSpec, seed: int) -> dict[str, Any]:
    """TrainConfig fields every run shares, each read from where the spec holds it (the field's ``spec``
    metadata: ``train.*`` or a top-level key); the rest is set per run: relaxation, snapshot, stopping rule,
    optimiser hand-over, snapshots to save, seed."""
    base: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        place = f.metadata["spec"]
        if place in ("train", "top"):
            base[f.name] = copy.deepcopy(getattr(spec.train if place == "train" else spec, f.name))
    return {**base, "relax": None, "init_from": None, "optimizer_state": "reset", "snapshots": [], "seed": seed}


def _stop(rule) -> dict[str, Any]:
    return {"epochs": rule.epochs, "until_zero_loss": rule.until_zero_loss, "max_epochs": rule.max_epochs,
            "loss_threshold": rule.loss_threshold}


def _snap_epoch(t: float) -> float:
    # t_w2 - t_w1 in float arithmetic (0.3 - 0.1 = 0.19999999999999998): round so that the file name
    # format_epoch() gives and the epoch the trainer is asked for are the same number.
    return float(format_epoch(t))


def make_plan(spec: ExperimentSpec) -> dict[str, Run]:
    """The run graph of ``spec``: id -> Run, parents before children (CNNs, then relaxed runs, then baselines)."""
    plan: dict[str, Run] = {}
    switch = spec.switch_list()
    grid = spec.grid()
    relaxed = {**_stop(spec.relaxed), "optimizer_state": spec.relaxed.optimizer_state}
    for seed in spec.seeds:
        base = _common(spec, seed)
        lr = {"lr": spec.relaxed.lr} if spec.relaxed.lr is not None else {}
        if spec.relaxed.eval_times is not None:  # relaxed runs are the expensive ones: may evaluate less often
            lr["eval_times"] = spec.relaxed.eval_times
        cnn_snaps = sorted(set(switch) | {a for a, _ in grid} | ({0.0} if grid else set()))
        cnn = _make(f"cnn-s{seed}", "cnn", seed, {**base, **_stop(spec.cnn), "snapshots": cnn_snaps})
        plan[cnn.id] = cnn
        lc_times = sorted({t for t in switch if "lc" in spec.targets} | {a for a, _ in grid})
        fc_times = switch if "fc" in spec.targets else []
        elcn: dict[float, Run] = {}
        for t in lc_times:
            snaps = sorted({_snap_epoch(b - a) for a, b in grid if a == t})
            cfg = {**base, **relaxed, **lr, "relax": "lc", "snapshots": snaps}
            elcn[t] = _make(f"elcn-{_tw(t)}-s{seed}", "elcn", seed, cfg, cnn, t, t_w=t)
        for t in fc_times:
            cfg = {**base, **relaxed, **lr, "relax": "fc"}
            run = _make(f"efcn-{_tw(t)}-s{seed}", "efcn", seed, cfg, cnn, t, t_w=t)
            plan[run.id] = run
        for t in lc_times:
            plan[elcn[t].id] = elcn[t]
        for a, b in grid:
            cfg = {**base, **relaxed, **lr, "relax": "fc"}
            run = _make(f"hier-{_tw(a)}-{_tw(b)}-s{seed}", "hier", seed, cfg, elcn[a], _snap_epoch(b - a), t_w=a, t_w2=b)
            plan[run.id] = run
        for kind in spec.baselines:
            layers = {"layers": spec.relax_layers} if spec.relax_layers is not None else {}
            cfg = {**base, **relaxed, **lr, "model": kind, "optimizer_state": "reset", "relax_layers": None,
                   "model_kwargs": {"base": spec.model, **layers, **spec.model_kwargs}}
            run = _make(f"{kind}-s{seed}", kind, seed, cfg)
            plan[run.id] = run
    return plan
