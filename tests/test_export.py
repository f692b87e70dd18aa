"""`archrelax export`: every metrics row of every run in one table that pandas reads, and the docs' example
figure drawn from it."""
from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest

from archrelax.cli import main as cli_main
from archrelax.store.export import ID_COLUMNS, export_metrics
from report_synth import make_experiment

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _logged_rows(exp: Path) -> dict[str, list[dict]]:
    """run id -> its metrics.jsonl rows, read independently of the store (a torn last line skipped)."""
    out = {}
    for d in sorted((exp / "runs").iterdir()):
        rows = []
        for line in (d / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        out[d.name] = rows
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("export") / "exp", partial=True)  # a failed and a running run too
    assert cli_main(["export", str(exp)]) == 0
    return exp, exp / "metrics.csv"


def test_csv_holds_every_metrics_row_with_its_run_and_time(exported):
    exp, path = exported
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    logged = _logged_rows(exp)
    assert len(table) == sum(map(len, logged.values())) > 200
    header = list(table[0])
    assert tuple(header[: len(ID_COLUMNS)]) == ID_COLUMNS
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "offlocal_ratio", "lr", "soft_lambda"} <= set(header)
    plan = json.loads((exp / "plan.json").read_text())
    by_run: dict[str, list[dict]] = {}
    for row in table:
        by_run.setdefault(row["run"], []).append(row)
    assert by_run.keys() == logged.keys()
    for rid, rows in logged.items():
        got = by_run[rid]
        assert [int(r["step"]) for r in got] == [m["step"] for m in rows]
        assert all(r["kind"] == plan[rid]["kind"] and r["seed"] == str(plan[rid]["seed"]) for r in got)
        for r, m in zip(got, rows):  # exact: floats written with repr
            assert float(r["test_acc"]) == m["test_acc"] and float(r["global_epoch"]) == m["global_epoch"]
            assert (r["offlocal_ratio"] == "") == ("offlocal_ratio" not in m)
    assert {r["status"] for r in table} == {"done", "failed", "running"}


def test_pandas_reads_it(exported):
    pd = pytest.importorskip("pandas")
    exp, path = exported
    df = pd.read_csv(path)
    assert len(df) == sum(map(len, _logged_rows(exp).values()))
    assert df.test_acc.dtype.kind == "f" and df.step.dtype.kind == "i"
    cnn = df[df.kind == "cnn"]
    assert cnn.t_w.isna().all() and cnn.offlocal_ratio.isna().all()  # empty cells: not applicable
    efcn = df[(df.kind == "efcn") & (df.t_w == 4)]
    assert efcn.global_epoch.min() == 4.0  # on the CNN's clock


def test_docs_example_draws_a_figure_from_it(exported, tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    _, path = exported
    out = tmp_path / "fig.png"
    monkeypatch.setattr(sys, "argv", ["export_example.py", str(path), str(out)])
    runpy.run_path(str(DOCS / "export_example.py"), run_name="__main__")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_formats_and_errors(tmp_path, capsys):
    exp = make_experiment(tmp_path / "exp")
    path, n, problems = export_metrics(exp, tmp_path / "t.csv")
    assert path == tmp_path / "t.csv" and n > 0 and problems == []
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs pyarrow"):
            export_metrics(exp, format="parquet")
    else:
        pd = pytest.importorskip("pandas")
        path, n, _ = export_metrics(exp, format="parquet")
        assert path.name == "metrics.parquet" and len(pd.read_parquet(path)) == n
    assert cli_main(["export", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    # a metrics log that cannot be read: that run is left out, named, and the rest exported
    bad = next((exp / "runs").iterdir())
    (bad / "metrics.jsonl").write_text("not json\n{\"epoch\": 1}\n")
    path, m, problems = export_metrics(exp)
    assert m < n and len(problems) == 1 and bad.name in problems[0]
