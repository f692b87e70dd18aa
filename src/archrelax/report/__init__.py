"""HTML report of an experiment folder: ``write_report(exp)`` -> ``exp/report/index.html``.

The page is self-contained (inline CSS, no script, no server): figures are PNG files in ``report/fig/``
beside it, referenced by relative paths, so the folder can be copied or opened straight from disk.
It renders from files only (spec.yaml, plan.json, summary.csv, runs/*/, analysis/*.json); with
``analyse=True`` the analyses are brought up to date first, and a failure there is shown on the page
instead of stopping the report.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..utils import atomic_write_text
from .html import page
from .load import Experiment, Run, load_experiment
from .sections import Ctx, analysis_error, build_all

__all__ = ["write_report", "load_experiment", "Experiment", "Run"]


def _run_analyses(exp_dir: Path) -> str:
    try:  # lazy: the analyses pull in torch and the models; the report itself needs neither
        from archrelax.analysis.experiment import analyse_experiment
    except ImportError as e:
        return f"not run: archrelax.analysis.experiment.analyse_experiment is unavailable ({e})"
    try:
        analyse_experiment(exp_dir)
    except Exception as e:  # partial experiments must still get a page; the error is shown on it
        return f"FAILED, cached results (if any) shown as they are:\n{analysis_error(e)}"
    return "brought up to date before rendering"


def write_report(experiment_dir: str | Path, *, analyse: bool = True) -> Path:
    """Write ``experiment_dir/report/index.html`` (and ``report/fig/*.png``); return the page's path.

    ``analyse``: first run ``archrelax.analysis.experiment.analyse_experiment`` (cached, so cheap when
    nothing changed); with False only existing ``analysis/*.json`` files are used.
    Raises FileNotFoundError when ``experiment_dir`` is not a folder.
    """
    exp_dir = Path(experiment_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"experiment folder {str(exp_dir)!r} does not exist (expected a folder with "
                                "spec.yaml, plan.json and runs/, as written by `archrelax run`)")
    note = _run_analyses(exp_dir) if analyse else "not run (--no-analyse): cached results shown as they are"
    exp = load_experiment(exp_dir)
    out = exp_dir / "report"
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
        atomic_write_text(new / "index.html", page(title, subtitle, sections))
        new.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700
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
    return out / "index.html"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
