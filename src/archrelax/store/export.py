"""One tidy table of an experiment's metrics: a row per evaluation of every run, for pandas, R or a spreadsheet.

``archrelax export EXP`` writes it (CSV, or Parquet where pyarrow is installed): the columns :data:`ID_COLUMNS`
say which run and when (``t_w``: the switch time, also an automatic one's, whose rule ``auto`` names;
``global_epoch`` is on the CNN's clock, as the report draws it), then every metric any run recorded, in the order they first appear (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, δ,
``lr``, ...; docs/architecture.md, metrics.jsonl). A cell is empty where a run did not record that metric;
non-finite values are ``nan`` / ``inf`` (pandas reads them as such). Read through the
:class:`~archrelax.store.ExperimentView`, so a run's rows are the metrics policy's (a torn last line skipped),
and an unreadable log leaves its run out with a warning instead of stopping the export. Files only, no torch.

    import pandas as pd
    df = pd.read_csv("experiments/demo/metrics.csv")
    df[df.kind == "efcn"].groupby("t_w").test_acc.last()
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text
from .view import ExperimentView, RunView

__all__ = ["ID_COLUMNS", "metrics_table", "export_metrics", "FORMATS"]

# which run, which evaluation; then the metrics
ID_COLUMNS = ("run", "kind", "t_w", "t_w2", "auto", "seed", "status", "step", "epoch", "global_epoch")
FORMATS = ("csv", "parquet")


def _global_epochs(v: RunView) -> list[float | None]:
    """Each row's epoch on the CNN's clock (the view's own conversion: a log without global_epoch is shifted)."""
    xs, _ = v.series("epoch")
    if len(xs) == len(v.metrics):
        return list(xs)
    return [m.get("global_epoch") for m in v.metrics]


def metrics_table(view: ExperimentView) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """``(columns, rows, problems)``: one row per metrics.jsonl row of every run, in plan order; ``problems``: the
    runs left out (their log could not be read), in words."""
    metrics: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    problems = []
    for v in view.runs:
        if v.problem and not v.metrics:
            problems.append(f"{v.id}: {v.problem}")
        for m, ge in zip(v.metrics, _global_epochs(v)):
            row = {"run": v.id, "kind": v.kind, "t_w": v.t_w, "t_w2": v.t_w2, "auto": v.auto, "seed": v.seed,
                   "status": v.status, "step": m.get("step"), "epoch": m.get("epoch"), "global_epoch": ge}
            for k, x in m.items():
                if k not in ("step", "epoch", "global_epoch"):
                    metrics.setdefault(k, None)
                    row[k] = x
            rows.append(row)
    return [*ID_COLUMNS, *metrics], rows, problems


def _cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ("nan" if x != x else "inf" if x > 0 else "-inf")
    if isinstance(x, (dict, list)):
        return json.dumps(x)
    return str(x)


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _parquet(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("--format parquet needs pyarrow (pip install pyarrow); or export CSV, which pandas reads "
                         "as well") from None
    def column(c: str) -> list[Any]:
        vals = [r.get(c) for r in rows]
        if any(isinstance(x, (dict, list)) for x in vals):
            return [None if x is None else json.dumps(x) for x in vals]
        if any(isinstance(x, float) for x in vals) and all(x is None or isinstance(x, (int, float)) for x in vals):
            return [None if x is None else float(x) for x in vals]  # one type per column: ints among floats
        return vals
    buf = io.BytesIO()
    pq.write_table(pa.table({c: column(c) for c in columns}), buf)
    return buf.getvalue()


def export_metrics(experiment: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   format: str | None = None) -> tuple[Path, int, list[str]]:
    """Write the table of :func:`metrics_table` to ``out`` (default ``EXP/metrics.csv``, or ``.parquet``);
    ``format`` ("csv" | "parquet") defaults to ``out``'s suffix, else CSV. Returns ``(path, rows, problems)``.
    The file is written atomically. FileNotFoundError when ``experiment`` is not an experiment folder."""
    view = ExperimentView.open(experiment)  # plan.json required: the rows' kinds and switch times come from it
    if format is None:
        format = Path(out).suffix.lstrip(".").lower() if out is not None else "csv"
        format = format if format in FORMATS else "csv"
    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not one of {list(FORMATS)}")
    path = Path(out) if out is not None else view.path / f"metrics.{format}"
    columns, rows, problems = metrics_table(view)
    if format == "csv":
        atomic_write_text(path, _csv(columns, rows))
    else:
        atomic_write_bytes(path, _parquet(columns, rows))
    return path, len(rows), problems
