"""HTML report of an experiment folder: ``write_report(exp)`` -> ``exp/report/index.html``.

The page is self-contained (inline CSS, no script, no server): figures are PNG files in ``report/fig/``
beside it, referenced by relative paths, so the folder can be copied or opened straight from disk.
It renders from files only (spec.yaml, plan.json, runs/*/, analysis/*.json), read through the store's
:class:`~archrelax.store.ExperimentView` (one definition of a run's kind, state and final figures); with
``analyse=True`` the analyses are brought up to date first, and a failure there is shown on the page
instead of stopping the report. A page drawn from exactly the same inputs is kept as it is (its key is in
a meta tag), so rerunning a finished experiment redraws nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..store import ExperimentFolder, ExperimentView
from ..store.atomic import atomic_write_text, umask
from .html import page
from .sections import Ctx, analysis_error, build_all, problems

if TYPE_CHECKING:
    from archrelax.analysis.experiment import AnalysisResults

__all__ = ["write_report", "load_experiment", "analysis_note"]


def load_experiment(path: str | Path) -> ExperimentView:
    """The report's view of a folder: any folder (without a readable plan.json its runs are listed from runs/,
    and the page says so); FileNotFoundError when ``path`` is not a folder."""
    return ExperimentView.open(path, require_plan=False)


def _run_analyses(exp: ExperimentView) -> str:
    """Bring the spec's analyses (its ``analyses`` list, and only those) up to date; the overview's note."""
    names = list(exp.spec.get("analyses") or [])
    if not names:
        return analysis_note(exp.path, None, ran=False)
    # lazy: the analyses pull in torch and the models; the report itself needs neither
    from archrelax.analysis.experiment import analyse_experiment

    try:
        outcome = analyse_experiment(exp.path, only=names)
    except Exception as e:  # partial experiments must still get a page; the error is shown on it
        return f"FAILED, cached results (if any) shown as they are:\n{analysis_error(e)}"
    return analysis_note(exp.path, outcome)


def analysis_note(exp_dir: Path, outcome: "AnalysisResults | None", *, ran: bool | None = None) -> str:
    """What the overview says about the analyses: which were computed now, reused from the cache, failed,
    and which of the spec's have no result at all. ``outcome`` None: no analysis pass ran before this page
    (--no-analyse; ``ran=False``: none was asked for, the spec lists no analyses)."""
    from archrelax.store import ExperimentFolder, StoreError
    from archrelax.store.results import RESULT_TYPES

    exp = ExperimentFolder(exp_dir)
    try:
        listed = list((exp.read_spec() or {}).get("analyses") or [])
    except StoreError:
        listed = []
    present = [n for n in RESULT_TYPES if exp.result_path(n).is_file()]
    missing = [n for n in RESULT_TYPES if n not in present and n in listed]  # only what the spec asked for
    parts = []
    if outcome is None and ran is False:
        parts.append("the spec lists none (its `analyses` key)" + (
            "; results computed by hand shown as they are: " + ", ".join(present) if present else ""))
    elif outcome is None:
        def when(n: str) -> str:
            try:
                res = exp.read_result(n)
            except StoreError:
                return "unreadable"
            return f"from {res.created}" if res is not None and res.created else "undated"

        parts.append("not run (--no-analyse): cached results shown as they are" +
                     (": " + ", ".join(f"{n} ({when(n)})" for n in present) if present else ""))
    else:
        for how, words in (("computed", "computed now"), ("reused", "reused from the cache (inputs unchanged)"),
                           ("failed", "failed (see their sections)")):
            names = outcome.names(how)
            if names:
                parts.append(f"{words}: {', '.join(names)}")
        kept = [n for n in present if n not in outcome.how]
        if kept:
            parts.append(f"not part of this pass, cached results shown as they are: {', '.join(kept)}")
    if missing:
        parts.append(f"missing (no result yet): {', '.join(missing)}")
    return "; ".join(parts) or "none"


def write_report(experiment_dir: str | Path, *, analyse: bool = True,
                 analysed: "AnalysisResults | None" = None) -> Path:
    """Write ``experiment_dir/report/index.html`` (and ``report/fig/*.png``); return the page's path.

    ``analyse``: first bring the analyses the spec lists (its ``analyses`` key) up to date
    (``archrelax.analysis.experiment.analyse_experiment``, cached, so cheap when nothing changed); with False
    only existing ``analysis/*.json`` files are used. The page has a section for each listed analysis and for
    any other whose result is there. ``analysed``: the outcome
    of an analysis pass the caller has just run (e.g. ``archrelax demo``), so that the overview says what
    it computed and reused (no second pass is run).
    Raises FileNotFoundError when ``experiment_dir`` is not a folder.
    """
    exp_dir = Path(experiment_dir)
    # FileNotFoundError naming a missing folder, before any analysis; the view reads the analysis results
    # when first asked for them, i.e. after the pass below has written them
    exp = load_experiment(exp_dir)
    if analysed is not None:
        note = analysis_note(exp_dir, analysed)
    else:
        note = _run_analyses(exp) if analyse else analysis_note(exp_dir, None)
    folder = ExperimentFolder(exp_dir)
    out = folder.report_dir  # the store owns the layout
    with _one_writer(folder.lock_path):  # so whatever a writer left beside report/ is debris of one that was killed
        _clear_debris(exp_dir, out)
        return _write(exp, exp_dir, out, note)


def _write(exp: ExperimentView, exp_dir: Path, out: Path, note: str) -> Path:
    index = out / "index.html"
    key = _inputs_key(exp, note)
    if _up_to_date(index, key):  # a rerun of a finished experiment: same page, nothing redrawn
        return index
    # built in a fresh folder beside it, then swapped in: a failure half-way (full disk, ...) leaves the
    # previous report whole, and stale figures of sections that are now missing go with the old folder
    try:
        new = Path(tempfile.mkdtemp(prefix=".report-new-", dir=exp_dir))
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out)) from e
    try:
        fig_dir = new / "fig"
        fig_dir.mkdir()
        sections = build_all(exp, Ctx(exp=exp, fig_dir=fig_dir), note)
        title = f"archrelax report: {exp_dir.resolve().name}"
        n_done = sum(r.status == "done" for r in exp.runs)
        subtitle = f"{exp_dir.resolve()} · {n_done} of {len(exp.runs)} runs done"
        atomic_write_text(new / "index.html", page(title, subtitle, sections, inputs=key))
        new.chmod(0o777 & ~umask())  # mkdtemp makes it 0700
        old = exp_dir / f".report-old-{new.name.rsplit('-', 1)[-1]}"
        if out.exists():
            out.rename(old)
        new.rename(out)
    except BaseException as e:
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(e, OSError) and e.filename is not None and str(e.filename).startswith(str(new)):
            # name the file the user will look for, not the temporary folder that is gone
            raise OSError(e.errno, e.strerror, str(out) + str(e.filename)[len(str(new)):]) from e
        raise
    shutil.rmtree(old, ignore_errors=True)
    return index


@contextlib.contextmanager
def _one_writer(lock_path: Path) -> Iterator[None]:
    """One report writer at a time per experiment: the experiment's lock (``ExperimentFolder.lock_path``, a blocking
    flock, which ``archrelax run`` also takes while it writes a plan). A folder where it cannot be opened
    (read-only) can hold no half-written report either: the page's own writes then fail, naming report/."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _clear_debris(exp_dir: Path, out: Path) -> None:
    """What a killed writer left (the writers' lock held, so no writer owns it): its ``.report-new-*`` folder, and
    the previous report as ``.report-old-*`` when it died between the two renames (put back as report/ if that is
    gone, so a failure of this writer still leaves the last whole report)."""
    olds = sorted(exp_dir.glob(".report-old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not out.exists():
        olds.pop().rename(out)
    for p in [*exp_dir.glob(".report-new-*"), *olds]:
        shutil.rmtree(p, ignore_errors=True)


def _inputs_key(exp: ExperimentView, note: str) -> str:
    """A hash of everything the page is drawn from: the experiment as loaded (runs, their statuses and
    metrics, the analysis results, problems, spec), the templates arrays' file, the analysis note, the
    folder's place, and the report's own code."""
    h = hashlib.sha256()
    runs = [[r.id, r.kind, r.seed, r.t_w, r.t_w2, r.status, r.error, r.epoch, r.metrics] for r in exp.runs]
    npz = exp.path / "analysis" / "templates.npz"
    arrays = [npz.stat().st_size, npz.stat().st_mtime_ns] if npz.is_file() else None
    h.update(json.dumps([str(exp.path), note, exp.spec_text, problems(exp), runs, arrays,
                         {k: v.to_json() for k, v in sorted(exp.results.items())}], sort_keys=True,
                        default=str).encode())
    claims = Path(__file__).parent.parent / "analysis" / "claims"  # the claims section's verdicts
    for code in sorted(Path(__file__).parent.glob("*.py")) + sorted(claims.glob("*.py")):
        h.update(code.read_bytes())
    return h.hexdigest()


def _up_to_date(index: Path, key: str) -> bool:
    """Whether ``index`` was drawn from ``key`` and every figure it shows is still there."""
    try:
        html = index.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    if f'<meta name="archrelax-inputs" content="{key}">' not in html:
        return False
    return all((index.parent / src).is_file() for src in re.findall(r'<img src="([^"]+)"', html))
