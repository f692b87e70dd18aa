"""The plan: an experiment spec turned into a graph of runs, each a full TrainConfig plus where it starts from.

Per seed: one CNN (saving snapshots at every switch time); from each snapshot a run per target (eFCN, eLCN,
wide, tiled, the CNN continued) and per soft (λ, schedule); hierarchical runs (CNN -> eLCN at t_w1 -> eFCN
at t_w2) start from the eLCN's snapshot taken at its own epoch t_w2 - t_w1 (= global epoch t_w2 on the CNN's
clock, see the trainer's ``global_epoch``), and so does every later step of a relaxation path from the
previous step's run; baselines (``fcn``/``lcn``) train from scratch. An automatic switch time
(``switch_times: [auto]``) adds one run per target and soft setting whose time a rule picks once the CNN is done
(``Run.auto``; t_w and its snapshot are null here, recorded in switch.json later: docs/protocol.md); its CNN then
saves a snapshot at every evaluation (``snapshot_every_eval``). Relaxed runs form a tree of switches
rooted at the CNN: a run reached in several ways (a target, the grid, a path) is one run, which saves every
snapshot its children need, so the grid written as paths is the same plan.

Run ids are ``<readable prefix>-<hash8>`` where the hash covers the run's whole configuration except its
runtime fields (TrainConfig fields marked ``runtime``: progress, checkpointing, the memory guard's override),
with ``init_from`` replaced by the *training identity* of the parent (its hashed config without the fields
marked ``identity=False``: the snapshot list) and the snapshot epoch (an auto run: the rule's name). So changing one option changes exactly
the ids of the runs it affects; adding a switch time re-runs the CNN (it must save one more snapshot) but
keeps the ids of the relaxed runs already done; a runtime option changes no id; settings added after ids
existed (TrainConfig fields marked ``omit_default``: the soft release) enter the hash only when set.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..store.plan import KINDS, RELAXED_KINDS, Run, plan_from_json, plan_to_json  # the plan.json record is the store's
from ..store.run import format_epoch
from ..train.config import NOT_IDENTITY, OMIT_DEFAULT, RUNTIME_FIELDS, TrainConfig
from ..train.soft import SoftSchedule
from .attention import attention_layers, attention_target, conv_costs, is_attention
from .paths import parse_target_spec
from ..store.switch import DEFAULT_RULE
from .spec import ExperimentSpec

__all__ = ["Run", "make_plan", "plan_to_json", "plan_from_json", "KINDS", "RELAXED_KINDS"]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _make(prefix: str, kind: str, seed: int, config: dict, parent: Run | None = None, snap_epoch: float | None = None,
          t_w: float | None = None, t_w2: float | None = None, auto: str | None = None) -> Run:
    # settings added after run ids existed enter the hash only when set, so older plans keep their ids
    keyed = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS
             and not (k in OMIT_DEFAULT and v == OMIT_DEFAULT[k])}
    snapshot = None
    if parent is not None and auto is not None:  # the time is chosen later: the rule is what the id can know
        keyed["init_from"] = f"{parent.identity}@auto:{auto}"
    elif parent is not None:
        keyed["init_from"] = f"{parent.identity}@{format_epoch(snap_epoch)}"
        snapshot = f"runs/{parent.id}/snapshots/epoch_{format_epoch(snap_epoch)}.pt"
    identity = _digest({k: v for k, v in keyed.items() if k not in NOT_IDENTITY})
    return Run(id=f"{prefix}-{_digest(keyed)[:8]}", kind=kind, seed=seed, config=config,
               depends_on=parent.id if parent else None, snapshot=snapshot, snapshot_epoch=snap_epoch, t_w=t_w,
               t_w2=t_w2, identity=identity, auto=auto)


def _tw(t: float, auto: str | None = None) -> str:
    return f"tw{format_epoch(t)}" if auto is None else "twauto" if auto == DEFAULT_RULE else f"twauto-{auto}"


def _common(spec: ExperimentSpec, seed: int) -> dict[str, Any]:
    """TrainConfig fields every run shares, each read from where the spec holds it (the field's ``spec``
    metadata: ``train.*`` or a top-level key); the rest is set per run: relaxation, snapshot, stopping rule,
    optimiser hand-over, soft release, snapshots to save, seed."""
    base: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        place = f.metadata["spec"]
        if place in ("train", "top"):
            base[f.name] = copy.deepcopy(getattr(spec.train if place == "train" else spec, f.name))
    return {**base, "relax": None, "init_from": None, "optimizer_state": "reset", "snapshots": [],
            "snapshot_every_eval": False, "seed": seed, **SOFT_OFF}


SOFT_OFF = {"soft_lambda": 0.0, "soft_schedule": "const", "soft_toward": "cnn"}


def _stop(rule) -> dict[str, Any]:
    """The TrainConfig fields of a ``cnn.*`` or ``relaxed.*`` section: its stopping rule and its measures along
    training."""
    return {"epochs": rule.epochs, "until_zero_loss": rule.until_zero_loss, "max_epochs": rule.max_epochs,
            "loss_threshold": rule.loss_threshold, "sharpness_products": rule.sharpness_products,
            "sharpness_samples": rule.sharpness_samples}


def _snap_epoch(t: float) -> float:
    # t_w2 - t_w1 in float arithmetic (0.3 - 0.1 = 0.19999999999999998): round so that the file name
    # format_epoch() gives and the epoch the trainer is asked for are the same number.
    return float(format_epoch(t))


def _tag(text: str) -> str:
    """A target or schedule string as a run-id part: 'wide:5x3' -> 'wide-5x3', 'exp:0.5' -> 'exp0.5',
    'attn:alpha=32,dk=0' -> 'attn-alpha32-dk0'."""
    if text.startswith("attn"):
        return text.replace(":", "-").replace(",", "-").replace("=", "")
    return text.replace(":", "-") if text.startswith(("wide", "tiled")) else text.replace(":", "")


@dataclass
class _Node:
    """A relaxed run before it has an id: ``to`` (None: the CNN continued) on ``layers`` (None: the spec's
    relax_layers) at ``at`` (CNN's clock), from ``parent`` (None: the CNN); ``soft``: (λ, schedule, toward) of
    a run of the spec's soft section; ``snaps``: the epochs of its own clock that its children start from;
    ``auto``: the switch rule of a run from the CNN whose time is chosen during the CNN's training (``at`` is then
    inf, so it sorts after the fixed times)."""

    parent: "_Node | None"
    at: float
    to: str | None
    layers: tuple[str, ...] | None = None
    soft: tuple[float, str, str] | None = None
    name: str | None = None  # the first path that made it (its id prefix), for kind "path"
    attn_default: bool = False  # an attention run on the convs the protocol picks for attention (its layers)
    auto: str | None = None
    snaps: set[float] = field(default_factory=set)
    run: Run | None = None

    @property
    def chain(self) -> list["_Node"]:
        return ([] if self.parent is None else self.parent.chain) + [self]

    def kind_and_prefix(self) -> tuple[str, str]:
        chain = self.chain
        times = "-".join(_tw(n.at, n.auto) for n in chain)
        whole = all(n.layers is None or n.attn_default for n in chain)
        if self.soft is not None:
            lam, sched, toward = self.soft
            parts = ["soft"] + ([_tag(self.to)] if self.to != "fc" else []) + ([toward] if toward != "cnn" else [])
            return "soft", "-".join(parts + [_tag(sched), f"lam{lam:g}", times])
        if len(chain) == 1 and whole:
            if self.to is None:
                return "cont", f"cont-{times}"
            kind = {"fc": "efcn", "lc": "elcn"}.get(self.to)
            if kind is not None:
                return kind, f"{kind}-{times}"
            return self.to.split(":")[0], f"{_tag(self.to)}-{times}"
        if len(chain) == 2 and whole and (chain[0].to, self.to) == ("lc", "fc"):
            return "hier", f"hier-{times}"
        return "path", f"path-{self.name}-{times}"


def _nodes(spec: ExperimentSpec, attn: _AttentionLayers) -> list[_Node]:
    """Every relaxed run of one seed as a node of the tree of switches rooted at the CNN; a run reached in
    several ways (a target, the grid, a path) is one node, saving the snapshots all its children need. An
    attention run relaxes the convs ``attn`` picks (the spec's ``attention`` section), at its α."""
    table: dict[tuple, _Node] = {}

    def node(parent: _Node | None, at: float, to: str | None, layers=None, soft=None, name=None, auto=None) -> _Node:
        default = False
        if is_attention(to):  # the spec's spelling: attention.alpha (and anneal) where it names none
            to = attention_target(to, spec.attention.alpha, spec.attention.anneal_to, spec.attention.anneal_steps)
            default = layers is None
            layers = attn.layers(layers, name)
        key = (None if parent is None else id(parent), at, to, layers, soft, auto)
        if key not in table:
            table[key] = _Node(parent, at, to, layers, soft, name, default, auto=auto)
        if parent is not None:
            parent.snaps.add(_snap_epoch(at - parent.at))
        return table[key]

    # (at, rule): the fixed switch times, then one automatic time per rule (its epoch chosen once the CNN is done)
    switch = [(t, None) for t in spec.switch_list()] + [(math.inf, r) for r in spec.auto_rules()]
    for target in spec.targets:
        if target == "lc>fc":
            continue
        for t, auto in switch:
            node(None, t, None if target == "cnn" else target if is_attention(target) else parse_target_spec(target),
                 auto=auto)
    for a, b in spec.grid():
        node(node(None, a, "lc"), b, "fc")
    for lam, sched in spec.soft.grid():
        for t, auto in switch:
            node(None, t, parse_target_spec(spec.soft.target), soft=(lam, sched, spec.soft.toward), auto=auto)
    for p, raw in zip(spec.path_list(), spec.paths):  # a valid spec: one parsed path per entry
        parent = None
        for st, given in zip(p.steps, raw["steps"]):
            to = given["to"] if is_attention(st.to) else st.to  # as written: does it name its α?
            parent = node(parent, st.at, to, st.layers, name=p.name)
    return list(table.values())


class _AttentionLayers:
    """The convs of the attention runs (:func:`~archrelax.protocol.attention.attention_layers`), computed once per
    plan and only when it has attention runs (the model is built on the experiment's data for it)."""

    def __init__(self, spec: ExperimentSpec):
        self.spec, self.costs, self.memo = spec, None, {}

    def layers(self, layers: tuple[str, ...] | None, path: str | None) -> tuple[str, ...]:
        if layers not in self.memo:
            if self.costs is None:
                self.costs = conv_costs(self.spec)
            where = "'attention.layers'" if layers is None else f"'paths' {path!r} step layers"
            self.memo[layers] = attention_layers(self.spec, layers, where=where, costs=self.costs)
        return self.memo[layers]


def make_plan(spec: ExperimentSpec) -> dict[str, Run]:
    """The run graph of ``spec``: id -> Run, parents before children: the CNN, its relaxed runs by kind
    (efcn, elcn, hier, then cont, wide, tiled, attn, soft, path), then the baselines; per seed. Attention runs
    relax the convs :func:`~archrelax.protocol.attention.attention_layers` picks (which builds the model on the
    experiment's data: a plan with attention runs loads it once)."""
    plan: dict[str, Run] = {}
    attn = _AttentionLayers(spec)
    relaxed = {**_stop(spec.relaxed), "optimizer_state": spec.relaxed.optimizer_state,
               "soft_lambda": spec.relaxed.soft_lambda, "soft_schedule": SoftSchedule.parse(spec.relaxed.soft_schedule).spec,
               "soft_toward": spec.relaxed.soft_toward}  # canonical spelling: 'exp:1e-1' and 'exp:0.1' are one run
    paths = spec.path_list()
    for seed in spec.seeds:
        base = _common(spec, seed)
        lr = {"lr": spec.relaxed.lr} if spec.relaxed.lr is not None else {}
        if spec.relaxed.eval_times is not None:  # relaxed runs are the expensive ones: may evaluate less often
            lr["eval_times"] = spec.relaxed.eval_times
        nodes = _nodes(spec, attn)
        roots = {n.at for n in nodes if n.parent is None and n.auto is None}
        # the CNN saves a snapshot at every switch time (and, with a grid or paths, at 0); with automatic switch
        # times at every evaluation too, so that whichever the rule picks has one
        cnn_snaps = sorted(set(spec.switch_list()) | roots | ({0.0} if spec.grid() or paths else set()))
        cnn = _make(f"cnn-s{seed}", "cnn", seed, {**base, **_stop(spec.cnn), "snapshots": cnn_snaps,
                                                  "snapshot_every_eval": bool(spec.auto_rules())})
        plan[cnn.id] = cnn
        order = {k: i for i, k in enumerate(KINDS)}
        labelled = [(n, *n.kind_and_prefix()) for n in nodes]
        labelled.sort(key=lambda x: (order[x[1]], [n.at for n in x[0].chain]))  # stable: paths keep their order
        for n, kind, prefix in labelled:
            cfg = {**base, **relaxed, **lr, "relax": n.to}
            if n.snaps:
                cfg["snapshots"] = sorted(n.snaps)
            if n.layers is not None:
                cfg["relax_layers"] = list(n.layers)
            if n.to is None:  # the CNN continued: nothing for a penalty to act on
                cfg.update(SOFT_OFF)
            if n.soft is not None:
                cfg.update(soft_lambda=n.soft[0], soft_schedule=n.soft[1], soft_toward=n.soft[2])
            parent = cnn if n.parent is None else n.parent.run
            if n.auto is not None:  # t_w and the snapshot: chosen by the rule once the CNN is done (switch.json)
                n.run = _make(f"{prefix}-s{seed}", kind, seed, cfg, parent, auto=n.auto)
                plan[n.run.id] = n.run
                continue
            snap = n.at if n.parent is None else _snap_epoch(n.at - n.parent.at)
            t_w2 = n.at if n.parent is not None else None
            n.run = _make(f"{prefix}-s{seed}", kind, seed, cfg, parent, snap, t_w=n.chain[0].at, t_w2=t_w2)
            plan[n.run.id] = n.run
        for kind in spec.baselines:
            layers = {"layers": spec.relax_layers} if spec.relax_layers is not None else {}
            cfg = {**base, **relaxed, **lr, "model": kind, "optimizer_state": "reset", "relax_layers": None,
                   "model_kwargs": {"base": spec.model, **layers, **spec.model_kwargs}, **SOFT_OFF}
            run = _make(f"{kind}-s{seed}", kind, seed, cfg)
            plan[run.id] = run
    return plan
