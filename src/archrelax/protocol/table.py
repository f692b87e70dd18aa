"""Plain-text tables of an experiment (``archrelax status``, the end of ``archrelax run`` and ``demo``)."""
from __future__ import annotations

from ..store import ExperimentFolder
from ..store.view import WENT_WRONG

__all__ = ["format_status", "status_table", "format_summary", "render", "PROBLEM_STATES"]

PROBLEM_STATES = WENT_WRONG  # the states `archrelax status` exits 1 on


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _pct(x: str) -> str:
    return f"{100 * float(x):.1f}%" if x else ""


def format_status(exp: ExperimentFolder, error_width: int = 100) -> str:
    """run, kind, t_w, status, epoch, best test acc, error excerpt; 'interrupted' marks a run left 'running'
    by a process that no longer holds its lock; 'corrupt' a run whose status.json cannot be read (the error
    column names the file); 'incomplete' a run whose record lacks what its status says it holds
    (``RunFolder.record_problems``: the error column gives the recorded state and what is missing). An
    unreadable plan.json raises StoreError naming it."""
    return status_table(exp, error_width)[0]


def _jobs(exp: ExperimentFolder, plan: dict) -> dict[str, str]:
    """run id -> its batch job's state (``slurm 123_0 PENDING (Dependency)``), for unfinished runs that have a
    job record (``archrelax run --executor slurm``); one squeue call (and sacct where accounting works)."""
    from ..store import StoreError
    from .slurm import job_states

    records = {}
    for rid in plan:
        folder = exp.run(rid)
        try:
            if folder.read_status().finished:
                continue
            rec = folder.read_job()
        except StoreError:
            continue  # the row shows the unreadable file
        if rec is not None and rec.cluster == "slurm":
            records[rid] = rec
    if not records:
        return {}
    states = job_states(r.job_id for r in records.values())
    if states is None:
        return {rid: f"slurm {r.job_id} (state unknown: squeue failed)" for rid, r in records.items()}
    return {rid: states[r.job_id].describe() for rid, r in records.items()}


def _tw(row: dict[str, str]) -> str:
    """A summary row's switch time: "4", "1>2" (t_w1 > t_w2), "auto=4" where a rule chose it ("auto" until then)."""
    if row.get("auto"):  # a summary.csv written before the column existed has none
        return f"auto={row['t_w']}" if row["t_w"] else "auto"
    return row["t_w"] + (f">{row['t_w2']}" if row["t_w2"] else "")


def status_table(exp: ExperimentFolder, error_width: int = 100) -> tuple[str, dict[str, int]]:
    """:func:`format_status`'s text, and the number of runs in each state shown. Runs with a Slurm job get
    a ``job`` column: the job's state beside the run's."""
    plan = exp.read_plan()
    jobs = _jobs(exp, plan)
    rows, counts = [], {}
    for run in plan.values():
        r = exp.summary_row(run)
        status = r["status"]
        if status == "running":  # its process may have died without a word (kill -9, a lost node)
            status = exp.run(run.id).live_state()
        if status not in ("corrupt", "damaged") and (lacks := exp.run(run.id).record_problems()):
            status, r["error"] = "incomplete", f"{status}, but {'; '.join(lacks)}"  # the message is the row's point
        counts[status] = counts.get(status, 0) + 1
        tw = _tw(r)
        err = r["error"].replace(f"{exp.root}/", "")  # paths inside the experiment, shown relative
        if status not in ("corrupt", "incomplete"):  # the message is the point of such a row: shown whole
            err = err if len(err) <= error_width else err[: error_width - 3] + "..."
        rows.append([run.id, run.kind, tw, status, *([jobs.get(run.id, "")] if jobs else []), r["epochs"],
                     _pct(r["best_test_acc"]), err])
    table = render(["run", "kind", "t_w", "status", *(["job"] if jobs else []), "epoch", "best test acc", "error"],
                   rows)
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    bad = sum(counts.get(s, 0) for s in PROBLEM_STATES)
    warn = (f"{bad} run(s) went wrong ({', '.join(s for s in PROBLEM_STATES if counts.get(s))}): their rows say why; "
            "`archrelax run` on the folder retries failed and damaged runs\n") if bad else ""
    return f"{table}\n{warn}{len(plan)} runs: {tally}", counts  # the tally last: what a script reads


def format_summary(exp: ExperimentFolder) -> str:
    """The headline figures of summary.csv: final and best test accuracy per run."""
    rows = [[r["id"], r["kind"], _tw(r), r["status"], r["epochs"],
             _pct(r["final_train_acc"]), _pct(r["final_test_acc"]), _pct(r["best_test_acc"])]
            for r in exp.read_summary()]
    return render(["run", "kind", "t_w", "status", "epochs", "final train", "final test", "best test"], rows)
