"""plan.json: the run graph of an experiment, id -> Run, in order (parents first, switch times ascending).

The order on disk is the order of summary.csv, of ``archrelax status`` and of the report.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Run", "plan_to_json", "plan_from_json", "plan_digest", "KINDS", "RELAXED_KINDS", "PAPER_KINDS",
           "LATTICE_KINDS"]

# The kinds of runs, in plan order. cnn: the CNN; efcn / elcn / wide / tiled: one relaxation of the whole model
# from a CNN snapshot (both constraints released / sharing released / locality released / sharing released in
# tiles); attn: the convs where it fits made positional self-attention (the fixed offsets released); cont: the
# CNN itself continued from its snapshot with the relaxed runs' settings (the lattice's bottom corner); soft: a
# relaxation trained with the penalty λ(t)·‖θ − Pθ‖² (the spec's `soft` section);
# hier: CNN -> eLCN -> eFCN (the 'lc>fc' grid); path: any other step of a relaxation path; fcn / lcn: baselines.
KINDS = ("cnn", "efcn", "elcn", "hier", "cont", "wide", "tiled", "attn", "soft", "path", "fcn", "lcn")
RELAXED_KINDS = ("efcn", "elcn", "hier", "wide", "tiled", "attn", "soft", "path")  # relaxed layers, from a parent snapshot
# the relaxations of the paper (eFCN, eLCN, CNN -> eLCN -> eFCN): what its claims and its figures are about
PAPER_KINDS = ("efcn", "elcn", "hier")
# the lattice's corners at a switch time: the CNN continued, locality released, sharing released (in full or in
# tiles), both released; soft runs release both softly; beyond the lattice, attention (the offsets released)
LATTICE_KINDS = ("cont", "wide", "elcn", "tiled", "efcn", "soft", "attn")


@dataclass(frozen=True)
class Run:
    """One training run of the plan.

    ``config`` is a TrainConfig as plain data with ``init_from`` left None: the executor fills it with the
    snapshot that run ``depends_on`` saved at its own epoch ``snapshot_epoch``. ``snapshot`` is that file's
    nominal path (relative to the experiment folder); the trainer saves at the nearest whole step, so the file
    actually used is ``ExperimentFolder.snapshot_for(run)``. ``t_w``/``t_w2``: switch epochs on the CNN's clock
    (None where they do not apply): ``t_w`` the first switch (from the CNN), ``t_w2`` the run's own switch when
    it starts from another relaxed run (hier, path steps). ``identity``: hash of the training trajectory, for
    children's ids. ``auto``: the switch rule (:mod:`archrelax.store.switch`) of a run whose ``t_w`` is chosen
    once its CNN is done (None for the others, and left out of plan.json then); until then ``t_w``,
    ``snapshot`` and ``snapshot_epoch`` are None, and :meth:`ExperimentFolder.read_plan` fills them from the
    choice recorded in switch.json.
    """

    id: str
    kind: str  # one of KINDS
    seed: int
    config: dict[str, Any]
    depends_on: str | None = None
    snapshot: str | None = None
    snapshot_epoch: float | None = None
    t_w: float | None = None
    t_w2: float | None = None
    identity: str = ""
    auto: str | None = None

    @property
    def switch(self) -> float | None:
        """The time this run left its parent, on the CNN's clock: ``t_w2`` when set, else ``t_w``."""
        return self.t_w2 if self.t_w2 is not None else self.t_w


def plan_to_json(plan: dict[str, Run]) -> dict[str, Any]:
    # `auto` only where set: the plans written before it existed keep their digest
    return {rid: {k: v for k, v in asdict(r).items() if k != "id" and not (k == "auto" and v is None)}
            for rid, r in plan.items()}


_FIELDS = tuple(f.name for f in fields(Run) if f.name != "id")


def plan_from_json(data: Any, where: str = "plan.json") -> dict[str, Run]:
    """Typed plan from plain data; a foreign structure raises ValueError naming ``where`` and the entry."""
    if not isinstance(data, dict):
        raise ValueError(f"{where!r} must hold a JSON object of run id -> run, found {type(data).__name__}")
    plan = {}
    for rid, entry in data.items():
        if not isinstance(entry, dict) or set(entry) - set(_FIELDS) or not {"kind", "seed", "config"} <= set(entry):
            raise ValueError(f"{where!r}: entry {rid!r} is not a run record; expected keys {list(_FIELDS)}, found "
                             f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        plan[rid] = Run(id=rid, **entry)
    return plan


def plan_digest(plan: dict[str, Run]) -> str:
    """A content hash of the plan (the analyses' cache key uses it, not plan.json's mtime)."""
    return hashlib.sha256(json.dumps(plan_to_json(plan), sort_keys=True, default=str).encode()).hexdigest()
