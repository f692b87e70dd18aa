"""Failures reported as what they are: an experiment whose runs failed makes `archrelax status` exit 1 and the
claims say "failed" (not "not finished"); `archrelax report` computes only the analyses the spec lists."""
from __future__ import annotations

import json
import shutil

import pytest

from archrelax.analysis.claims import evaluate_claims
from archrelax.cli import main as cli_main
from archrelax.report import write_report
from archrelax.store import ExperimentFolder
from claims_synth import Synth
from report_synth import parse_report


def test_every_run_failed(tmp_path, capsys):
    s = Synth().build()
    for r in s.runs.values():
        r.status = "failed"
    root = s.write(tmp_path / "exp")
    found = evaluate_claims(root)
    reasons = " | ".join(c.reason for c in found)
    assert "not finished" not in reasons, reasons
    c2 = found[1]  # eFCN(0) beats the FCN: every eFCN and FCN failed
    assert c2.verdict == "not enough evidence"
    assert "of 6 planned efcn/fcn runs, 6 failed (" in c2.reason and "see `archrelax status`" in c2.reason, c2.reason
    assert cli_main(["status", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{len(s.runs)} run(s) went wrong (failed)" in out


def test_status_exit_codes(tmp_path, capsys):
    s = Synth().build()
    s.runs["efcn-tw1-s0"].status = "diverged"
    s.runs["efcn-tw2-s1"].status = "running"
    root = s.write(tmp_path / "exp")
    assert cli_main(["status", str(root)]) == 1  # diverged: a run went wrong
    assert "went wrong (diverged)" in capsys.readouterr().out
    found = evaluate_claims(root)
    assert any("1 diverged" in c.reason for c in found)
    exp = ExperimentFolder(root)
    exp.run("efcn-tw1-s0").write_status("done")
    assert cli_main(["status", str(root)]) == 1  # done without its final.pt: an incomplete record
    assert "incomplete" in capsys.readouterr().out
    shutil.copyfile(exp.run("efcn-tw1-s1").final_path, exp.run("efcn-tw1-s0").final_path)
    assert cli_main(["status", str(root)]) == 0  # a run still running (its lock free: interrupted) is not a failure
    assert "went wrong" not in capsys.readouterr().out
    assert cli_main(["status", str(tmp_path / "nope")]) == 2


def test_report_computes_only_the_spec_analyses(tmp_path, monkeypatch):
    root = Synth().write(tmp_path / "exp")
    exp = ExperimentFolder(root)
    for name in ("sharpness", "interpolation", "templates", "ablation"):  # results the spec never asked for
        exp.result_path(name).unlink(missing_ok=True)
    exp.spec_path.write_text(exp.spec_path.read_text() + "analyses: [distance]\n")
    asked = []

    def fake(exp_dir, only=None, **kw):
        from archrelax.analysis.experiment import AnalysisResults

        asked.append(only)
        return AnalysisResults()

    monkeypatch.setattr("archrelax.analysis.experiment.analyse_experiment", fake)
    secs = parse_report(write_report(root, analyse=True).read_text())
    assert asked == [["distance"]]
    # sections: the spec's analysis and the ones computed by hand (memory here); none for what nobody asked for
    assert {"distance", "memory"} <= set(secs) and not {"sharpness", "interpolation", "templates", "ablation"} & set(secs)
    note = secs["overview"]["text"]
    assert note.rstrip().endswith("missing (no result yet): distance"), note  # only what the spec asked for
    exp.spec_path.write_text("name: synth\n")  # no analyses listed: none computed
    asked.clear()
    secs = parse_report(write_report(root, analyse=True).read_text())
    assert asked == [] and "the spec lists none" in secs["overview"]["text"]
    # a claim whose section is not on the page names it as plain text, no dead link
    html = (root / "report" / "index.html").read_text()
    row = html.split('id="claim-7"')[1].split("</tr>")[0]
    assert 'href="#sharpness"' not in row and "verdict" in row
