"""The HTML report of an experiment folder: every section present, every linked image on disk, partial
experiments rendered with notes of what is missing. Experiment folders are synthetic (report_synth.py),
written after docs/architecture.md; analyses are not run (analyse=False) except where that is the point."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from archrelax.cli import main as cli_main
from archrelax.report import load_experiment, write_report
from report_synth import EXPECTED_SECTIONS, make_experiment, parse_report

FIGURES = {"claims": 0, "overview": 0, "curves-efcn": 1, "curves-elcn": 1, "final-efcn": 1, "final-elcn": 1,
           "hierarchical": 1, "distance": 1, "sharpness": 3, "ablation": 1, "templates": 1, "interpolation": 1,
           "memory": 0, "lattice": 1, "soft": 1, "lattice-distance": 1}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, dict]:
    exp = make_experiment(tmp_path_factory.mktemp("rep") / "full")
    index = write_report(exp, analyse=False)
    return index, parse_report(index.read_text())


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> tuple[Path, dict]:
    exp = make_experiment(tmp_path_factory.mktemp("rep") / "partial", partial=True)
    index = write_report(exp, analyse=False)
    return index, parse_report(index.read_text())


def _check_images(index: Path, secs: dict) -> int:
    n = 0
    for sec in secs.values():
        for src in sec["imgs"]:
            f = index.parent / src
            assert f.is_file(), f"{src} is linked but missing"
            data = f.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{src} is not a PNG"
            assert 5_000 < len(data) < 400_000, f"{src}: {len(data)} bytes (empty, or too big for dpi ~110)"
            n += 1
    # nothing stale or unlinked beside the page
    assert {p.name for p in (index.parent / "fig").iterdir()} == \
        {Path(s).name for sec in secs.values() for s in sec["imgs"]}
    return n


def test_full_report_has_every_section_and_figure(full):
    index, secs = full
    assert index == index.parent.parent / "report" / "index.html"
    assert set(EXPECTED_SECTIONS) <= set(secs), f"missing sections: {set(EXPECTED_SECTIONS) - set(secs)}"
    for sid, n in FIGURES.items():
        assert len(secs[sid]["imgs"]) == n, (sid, secs[sid]["imgs"])
    assert _check_images(index, secs) == sum(FIGURES.values())
    for sid, sec in secs.items():
        assert sec["imgs"] or sec["tables"] or "name: synthetic" in sec["text"], f"section {sid} is empty"
    # finished everything: no notes except the one deliberate non-converged eigenvalue
    noted = {sid: s["missing"] for sid, s in secs.items() if s["missing"]}
    assert set(noted) == {"sharpness"} and "not converged" in noted["sharpness"][0], noted
    assert "MiB" in secs["memory"]["text"] and "adam state" in secs["memory"]["text"]
    for rid in ("cnn-s0", "efcn-t16-s1", "hier-t4-16-s0", "lcn-s0"):
        assert rid in secs["runs"]["text"]
    assert "name: synthetic" in secs["spec"]["text"]
    # the final-accuracy table: mean ± std over the two seeds of eFCN(t_w=4) and its gain over the CNN
    assert "66.00 ± 0.00" in secs["final-efcn"]["text"] and "+5.75" in secs["final-efcn"]["text"]
    html = index.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # opens from disk


def test_partial_report_says_what_is_missing(partial):
    index, secs = partial
    assert set(EXPECTED_SECTIONS) <= set(secs)
    _check_images(index, secs)
    notes = {sid: " | ".join(s["missing"]) for sid, s in secs.items()}
    assert "templates.json is missing" in notes["templates"] and not secs["templates"]["imgs"]
    assert "interpolation.json is missing" in notes["interpolation"] and not secs["interpolation"]["imgs"]
    # planned runs without a folder, the failed one with its error, the running one
    assert "efcn-t16-s1) is pending" in notes["final-efcn"]
    assert "efcn-t0-s1) is failed: RuntimeError: loss is NaN at step 40" in notes["final-efcn"]
    assert "efcn-t4-s1) is running" in notes["final-efcn"]
    assert "hier-t4-16-s0) is pending" in notes["hierarchical"]
    assert "skipped run efcn-t0-s1: run failed" in notes["distance"]
    # what did finish is still drawn
    assert secs["curves-efcn"]["imgs"] and secs["final-efcn"]["imgs"] and secs["hierarchical"]["imgs"]
    assert "RuntimeError: loss is NaN at step 40" in secs["runs"]["text"]  # the error, in full, under the table


def test_empty_experiment_folder_renders_the_sections_it_can_with_notes(tmp_path):
    index = write_report(tmp_path, analyse=False)
    secs = parse_report(index.read_text())
    # no plan and no spec: nothing asks for eFCN, eLCN, hierarchical or lattice runs or for any analysis, so the
    # page has no section for them (a box of "missing" notes for what nobody asked for would mislead)
    assert list(secs) == ["claims", "overview", "curves-efcn", "runs", "spec"], list(secs)
    for sid in secs:
        assert secs[sid]["missing"], f"section {sid} neither shows nor explains anything"
    assert not any(s["imgs"] for s in secs.values())
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        write_report(tmp_path / "does-not-exist")


def test_relaxed_run_times_are_put_on_the_cnns_clock(partial):
    exp = load_experiment(partial[0].parent.parent)
    run = next(r for r in exp.runs if r.id == "efcn-t4-s0")
    x, _ = run.series("test_acc")
    assert x[0] == 4.0 and x == sorted(x)  # the trainer's global_epoch
    hier = next(r for r in exp.runs if r.id == "hier-t1-4-s0")
    assert (hier.t_w, hier.t_w2, hier.series("test_acc")[0][0]) == (1.0, 4.0, 4.0)
    d = exp.path / "runs" / "efcn-t1-s0"  # a log without global_epoch counts from 0 at the switch
    recs = [{k: v for k, v in json.loads(line).items() if k != "global_epoch"} for line in (d / "metrics.jsonl").open()]
    assert recs[0]["epoch"] == 0.0
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    exp = load_experiment(exp.path)
    assert next(r for r in exp.runs if r.id == "efcn-t1-s0").series("test_acc")[0][0] == 1.0
    running = next(r for r in exp.runs if r.id == "efcn-t4-s1")  # its truncated last line is skipped
    lines = (running.path / "metrics.jsonl").read_text().splitlines()
    assert running.status == "running" and len(running.metrics) == len(lines) - 1 and "trunc" in lines[-1]


def test_cli_report_and_analyse_state_shown(tmp_path, capsys):
    exp = tmp_path / "e"  # an experiment that has only its spec so far: quick to render and to analyse
    exp.mkdir()
    (exp / "spec.yaml").write_text("name: just-started\n")
    assert cli_main(["report", str(exp), "--no-analyse"]) == 0
    assert capsys.readouterr().out.strip() == str(exp / "report" / "index.html")
    assert "not run (--no-analyse)" in parse_report((exp / "report" / "index.html").read_text())["overview"]["text"]
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    # analyse=True runs the real analysis pass (or says it is unavailable or failed); the page says which
    index = write_report(exp, analyse=True)
    text = parse_report(index.read_text())["overview"]["text"].split("Analyses: ")[1]
    assert "--no-analyse" not in text and len(text.strip()) > 10


def test_claims_section_comes_first_and_links_each_verdict_to_its_figure(full):
    index, secs = full
    html = index.read_text()
    ids = re.findall(r'<section id="([^"]+)"', html)
    assert ids[0] == "claims" and re.search(r'<nav><ol><li><a href="#claims">', html)
    rows = re.findall(r'<tr id="claim-(\d+)">(.*?)</tr>', html, re.S)
    assert [int(n) for n, _ in rows] == list(range(1, 14))
    for n, row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert len(cells) == 6 and cells[1] and cells[2], (n, cells)  # claim, statistic, seeds, verdict, read from
        verdict = re.search(r'<a class="verdict verdict-([a-z-]+)" href="#([^"]+)">([a-z ]+)</a>', cells[4])
        assert verdict and verdict.group(1) == verdict.group(3).replace(" ", "-"), cells[4]
        assert verdict.group(2) in ids, f"claim {n} links to #{verdict.group(2)}, which the page lacks"
        assert all(a in ids for a in re.findall(r'href="#([^"]+)"', cells[5])) and cells[5]
    text = secs["claims"]["text"]
    # two seeds in the synthetic experiment: seed statistics are shown but not judged; per-run checks are
    assert "too few seeds (n=2; 3 needed)" in text and "+12.76 ± 0.27 pp (n=2)" in text
    assert re.search(r"no jump at the switch|no jump beyond the tolerance", text)
    assert not secs["claims"]["missing"]


def test_claims_section_says_what_would_measure_a_missing_claim(partial):
    _, secs = partial
    text = secs["claims"]["text"]
    assert "interpolation.json is missing" in text and "to measure: run `archrelax analyse" in text
    assert "not finished" in text  # the partial experiment's failed, running and pending runs are counted


def test_overview_says_what_was_computed_reused_failed_and_missing(tmp_path):
    from archrelax.analysis.experiment import AnalysisResults
    from archrelax.store import ExperimentFolder

    exp = make_experiment(tmp_path / "e", partial=True)  # templates and interpolation never computed
    folder = ExperimentFolder(exp)
    outcome = AnalysisResults()
    for name, how in (("memory", "computed"), ("distance", "computed"), ("sharpness", "reused"),
                      ("ablation", "failed")):
        outcome[name], outcome.how[name] = folder.read_result(name), how
    note = parse_report(write_report(exp, analyse=False, analysed=outcome).read_text())["overview"]["text"]
    assert "computed now: memory, distance; reused from the cache (inputs unchanged): sharpness; failed (see " \
           "their sections): ablation; missing (no result yet): templates, interpolation" in note
    assert "--no-analyse" not in note
    # without a pass (archrelax report --no-analyse): what is cached, from when, and what is missing
    note = parse_report(write_report(exp, analyse=False).read_text())["overview"]["text"]
    assert "not run (--no-analyse): cached results shown as they are: memory (from 2026-11-28T11:00:00+00:00)" in note
    assert "missing (no result yet): templates, interpolation" in note


def _with_sharpness_rows(exp: Path) -> None:
    """The CNNs' rows carry λ_max along training (as a CNN trained with sharpness_products writes them); seed 0's
    second evaluation did not converge."""
    for seed in (0, 1):
        run = exp / "runs" / f"cnn-s{seed}"
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        for i, r in enumerate(rows):
            r.update(lambda_max=10.0 + 5 * r["global_epoch"] / (1 + 0.1 * r["global_epoch"] ** 2) + seed,
                     lambda_max_residual=0.01, lambda_max_converged=not (seed == 0 and i == 1))
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = json.loads((exp / "plan.json").read_text())
    for seed in (0, 1):
        plan[f"cnn-s{seed}"]["config"] |= {"sharpness_products": 8, "sharpness_samples": 64}
    (exp / "plan.json").write_text(json.dumps(plan))


def test_sharpness_along_training_is_drawn_from_the_cnn_rows(tmp_path):
    exp = make_experiment(tmp_path / "dense")
    _with_sharpness_rows(exp)
    index = write_report(exp, analyse=False)
    sec = parse_report(index.read_text())["sharpness"]
    assert len(sec["imgs"]) == FIGURES["sharpness"] + 1 and any("sharpness_cnn_dense" in s for s in sec["imgs"])
    assert "from 8 Hessian-vector products on 64 training images" in index.read_text()  # the figure's caption
    assert any("λ_max along training not converged at 1 of" in m for m in sec["missing"]), sec["missing"]
    _check_images(index, parse_report(index.read_text()))

    # without the snapshot analysis the section is still there, with the dense curve and a note on the rest
    bare = make_experiment(tmp_path / "bare")
    _with_sharpness_rows(bare)
    (bare / "analysis" / "sharpness.json").unlink()
    (bare / "spec.yaml").write_text((bare / "spec.yaml").read_text().replace("sharpness, ", "").replace(", sharpness", ""))
    sec = parse_report(write_report(bare, analyse=False).read_text())["sharpness"]
    assert len(sec["imgs"]) == 1 and any("sharpness.json is missing" in m for m in sec["missing"])
