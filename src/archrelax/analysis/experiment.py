"""``analyse_experiment``: run the registered analyses over an experiment folder, cached in EXPERIMENT/analysis/.

Each analysis (``archrelax.analysis.registry``; its runner lives in its own module) writes one typed result
(``archrelax.store.results``) as ``analysis/<name>.json``. The cache key (``fingerprint``) is built from
what the result depends on, by content: the plan's content hash, the runs' states, the settings it uses,
and the (path relative to the experiment, content digest: ``archrelax.integrity.file_digest``) of the files
it reads (metrics logs, snapshots, final weights). So a rerun of a finished experiment (which rewrites
plan.json, spec.yaml and summary.csv with the same content) recomputes nothing, nor does a copy of the folder
(``cp -r``, new times), and a file replaced by other content is seen whatever its size and time. A partial experiment is fine: what is finished
is analysed and the rest is listed under ``missing``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from archrelax.store import ExperimentFolder, StoreError, plan_digest
from archrelax.store.results import RESULT_TYPES, AnalysisResult

from .registry import ANALYSES, analysis_names, get_analysis
from .settings import AnalysisSettings, make_settings, settings_from_spec

if TYPE_CHECKING:
    from .context import Context

__all__ = ["ANALYSES", "AnalysisSettings", "AnalysisResults", "analyse_experiment", "make_settings",
           "settings_from_spec", "fingerprint", "training_time"]

How = Literal["computed", "reused", "failed"]


class AnalysisResults(dict):
    """``{name: typed result}`` (what ``analyse_experiment`` returns), plus how this call obtained each one:
    ``how[name]`` is "computed" (recomputed now), "reused" (the cached file's key matched its inputs) or
    "failed" (the analysis raised; its file records the error). The report's overview says which."""

    def __init__(self) -> None:
        super().__init__()
        self.how: dict[str, How] = {}
        self.seconds: dict[str, float] = {}  # wall time of each analysis computed (or failed) in this call

    def names(self, how: How) -> list[str]:
        """The analyses obtained that way, in the order they ran."""
        return [n for n, h in self.how.items() if h == how]


def fingerprint(ctx: "Context", name: str, params: dict[str, Any]) -> str:
    """The cache key of analysis ``name`` over ``ctx``'s experiment (see the module docstring)."""
    from archrelax.integrity import file_digest

    analysis = get_analysis(name)
    files = []
    for f in sorted(set(analysis.inputs(ctx))):
        try:
            files.append([ctx.rel(f), file_digest(f)])
        except FileNotFoundError:
            files.append([ctx.rel(f), None])
    key = {"analysis": name, "version": RESULT_TYPES[name].VERSION, "plan": plan_digest(ctx.plan),
           "statuses": ctx.statuses() if analysis.statuses else None, "files": files, "params": params}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def analyse_experiment(exp_dir: str | Path, only: Sequence[str] | None = None, progress: bool = True, *,
                       settings: AnalysisSettings | None = None, force: bool = False) -> AnalysisResults:
    """Compute (or reuse) each analysis of an experiment folder; returns {name: its typed result}, with
    ``.how[name]`` saying whether it was computed now, reused from the cache or failed.

    ``only``: a subset of :func:`analysis_names`. An analysis that fails as a whole (e.g. its data cannot be
    loaded) writes its file with ``error`` set and no fingerprint, so the next call retries it.
    """
    names = list(analysis_names()) if not only else list(dict.fromkeys(only))
    bad = [n for n in names if n not in ANALYSES]
    if bad:
        raise ValueError(f"unknown analysis {bad}; valid: {list(ANALYSES)}")
    from .context import Context  # torch: only when analysing, not to validate settings

    settings = settings or settings_from_spec(exp_dir)
    exp = ExperimentFolder(exp_dir)
    ctx = Context(exp, settings, progress)
    from .pool import Pool, workers_of

    ctx.pool = Pool(ctx, workers_of(ctx))
    t0 = time.perf_counter()
    try:
        results = _analyse(ctx, names, force)
    finally:
        ctx.pool.close()
    if results.seconds:
        took = time.perf_counter() - t0
        span, total = training_time(ctx)
        against = (f"; the runs trained {span:.1f} s from the first start to the last end ({total:.1f} s summed over "
                   f"runs): analyses / training = {took / span:.3f}") if span else ""
        ctx.log(f"{len(results.seconds)} analyses computed in {took:.1f} s ({ctx.pool.workers} worker process(es))"
                + against)
    return results


def training_time(ctx: "Context") -> tuple[float | None, float]:
    """(span, sum) of the finished runs' training, in seconds: ``span`` from the first run's start to the last
    one's end (each run's end is its status.json's time, its start that minus the trainer's ``wall_time``; None
    when unknown), ``sum`` the runs' ``wall_time`` added up."""
    import datetime as dt

    starts, ends, total = [], [], 0.0
    for r in ctx.plan.values():
        try:
            st = ctx.folder(r).read_status()
            rows = ctx.folder(r).read_metrics()
        except StoreError:
            continue
        wall = next((row["wall_time"] for row in reversed(rows) if isinstance(row.get("wall_time"), (int, float))),
                    None)
        if st.status != "done" or wall is None:
            continue
        total += wall
        if st.updated:
            end = dt.datetime.fromisoformat(st.updated).timestamp()
            starts.append(end - wall)
            ends.append(end)
    return (max(ends) - min(starts) if ends else None), total


def _analyse(ctx: "Context", names: list[str], force: bool) -> AnalysisResults:
    """Each analysis reused when its cache key matches, else computed and written.

    With worker processes, the analyses to compute run side by side (a thread each, in this process): their
    per-run jobs share the one pool's queue, so no worker waits at the end of one analysis for the next to
    start, and the work an analysis does here (reading files, templates) overlaps the workers' jobs. Each
    result is the same as computed alone (a job depends only on its inputs)."""
    exp, settings = ctx.exp, ctx.s
    results = AnalysisResults()
    todo: list[tuple[str, dict[str, Any], str]] = []
    for name in names:
        analysis = get_analysis(name)
        params = {k: getattr(settings, k) for k in analysis.params}
        params = json.loads(json.dumps(params))  # plain data (tuples -> lists), as it reads back
        fp = fingerprint(ctx, name, params)
        old = _cached(exp, name)
        arrays_ok = old is not None and (getattr(old, "arrays", None) is None or
                                         (exp.analysis_dir / old.arrays).is_file())
        if not force and arrays_ok and old.fingerprint == fp:
            ctx.log(f"{name}: up to date")
            results[name], results.how[name] = old, "reused"
            continue
        results[name] = None  # keeps the order of ``names``
        todo.append((name, params, fp))
    workers = getattr(ctx.pool, "workers", 1)
    if workers > 1 and len(todo) > 1:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(len(todo), thread_name_prefix="analysis") as threads:
            done = list(threads.map(lambda job: _compute(ctx, *job), todo))
    else:
        done = [_compute(ctx, *job) for job in todo]
    for (name, _, _), (res, seconds) in zip(todo, done):
        results[name], results.how[name] = res, "failed" if res.error else "computed"
        results.seconds[name] = seconds
    return results


def _compute(ctx: "Context", name: str, params: dict[str, Any], fp: str) -> tuple[AnalysisResult, float]:
    """Compute analysis ``name`` and write its file; (its result, its wall time)."""
    exp = ctx.exp
    ctx.log(f"{name}: computing")
    head = dict(params=params, created=_now())
    t0 = time.perf_counter()
    try:
        out = get_analysis(name).run(ctx)
    except Exception as e:  # noqa: BLE001 - one broken analysis must not hide the others
        ctx.log(f"{name}: failed: {e}")
        res = RESULT_TYPES[name](**head, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    else:
        res, arrays = out if isinstance(out, tuple) else (out, None)
        res.params, res.created, res.fingerprint = head["params"], head["created"], fp
        if arrays is not None:  # beside the JSON, in .npz (loads with allow_pickle=False)
            import numpy as np

            from archrelax.store import atomic_write_bytes

            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(exp.analysis_dir / f"{name}.npz", buf.getvalue())
            res.arrays = f"{name}.npz"
    exp.write_result(res)
    seconds = time.perf_counter() - t0
    ctx.log(f"{name}: {'failed' if res.error else 'computed'} in {seconds:.1f} s")
    return res, seconds


def _cached(exp: ExperimentFolder, name: str) -> AnalysisResult | None:
    """The cached result, or None when absent or unreadable (then it is recomputed and rewritten)."""
    try:
        return exp.read_result(name)
    except StoreError:
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
