"""metrics.jsonl: one JSON object per evaluation, appended (and fsync'ed) by the trainer.

The one reading policy, used by every reader (trainer resume, summary, analyses, report):
- a missing file has no rows;
- the LAST line may be torn by a crash mid-append (``append_line`` writes a line, then fsyncs): if it does not
  decode, it is ignored, with or without its final newline;
- any other line that does not decode to a JSON object (a corrupt line in the MIDDLE) cannot come from a
  crash: :class:`StoreError` names the file and the line number. Callers that must survive it (the status
  table, the report, the analyses) catch it and show it for that run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import append_line, atomic_write_text
from .errors import StoreError

__all__ = ["read_metrics", "append_metrics", "truncate_metrics"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, in order ([] when the file does not exist)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last complete line
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as e:
            if i == len(lines) - 1:
                break  # a torn last line: the crash the append-only writer allows
            raise StoreError(path, f"{str(path)!r} line {i + 1} of {len(lines)} is corrupt ({e}: {line[:80]!r}); "
                             "only the last line of a metrics log can be torn by a crash. Delete that line "
                             "(or the run folder) to go on") from None
        rows.append(rec)
    return rows


def append_metrics(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row (fsync'ed)."""
    append_line(path, json.dumps(row))


def truncate_metrics(path: str | os.PathLike, n: int) -> None:
    """Keep the first ``n`` rows (atomic rewrite; a torn last line goes too). A resumed run calls it with the
    row count of its checkpoint: rows written after that checkpoint are recomputed, bit for bit."""
    path = Path(path)
    rows = read_metrics(path)
    torn = path.exists() and not path.read_text(encoding="utf-8").endswith("\n") and path.stat().st_size > 0
    if len(rows) != n or torn:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows[:n]))
