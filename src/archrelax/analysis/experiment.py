"""Run every analysis over an experiment folder and cache the results under EXPERIMENT/analysis/.

Reads plan.json and runs/<id>/{config.json, status.json, metrics.jsonl, snapshots/*.pt, final.pt}
(layouts in docs/architecture.md), writes one JSON per analysis (format: "Analysis caches" in that doc).
Each analysis is recomputed only when its fingerprint (its input files' sizes and mtimes, the runs'
statuses and the settings) changes. A partial experiment is fine: what is finished is analysed and the
rest is listed under "missing".
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from archrelax.utils import atomic_write_bytes, atomic_write_json, resolve_device

from ._common import to_plain
from .distance import distance_curve, final_gain, read_metrics
from .interpolation import METHODS, default_alphas

__all__ = ["ANALYSES", "AnalysisSettings", "analyse_experiment", "ExperimentRuns", "RunInfo"]

ANALYSES = ("memory", "distance", "sharpness", "ablation", "templates", "interpolation")
VERSION = 1
RELAXED_KINDS = ("efcn", "elcn", "hier")


@dataclasses.dataclass
class AnalysisSettings:
    """Costs of the analyses; defaults keep the demo to seconds per model on 2 CPUs."""

    device: str = "auto"
    seed: int = 0  # picks the data subsets and the random probes
    batch_size: int = 256
    sharpness_samples: int = 256  # fixed training subset for the Hessian
    sharpness_k: int = 1
    sharpness_tol: float = 1e-3  # relative change of the Rayleigh quotient
    sharpness_max_iter: int = 20
    trace_probes: int = 10
    eval_train_samples: int = 512  # ablation and interpolation
    eval_test_samples: int = 1000
    alphas: int = 11
    interp_methods: tuple[str, ...] = METHODS
    interp_start: str = "switch"  # "switch" | "cnn_end"
    interp_end: str = "efcn_end"  # "efcn_end" | "cnn_end" | "switch"
    interp_max_runs: int | None = None  # None: every finished eFCN
    template_count: int = 8

    def __post_init__(self) -> None:
        ends = ("switch", "cnn_end", "efcn_end")
        for name in ("interp_start", "interp_end"):
            if getattr(self, name) not in ends:
                raise ValueError(f"{name}={getattr(self, name)!r}; valid endpoints: {list(ends)}")
        if self.interp_start == self.interp_end:
            raise ValueError(f"interpolation endpoints are both {self.interp_start!r}; choose two different ones")
        bad = [m for m in self.interp_methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown interpolation methods {bad}; valid: {list(METHODS)}")
        self.interp_methods = tuple(self.interp_methods)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# ------------------------------------------------------------------------------------------------------------
# the experiment folder


@dataclasses.dataclass
class RunInfo:
    id: str
    kind: str
    dir: Path
    config: dict[str, Any]  # the run folder's resolved config.json, else the plan's
    depends_on: list[str]
    snapshot: str | None  # the plan's nominal path of the parent snapshot (relative to EXPERIMENT), or None
    snapshot_epoch: float | None  # that snapshot's epoch on the parent's own clock
    status: str  # from status.json; "missing" when the run folder has none
    seed: int | None = None
    t_w: float | None = None
    t_w2: float | None = None

    @property
    def final(self) -> Path:
        return self.dir / "final.pt"

    @property
    def done(self) -> bool:
        return self.status == "done" and self.final.is_file()

    def tag(self) -> dict[str, Any]:
        """The keys every per-run record carries."""
        return {"run": self.id, "kind": self.kind, "seed": self.seed, "t_w": self.t_w, "t_w2": self.t_w2}

    def snapshots(self) -> list[Path]:
        """snapshots/epoch_<t>.pt in order of t."""
        return sorted((self.dir / "snapshots").glob("epoch_*.pt"), key=lambda p: _float(p.stem[6:]) or 0.0)

    def metrics(self) -> list[dict[str, Any]]:
        p = self.dir / "metrics.jsonl"
        return read_metrics(p) if p.is_file() else []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from e


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


class ExperimentRuns:
    """The plan's runs with their folders and statuses (files only; nothing heavy is loaded).

    plan.json maps run id -> {kind, seed, config, depends_on, snapshot, snapshot_epoch, t_w, t_w2, ...}
    (archrelax.protocol.plan); a top-level {"runs": {...}} wrapper is accepted too.
    """

    def __init__(self, exp_dir: str | Path):
        self.dir = Path(exp_dir)
        plan = _read_json(self.dir / "plan.json")
        if not isinstance(plan, dict):
            raise FileNotFoundError(f"{str(self.dir / 'plan.json')!r} is missing or not a JSON object; an experiment "
                                    "folder written by `archrelax run` has plan.json, spec.yaml and runs/")
        entries = plan.get("runs", plan) if isinstance(plan.get("runs"), dict) else plan
        self.runs: dict[str, RunInfo] = {}
        for rid, e in entries.items():
            if not isinstance(e, dict):
                continue
            d = self.dir / "runs" / rid
            deps = e.get("depends_on") or []
            deps = [deps] if isinstance(deps, str) else list(deps)
            on_disk = _read_json(d / "config.json")
            config = on_disk if isinstance(on_disk, dict) else dict(e.get("config") or {})
            status = _read_json(d / "status.json")
            snap = e.get("snapshot")
            self.runs[rid] = RunInfo(
                rid, str(e.get("kind", "unknown")), d, config, deps, snap if isinstance(snap, str) else None,
                _float(e.get("snapshot_epoch", snap if not isinstance(snap, str) else None)),
                str(status.get("status")) if isinstance(status, dict) else "missing",
                seed=e.get("seed", config.get("seed")), t_w=_float(e.get("t_w")), t_w2=_float(e.get("t_w2")))
        for r in self.runs.values():  # plans without t_w: derive the switch times from the snapshot chain
            if r.t_w is None and r.kind in RELAXED_KINDS:
                parent = self.runs.get(r.depends_on[0]) if r.depends_on else None
                if r.kind == "hier":
                    r.t_w = parent.snapshot_epoch if parent else None
                    r.t_w2 = None if r.t_w is None or r.snapshot_epoch is None else r.t_w + r.snapshot_epoch
                else:
                    r.t_w = r.snapshot_epoch

    def of_kind(self, *kinds: str) -> list[RunInfo]:
        return [r for r in self.runs.values() if r.kind in kinds]

    def cnn_of(self, run: RunInfo) -> RunInfo | None:
        """The CNN at the root of a run's dependency chain."""
        seen, r = set(), run
        while r is not None and r.kind != "cnn" and r.id not in seen:
            seen.add(r.id)
            r = self.runs.get(r.depends_on[0]) if r.depends_on else None
        return r if r is not None and r.kind == "cnn" else None

    def switch_snapshot(self, run: RunInfo) -> Path | None:
        """The parent snapshot this run was initialised from.

        In order: the resolved config's ``init_from`` (what the trainer actually loaded), the plan's nominal
        path, then the parent's snapshot nearest to ``snapshot_epoch`` (the trainer saves at whole steps).
        """
        init = run.config.get("init_from")
        cands = [Path(init), self.dir / init] if init else []
        cands += [self.dir / run.snapshot] if run.snapshot else []
        for p in cands:
            if p.is_file():
                return p
        parent = self.runs.get(run.depends_on[0]) if run.depends_on else None
        if parent is None or run.snapshot_epoch is None or not parent.snapshots():
            return None
        best = min(parent.snapshots(), key=lambda p: abs((_float(p.stem[6:]) or 0.0) - run.snapshot_epoch))
        spe = next((m["step"] / m["epoch"] for m in parent.metrics()
                    if isinstance(m.get("step"), int) and (_float(m.get("epoch")) or 0) > 0), None)
        # only a file within half a step of the requested time is the one the run started from
        ok = spe is not None and abs((_float(best.stem[6:]) or 0.0) - run.snapshot_epoch) <= 0.5 / spe + 1e-9
        return best if ok else None

    def fingerprint(self, files: Iterable[Path], params: dict[str, Any], statuses: bool = True) -> str:
        h = hashlib.sha256()
        stats = []
        for f in sorted(set(files)):
            try:
                st = f.stat()
                stats.append([str(f.relative_to(self.dir)), st.st_size, st.st_mtime_ns])
            except FileNotFoundError:
                stats.append([str(f.relative_to(self.dir)), None, None])
        status = {r.id: r.status for r in self.runs.values()} if statuses else None
        h.update(json.dumps([VERSION, stats, status, params], sort_keys=True, default=str).encode())
        return h.hexdigest()

    def weight_files(self) -> list[Path]:
        return [p for r in self.runs.values() for p in (*r.snapshots(), r.final) if p.is_file()]


