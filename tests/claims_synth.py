"""Synthetic experiment folders for the claims: every number is chosen, so each claim can be built to hold, to
fail or to lack its data. Written through archrelax.store (plan, status, metrics, typed analysis results),
so the folder is exactly what `archrelax run` + `archrelax analyse` write, without training anything.

``Synth()`` is an experiment in which all thirteen claims hold with 3 seeds: a CNN trained 8 epochs with
snapshots at t_w = 0, 1, 2, 4; eFCN and eLCN from each; FCN and LCN baselines; one hierarchical run
(t_w1 = 1, t_w2 = 2); every analysis the claims read. Change its fields (or its runs) before ``write()``; with
"attn" in ``kinds`` also attention runs from each snapshot (claims 14 and 15).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from archrelax.store import ExperimentFolder, Run, atomic_write_text
from archrelax.store import results as R

SPE = 10  # steps per epoch of every synthetic run
STEP = 0.5  # epochs between evaluations


def noise(seed: int, salt: float = 0.0) -> float:
    """A small, seed-dependent offset (fractions), so per-seed differences have a non-zero spread."""
    return 0.002 * ((seed * 7 + int(salt * 13)) % 5 - 2)


@dataclass
class SynthRun:
    id: str
    kind: str
    seed: int
    start: float  # global epoch of the first evaluation (the switch for relaxed runs)
    length: float
    loss0: float  # train loss at the first evaluation
    loss1: float  # ... at the last
    acc0: float  # test accuracy at the first evaluation
    acc1: float  # ... at the last
    delta1: float | None = None  # final off-local ratio (relaxed runs and baselines)
    t_w: float | None = None
    t_w2: float | None = None
    parent: str | None = None
    snapshot_epoch: float | None = None  # on the parent's own clock
    snapshots: tuple[float, ...] = ()
    status: str = "done"
    auto: str | None = None  # the switch rule that chose t_w (an auto run)

    def times(self) -> np.ndarray:
        return self.start + np.arange(0, self.length + 1e-9, STEP)

    def rows(self) -> list[dict]:
        out = []
        for t in self.times():
            tau = t - self.start
            p = (1 - math.exp(-tau)) / (1 - math.exp(-self.length)) if self.length else 1.0
            row = {"epoch": float(tau), "global_epoch": float(t), "step": int(round(tau * SPE)),
                   "train_loss": self.loss0 * (self.loss1 / self.loss0) ** p,
                   "train_acc": min(1.0, self.acc0 + 0.1 + (self.acc1 - self.acc0) * p),
                   "test_loss": 0.5, "test_acc": self.acc0 + (self.acc1 - self.acc0) * p, "lr": 0.05,
                   "wall_time": float(tau), "peak_mem_bytes": 1}
            if self.delta1 is not None:
                row["offlocal_ratio"] = self.delta1 * p
                row["cnn_distance"] = 2 * self.delta1 * p
            out.append(row)
        return out

    def at(self, t: float) -> dict:
        return next(r for r in self.rows() if abs(r["global_epoch"] - t) < 1e-9)


@dataclass
class Synth:
    seeds: tuple[int, ...] = (0, 1, 2)
    tws: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    kinds: tuple[str, ...] = ("efcn", "elcn", "fcn", "lcn", "hier")
    cnn_epochs: float = 8.0
    relaxed_epochs: float = 4.0
    gain: dict[float, float] = field(default_factory=lambda: {0.0: -0.05, 1.0: 0.02, 2.0: 0.03, 4.0: 0.01})
    fcn_below_efcn0: float = 0.03  # FCN final test accuracy = eFCN(0)'s minus this
    elcn_minus_efcn: float = -0.002
    hier_above_single: float = 0.01
    attn_gain: dict[float, float] | None = None  # attention runs (kind "attn" in kinds): gain per t_w (default: gain's)
    fall_after_switch: float | None = None  # set: the last t_w's eFCNs end this far below their switch accuracy
    delta: dict[float, float] | None = None  # final δ per t_w (default 0.4 / (1 + t_w))
    lam_along: dict[float, float] = field(default_factory=lambda: {0.0: 5.0, 1.0: 20.0, 2.0: 40.0, 4.0: 15.0})
    lam_end_cnn: float = 30.0
    lam_end_efcn: float = 10.0
    offlocal_acc: float = 0.10
    both_minus_local: float = 0.02
    local_change: float = 0.04  # t_w > 0 (t_w = 0 gets 0.9: the random initialisation moved)
    interp_bump: float = 0.3  # bump of the linear path's test accuracy, 4α(1−α)·this (beats the slope of t_w=0)
    memory: tuple[int, int] = (1_000_000, 10_000_000)  # eLCN, eFCN parameter bytes
    analyses: tuple[str, ...] = ("memory", "sharpness", "ablation", "interpolation")
    cnn_evals_at_snapshots: bool = True
    # set: the CNN's rows carry λ_max along training (TrainConfig.sharpness_products), this function of the epoch
    # plus 0.5·seed, converged with residual 1e-4
    lam_rows: Callable[[float], float] | None = None
    # set: an automatic-t_w run per seed (claim 16), at the t_w of the largest lam_along (rule peak-sharpness),
    # ending this far above the eFCN at the best fixed t_w; an eFCN, or an eLCN where kinds have no efcn
    auto_above_best: float | None = None
    runs: dict[str, SynthRun] = field(default_factory=dict)

    # ---- the runs --------------------------------------------------------------------------------------------
    def build(self) -> "Synth":
        """Fill ``runs`` from the fields (call again after changing them; edit ``runs`` after that)."""
        self.runs = {}
        for s in self.seeds:
            cnn = self._add(SynthRun(f"cnn-s{s}", "cnn", s, 0.0, self.cnn_epochs, 2.3, 0.01, 0.1,
                                     0.9 + noise(s), snapshots=self.tws))
            cnn_final = cnn.acc1
            finals = {}
            for t in self.tws:
                sw = cnn.at(t)
                acc = cnn_final + self.gain[t] + noise(s, t)
                if self.fall_after_switch is not None and t == self.tws[-1]:
                    acc = sw["test_acc"] - self.fall_after_switch - noise(s, t)
                finals[t] = acc
                delta = (self.delta or {}).get(t, 0.4 / (1 + t))
                if "efcn" in self.kinds:
                    self._add(SynthRun(f"efcn-tw{t:g}-s{s}", "efcn", s, t, self.relaxed_epochs, sw["train_loss"],
                                       0.001, sw["test_acc"], acc, delta, t_w=t, parent=cnn.id, snapshot_epoch=t))
                if "attn" in self.kinds:
                    self._add(SynthRun(f"attn-tw{t:g}-s{s}", "attn", s, t, self.relaxed_epochs, sw["train_loss"],
                                       0.002, sw["test_acc"], cnn_final + (self.attn_gain or self.gain)[t]
                                       + noise(s, t + 2), 0.0, t_w=t, parent=cnn.id, snapshot_epoch=t))
                if "elcn" in self.kinds:
                    self._add(SynthRun(f"elcn-tw{t:g}-s{s}", "elcn", s, t, self.relaxed_epochs, sw["train_loss"],
                                       0.001, sw["test_acc"], acc + self.elcn_minus_efcn + noise(s, t + 1) / 2,
                                       0.0, t_w=t, parent=cnn.id, snapshot_epoch=t, snapshots=(1.0,)))
            if self.auto_above_best is not None:
                t = max(self.lam_along, key=self.lam_along.get)
                sw, kind = cnn.at(t), "efcn" if "efcn" in self.kinds else "elcn"
                best = max(finals.values()) if kind == "efcn" else finals[t]
                self._add(SynthRun(f"{kind}-twauto-s{s}", kind, s, t, self.relaxed_epochs, sw["train_loss"], 0.001,
                                   sw["test_acc"], best + self.auto_above_best + noise(s, 7) / 2, 0.1, t_w=t,
                                   parent=cnn.id, snapshot_epoch=t, auto="peak-sharpness"))
            if "fcn" in self.kinds:
                self._add(SynthRun(f"fcn-s{s}", "fcn", s, 0.0, self.relaxed_epochs, 2.3, 0.001, 0.1,
                                   finals[self.tws[0]] - self.fcn_below_efcn0 + noise(s, 9), 0.5))
            if "lcn" in self.kinds:
                self._add(SynthRun(f"lcn-s{s}", "lcn", s, 0.0, self.relaxed_epochs, 2.3, 0.001, 0.1, 0.8, 0.0))
            if "hier" in self.kinds and "elcn" in self.kinds and 1.0 in self.tws:
                parent = self.runs[f"elcn-tw1-s{s}"]
                sw = parent.at(2.0)
                best = max(max(finals.values()), max(r.acc1 for r in self.runs.values()
                                                     if r.kind == "elcn" and r.seed == s))
                self._add(SynthRun(f"hier-tw1-2-s{s}", "hier", s, 2.0, self.relaxed_epochs, sw["train_loss"], 0.001,
                                   sw["test_acc"], best + self.hier_above_single + noise(s, 5), 0.1, t_w=1.0,
                                   t_w2=2.0, parent=parent.id, snapshot_epoch=1.0))
        return self

    def _add(self, r: SynthRun) -> SynthRun:
        self.runs[r.id] = r
        return r

    # ---- the folder ------------------------------------------------------------------------------------------
    def write(self, root: Path) -> Path:
        if not self.runs:
            self.build()
        exp = ExperimentFolder(root)
        exp.root.mkdir(parents=True, exist_ok=True)
        exp.spec_path.write_text(f"name: synth\ndata: mnist5k\nseeds: {list(self.seeds)}\n")
        exp.write_plan({r.id: Run(id=r.id, kind=r.kind, seed=r.seed, config={"seed": r.seed}, depends_on=r.parent,
                                  snapshot=None if r.parent is None else
                                  f"runs/{r.parent}/snapshots/epoch_{r.snapshot_epoch:g}.pt",
                                  snapshot_epoch=r.snapshot_epoch, t_w=r.t_w, t_w2=r.t_w2, identity=r.id,
                                  auto=r.auto)
                        for r in self.runs.values()})
        for r in self.runs.values():
            folder = exp.run(r.id)
            folder.path.mkdir(parents=True)
            rows = r.rows()
            if r.kind == "cnn" and not self.cnn_evals_at_snapshots:
                rows = [x for x in rows if x["global_epoch"] not in self.tws]  # an old trainer's eval_times
            if r.kind == "cnn" and self.lam_rows is not None:
                rows = [{**x, "lambda_max": self.lam_rows(x["global_epoch"]) + 0.5 * r.seed,
                         "lambda_max_residual": 1e-4, "lambda_max_converged": True} for x in rows]
            if r.status != "pending":  # metrics.jsonl in one write (the trainer appends; the format is the same)
                atomic_write_text(folder.metrics_path, "".join(json.dumps(x) + "\n" for x in
                                                               (rows if r.status == "done" else rows[:2])))
                folder.write_status(r.status, epoch=rows[-1]["epoch"], step=rows[-1]["step"],
                                    global_epoch=rows[-1]["global_epoch"])
            if r.status == "done":
                folder.final_path.write_bytes(b"synthetic")
        self._analyses(exp)
        exp.write_summary()
        return exp.root

    def _analyses(self, exp: ExperimentFolder) -> None:
        done = [r for r in self.runs.values() if r.status == "done"]
        tag = lambda r: dict(run=r.id, kind=r.kind, seed=r.seed, t_w=r.t_w, t_w2=r.t_w2)  # noqa: E731
        out: dict[str, R.AnalysisResult] = {}
        out["memory"] = R.MemoryResult(model="vanilla_cnn", model_kwargs={"num_classes": 10}, input_shape=[1, 28, 28],
                                       rows=[R.MemoryRow(form=f, params=b // 4, param_bytes=b, optimizer_bytes={"sgd": b})
                                             for f, b in (("cnn", 100_000), ("lc", self.memory[0]),
                                                          ("fc", self.memory[1]))])
        pts = []
        for r in done:
            if r.kind == "cnn":
                for t in r.snapshots:
                    lam = self.lam_along[t] + 0.5 * r.seed
                    pts.append(self._point(tag(r), "snapshot", t, f"runs/{r.id}/snapshots/epoch_{t:g}.pt", lam))
                pts.append(self._point(tag(r), "final", r.length, f"runs/{r.id}/final.pt", self.lam_end_cnn + r.seed))
            elif r.kind in ("efcn", "elcn", "fcn"):
                lam = self.lam_end_efcn + 0.3 * r.seed + (r.t_w or 0)
                pts.append(self._point(tag(r), "final", r.start + r.length, f"runs/{r.id}/final.pt", lam))
        out["sharpness"] = R.SharpnessResult(points=pts)
        abl = []
        for r in done:
            if r.kind == "efcn":
                both = r.acc1
                local = both - self.both_minus_local - noise(r.seed, 3) / 2
                abl.append(R.AblationRecord(**tag(r), test_acc=R.Parts(both=both, local=local,
                                                                       offlocal=self.offlocal_acc + 0.005 * r.seed),
                                            test_loss=R.Parts(both=0.3, local=0.4, offlocal=2.3),
                                            local_change={"features.0": (self.local_change if r.t_w else 0.9)
                                                          + 0.01 * r.seed, "features.3": 0.01}))
        out["ablation"] = R.AblationResult(runs=abl)
        alphas = [i / 10 for i in range(11)]
        curves = []
        for r in done:
            if r.kind == "efcn":
                cnn = self.runs[r.parent]
                a0, a1 = cnn.at(r.t_w)["test_acc"], r.acc1
                acc = [(1 - a) * a0 + a * a1 + (self.interp_bump + noise(r.seed, r.t_w) / 4) * 4 * a * (1 - a)
                       for a in alphas]
                curves.append(R.InterpolationRecord(**tag(r), start=R.Endpoint(label="switch", source="s"),
                                                    end=R.Endpoint(label="efcn_end", source="e"), method="linear",
                                                    train_loss=[0.1] * 11, train_acc=acc, test_loss=[0.3] * 11,
                                                    test_acc=acc))
        out["interpolation"] = R.InterpolationResult(alphas=alphas, curves=curves)
        for name in self.analyses:
            exp.write_result(out[name])

    @staticmethod
    def _point(tag: dict, where: str, epoch: float, file: str, lam: float) -> R.SharpnessPoint:
        return R.SharpnessPoint(**tag, where=where, epoch=float(epoch), file=file, loss=0.1,
                                eigenvalues=[lam, lam / 3], eig_iterations=10, eig_converged=True,
                                eig_residual=[1e-4, 1e-4], trace=5 * lam, trace_stderr=0.1, trace_probes=4)