# ------------------------------------------------------------------------------------------------------------
# models and data (loaded lazily, only for analyses that must be recomputed)


class _Context:
    def __init__(self, runs: ExperimentRuns, settings: AnalysisSettings, progress: bool):
        self.runs, self.s, self.progress = runs, settings, progress
        self.device = resolve_device(settings.device)
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[analyse] {msg}", file=sys.stderr, flush=True)

    def load(self, path: Path) -> nn.Module:
        from archrelax.train.checkpoint import model_from_checkpoint

        return model_from_checkpoint(path).to(self.device)

    def embedded(self, path: Path, like: nn.Module, like_arch: dict[str, Any]) -> nn.Module:
        """The checkpoint at ``path`` embedded (exactly) into the relaxed architecture ``like_arch``."""
        from archrelax.embed.relax import relax
        from archrelax.train.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
        src, dst = list(ckpt["arch"].get("relax_chain") or []), list(like_arch.get("relax_chain") or [])
        if dst[: len(src)] != src:
            raise ValueError(f"cannot embed {str(path)!r} (relax chain {src}) into relax chain {dst}")
        example = torch.zeros(1, *model.input_shape)
        for step in dst[len(src):]:
            model = relax(model, to=step, example_input=example, layers=like_arch.get("relax_layers"))
        a, b = model.state_dict(), like.state_dict()
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            raise ValueError(f"{str(path)!r} embedded does not match the relaxed run's parameters")
        return model.to(self.device)

    def data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Normalised fixed subsets: "hessian" (train), "train" and "test", from the first CNN's data config."""
        if self._data is None:
            self._data = self._load_data()
        return self._data

    def _load_data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from archrelax.data import BatchFeed, load_data

        ref = next(iter(self.runs.of_kind("cnn") or self.runs.runs.values()), None)
        if ref is None:
            raise ValueError("the plan has no runs, so there is no data configuration to analyse with")
        c = ref.config
        self.log(f"loading data {c.get('data', 'mnist5k')!r} (as configured for run {ref.id})")
        splits = load_data(c.get("data", "mnist5k"), c.get("data_root"), train_size=c.get("train_size"),
                           test_size=c.get("test_size"), seed=c.get("data_seed", 0))
        gen = torch.Generator().manual_seed(self.s.seed)

        def subset(split: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randperm(len(split), generator=gen)[: min(n, len(split))]
            # the trainer's own normalisation path, in order, without augmentation
            feed = BatchFeed(split.images[idx], split.labels[idx], self.s.batch_size, mean=splits.mean,
                             std=splits.std, device=self.device, shuffle=False)
            xs, ys = zip(*feed.epoch(0))
            return torch.cat(xs), torch.cat(ys)

        return {"hessian": subset(splits.train, self.s.sharpness_samples),
                "train": subset(splits.train, self.s.eval_train_samples),
                "test": subset(splits.test, self.s.eval_test_samples)}


def _guard(missing: list[dict[str, str]], run: RunInfo, what: str, fn: Callable[[], Any]) -> Any:
    """Run one per-run step; a broken file becomes a "missing" entry instead of failing the analysis."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        missing.append({"run": run.id, "reason": f"{what}: {type(e).__name__}: {e}"})
        return None


def _not_done(runs: Sequence[RunInfo], missing: list[dict[str, str]]) -> list[RunInfo]:
    done = []
    for r in runs:
        if r.done:
            done.append(r)
        else:
            missing.append({"run": r.id, "reason": f"status {r.status!r}" + ("" if r.final.is_file() else ", no final.pt")})
    return done


# ------------------------------------------------------------------------------------------------------------
# one function per analysis: (ctx) -> (payload, missing)


def _cnn_arch(ctx: _Context, ref: RunInfo) -> dict[str, Any]:
    """The CNN's resolved arch record: from one of its checkpoints, else rebuilt like the trainer does (the
    data set fixes num_classes, in_channels and input_size)."""
    from archrelax.train.checkpoint import load_checkpoint

    for p in [ref.final, *ref.snapshots(), ref.dir / "checkpoints" / "last.pt"]:
        if p.is_file():
            return dict(load_checkpoint(p)["arch"])
    from archrelax.data import load_data

    c = ref.config
    splits = load_data(c.get("data", "mnist5k"), c.get("data_root"), train_size=c.get("train_size"),
                       test_size=c.get("test_size"), seed=c.get("data_seed", 0))
    kw = {**(c.get("model_kwargs") or {}), "num_classes": len(splits.classes),
          "in_channels": splits.input_shape[0], "input_size": splits.input_shape[1]}
    return {"model": c.get("model", "vanilla_cnn"), "model_kwargs": kw}


def _memory(ctx: _Context) -> tuple[dict[str, Any], list]:
    from archrelax.models import build_architecture

    from .memory import memory_table

    ref = next(iter(ctx.runs.of_kind("cnn")), None)
    if ref is None:
        return {"model": None, "model_kwargs": None, "input_shape": None, "rows": [], "footprint": None}, [
            {"run": "-", "reason": "no CNN run in the plan"}]
    arch = _cnn_arch(ctx, ref)
    model = build_architecture({**arch, "relax_chain": []})
    return {"model": arch["model"], "model_kwargs": arch.get("model_kwargs"), "input_shape": list(model.input_shape),
            **memory_table(model, tuple(model.input_shape))}, []


def _distance(ctx: _Context) -> tuple[dict[str, Any], list]:
    missing: list[dict[str, str]] = []
    curves, gains = [], []
    for r in ctx.runs.runs.values():
        recs = r.metrics()
        curve = distance_curve(recs, epoch_offset=(r.t_w2 if r.kind == "hier" else r.t_w) or 0.0)
        if curve.epoch:
            curves.append({**r.tag(), **to_plain(curve)})
        elif r.kind in RELAXED_KINDS:
            missing.append({"run": r.id, "reason": "no offlocal_ratio/cnn_distance in metrics.jsonl yet"})
    for r in _not_done(ctx.runs.of_kind(*RELAXED_KINDS), missing):
        cnn = ctx.runs.cnn_of(r)
        if cnn is None or not cnn.done:
            missing.append({"run": r.id, "reason": "its CNN run is not finished: no reference for the gain"})
            continue
        gains.append({**r.tag(), "cnn_run": cnn.id, **to_plain(final_gain(r.metrics(), cnn.metrics()))})
    return {"curves": curves, "gain": gains}, missing


def _sharpness(ctx: _Context) -> tuple[dict[str, Any], list]:
    from archrelax.train.checkpoint import load_checkpoint

    from .sharpness import measure_sharpness

    s, missing, points = ctx.s, [], []
    jobs: list[tuple[RunInfo, str, Path]] = []
    for r in ctx.runs.of_kind("cnn"):
        jobs += [(r, "snapshot", p) for p in r.snapshots()]
        if not r.snapshots():
            missing.append({"run": r.id, "reason": "no snapshots yet"})
    for r in _not_done(list(ctx.runs.runs.values()), missing):
        jobs.append((r, "final", r.final))
    x, y = ctx.data()["hessian"] if jobs else (None, None)
    for i, (r, where, path) in enumerate(jobs):
        ctx.log(f"sharpness {i + 1}/{len(jobs)}: {r.id} {path.name}")

        def one() -> dict[str, Any]:
            ckpt = load_checkpoint(path)
            model = ctx.load(path)
            sh = measure_sharpness(model, x, y, k=s.sharpness_k, tol=s.sharpness_tol, max_iter=s.sharpness_max_iter,
                           probes=s.trace_probes, seed=s.seed, batch_size=s.batch_size)
            return {**r.tag(), "where": where, "file": str(path.relative_to(ctx.runs.dir)),
                    "epoch": float(ckpt.get("global_epoch", ckpt["epoch"])), "loss": sh.loss,
                    "eigenvalues": sh.eigen.values, "eig_iterations": max(sh.eigen.iterations),
                    "eig_converged": all(sh.eigen.converged), "eig_residual": sh.eigen.residuals,
                    "trace": sh.trace.trace, "trace_stderr": sh.trace.stderr, "trace_probes": sh.trace.probes}

        p = _guard(missing, r, f"sharpness of {path.name}", one)
        if p is not None:
            points.append(p)
    return {"points": points}, missing


def _ablation(ctx: _Context) -> tuple[dict[str, Any], list]:
    from archrelax.train.checkpoint import load_checkpoint

    from .ablation import evaluate_ablation, local_change

    missing: list[dict[str, str]] = []
    out = []
    for r in _not_done(ctx.runs.of_kind(*RELAXED_KINDS), missing):
        ctx.log(f"ablation: {r.id}")

        def one() -> dict[str, Any]:
            model = ctx.load(r.final)
            x, y = ctx.data()["test"]
            ab = evaluate_ablation(model, x, y, batch_size=ctx.s.batch_size)
            change: dict[str, float] = {}
            snap = ctx.runs.switch_snapshot(r)
            if snap is None:
                missing.append({"run": r.id, "reason": "switch snapshot not found: no local_change"})
            else:
                change = local_change(model, ctx.embedded(snap, model, load_checkpoint(r.final)["arch"]))
            return {**r.tag(), "test_acc": {k: getattr(ab, k).acc for k in ("both", "local", "offlocal")},
                    "test_loss": {k: getattr(ab, k).loss for k in ("both", "local", "offlocal")},
                    "local_change": change}

        rec = _guard(missing, r, "ablation", one)
        if rec is not None:
            out.append(rec)
    return {"runs": out}, missing


def _templates(ctx: _Context) -> tuple[dict[str, Any], list, dict[str, np.ndarray]]:
    from .templates import offlocal_templates

    missing: list[dict[str, str]] = []
    efcns = _not_done(ctx.runs.of_kind("efcn"), missing)
    fcns = _not_done(ctx.runs.of_kind("fcn"), missing)
    payload: dict[str, Any] = {"layer": None, "input_shape": None, "runs": []}
    arrays: dict[str, np.ndarray] = {}
    units = None
    for r in efcns + fcns:
        def one() -> Any:
            model = ctx.load(r.final)
            return model, offlocal_templates(model, units=units, count=ctx.s.template_count,
                                    part="all" if r.kind == "fcn" else "offlocal")

        res = _guard(missing, r, "templates", one)
        if res is None:
            continue
        model, t = res
        units = t.units if units is None else units  # every later run shows the first eFCN's units
        key = f"r{len(arrays)}"
        arrays[key] = t.images.numpy().astype(np.float32)
        arrays[key + "_raw"] = t.weights.numpy().astype(np.float32)
        payload["layer"] = payload["layer"] or t.layer
        payload["input_shape"] = payload["input_shape"] or list(t.weights.shape[1:])
        payload["runs"].append({**r.tag(), "key": key, "units": t.units, "offlocal_norm": t.offlocal_norm})
    return payload, missing, arrays


def _interpolation(ctx: _Context) -> tuple[dict[str, Any], list]:
    from archrelax.train.checkpoint import load_checkpoint

    from .interpolation import interpolate

    s, missing, curves = ctx.s, [], []
    alphas = default_alphas(s.alphas)
    runs = _not_done(ctx.runs.of_kind("efcn"), missing)
    if s.interp_max_runs is not None:
        runs = runs[: s.interp_max_runs]
    for r in runs:
        ctx.log(f"interpolation: {r.id} ({s.interp_start} -> {s.interp_end})")

        def one() -> list[dict[str, Any]]:
            end = ctx.load(r.final)
            arch = load_checkpoint(r.final)["arch"]
            cnn = ctx.runs.cnn_of(r)
            sources = {"efcn_end": r.final, "switch": ctx.runs.switch_snapshot(r),
                       "cnn_end": cnn.final if cnn is not None and cnn.done else None}
            models = {}
            for label in (s.interp_start, s.interp_end):
                if sources[label] is None:
                    raise FileNotFoundError(f"endpoint {label!r} has no file (not finished or no snapshot)")
                models[label] = end if label == "efcn_end" else ctx.embedded(sources[label], end, arch)
            d = ctx.data()
            res = interpolate(models[s.interp_start], models[s.interp_end], d["train"], d["test"], alphas=alphas,
                              methods=s.interp_methods, batch_size=s.batch_size)
            ends = {k: {"label": k, "source": str(Path(sources[k]).relative_to(ctx.runs.dir))
                        if Path(sources[k]).is_relative_to(ctx.runs.dir) else str(sources[k])}
                    for k in (s.interp_start, s.interp_end)}
            return [{**r.tag(), "start": ends[s.interp_start], "end": ends[s.interp_end], "method": m,
                     "train_loss": [v.loss for v in c.train], "train_acc": [v.acc for v in c.train],
                     "test_loss": [v.loss for v in c.test], "test_acc": [v.acc for v in c.test]}
                    for m, c in res.items()]

        recs = _guard(missing, r, "interpolation", one)
        curves += recs or []
    return {"alphas": alphas, "curves": curves}, missing


# ------------------------------------------------------------------------------------------------------------


def _inputs(runs: ExperimentRuns, name: str) -> list[Path]:
    files = [runs.dir / "plan.json"]
    if name == "distance":
        files += [r.dir / "metrics.jsonl" for r in runs.runs.values()]
    elif name == "templates":
        files += [r.final for r in runs.runs.values()]
    elif name == "memory":  # the CNN's arch record comes from its first checkpoint
        cnn = next(iter(runs.of_kind("cnn")), None)
        files += [] if cnn is None else [p for p in (cnn.final, *cnn.snapshots()) if p.is_file()][:1]
    else:
        files += runs.weight_files()
    return files


_PARAMS = {  # which settings each analysis depends on (part of its cache key)
    "memory": (),
    "distance": (),
    "sharpness": ("seed", "sharpness_samples", "sharpness_k", "sharpness_tol", "sharpness_max_iter", "trace_probes"),
    "ablation": ("seed", "eval_test_samples"),
    "templates": ("template_count",),
    "interpolation": ("seed", "eval_train_samples", "eval_test_samples", "alphas", "interp_methods",
                      "interp_start", "interp_end", "interp_max_runs"),
}
_RUNNERS: dict[str, Callable[[_Context], tuple]] = {
    "memory": _memory, "distance": _distance, "sharpness": _sharpness, "ablation": _ablation,
    "templates": _templates, "interpolation": _interpolation,
}


def settings_from_spec(exp_dir: str | Path) -> AnalysisSettings:
    """The experiment's own analysis settings (``analysis_settings`` in its spec.yaml), else the defaults.

    Reading them here keeps one source: ``archrelax run``, ``analyse`` and ``report`` all compute (and
    find in the cache) the same analyses for an experiment.
    """
    path = Path(exp_dir) / "spec.yaml"
    if not path.is_file():
        return AnalysisSettings()
    import yaml

    raw = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("analysis_settings") or {}
    return make_settings(raw, where=str(path))


def make_settings(raw: dict[str, Any], where: str = "analysis_settings") -> AnalysisSettings:
    """``AnalysisSettings(**raw)`` with an error naming unknown keys and the valid ones."""
    valid = [f.name for f in dataclasses.fields(AnalysisSettings)]
    bad = sorted(set(raw) - set(valid))
    if bad:
        raise ValueError(f"{where}: unknown analysis settings {bad}; valid: {valid}")
    return AnalysisSettings(**raw)


def analyse_experiment(exp_dir: str | Path, only: Sequence[str] | None = None, progress: bool = True, *,
                       settings: AnalysisSettings | None = None, force: bool = False) -> dict[str, dict[str, Any]]:
    """Compute (or reuse) each analysis of an experiment folder; returns {name: the JSON object written}.

    ``only``: a subset of ``ANALYSES``. An analysis that fails as a whole (e.g. its data cannot be loaded)
    writes its file with ``"error"`` set and no fingerprint, so the next call retries it.
    """
    names = list(ANALYSES) if not only else list(dict.fromkeys(only))
    bad = [n for n in names if n not in ANALYSES]
    if bad:
        raise ValueError(f"unknown analysis {bad}; valid: {list(ANALYSES)}")
    settings = settings or settings_from_spec(exp_dir)
    runs = ExperimentRuns(exp_dir)
    out_dir = runs.dir / "analysis"
    ctx = _Context(runs, settings, progress)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        params = {k: getattr(settings, k) for k in _PARAMS[name]}
        fp = runs.fingerprint(_inputs(runs, name), to_plain(params), statuses=name != "memory")
        path = out_dir / f"{name}.json"
        old = _read_cached(path)
        arrays_ok = old is not None and (not old.get("arrays") or (out_dir / old["arrays"]).is_file())
        if not force and old is not None and old.get("fingerprint") == fp and arrays_ok:
            ctx.log(f"{name}: up to date")
            results[name] = old
            continue
        ctx.log(f"{name}: computing")
        head = {"analysis": name, "version": VERSION, "params": to_plain(params), "created": _now()}
        try:
            res = _RUNNERS[name](ctx)
        except Exception as e:  # noqa: BLE001 - one broken analysis must not hide the others
            ctx.log(f"{name}: failed: {e}")
            obj = {**head, "fingerprint": None, "missing": [], "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()}
        else:
            payload, missing = res[0], res[1]
            if len(res) > 2:  # arrays beside the JSON, in .npz (loads with allow_pickle=False)
                buf = io.BytesIO()
                np.savez(buf, **res[2])
                atomic_write_bytes(out_dir / f"{name}.npz", buf.getvalue())
                head["arrays"] = f"{name}.npz"
            obj = {**head, "fingerprint": fp, "missing": missing, "error": None, **to_plain(payload)}
        atomic_write_json(path, to_plain(obj))
        results[name] = obj
    return results


def _read_cached(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
