"""The report's lattice sections on synthetic experiments (tests/report_synth.py): the lattice table with seed
means and spreads and each corner's memory, accuracy against the λ schedule, δ and off-sharing per corner; and
what each says when its inputs are missing."""
from __future__ import annotations

import json

import pytest

from archrelax.report import write_report
from report_synth import LATTICE, LATTICE_TWS, make_experiment, parse_report


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("lattice") / "full")
    return exp, parse_report(write_report(exp, analyse=False).read_text())


def test_lattice_table_has_every_corner_at_every_switch_time_with_memory(full):
    exp, secs = full
    sec = secs["lattice"]
    assert sec["tables"] == 1 and len(sec["imgs"]) == 1 and not sec["missing"]
    text = sec["text"]
    for label in ("CNN continued", "locality released (wide:full)", "sharing released (eLCN)",
                  "sharing released in tiles (tiled:2)", "both released (eFCN)", "soft fc: λ=10 exp:0.5"):
        assert label in text, label
    # the eFCN at t_w = 4 over its two seeds (the synthetic numbers of report_synth), and memory per corner
    assert "66.00 ± 0.00 (2)" in text
    assert "4.58 MiB" in text and "1.83 MiB" in text and "228.88 MiB" in text  # wide:full, tiled:2, eFCN
    assert "The CNN trained to its end: 60.25 ± 0.25 (2) % test accuracy." in text


def test_soft_section_compares_each_schedule_with_the_hard_relaxation_and_the_cnn(full):
    _, secs = full
    sec = secs["soft"]
    assert sec["tables"] == 1 and len(sec["imgs"]) == 1 and not sec["missing"]
    for row in ("fc λ=10 exp:0.5", "fc hard (λ = 0)", "CNN continued (λ → ∞)"):
        assert row in sec["text"]
    assert all(f"t_w = {t:g}" in sec["text"] for t in LATTICE_TWS)


def test_distance_per_corner_reads_offsharing_from_the_metrics(full):
    _, secs = full
    sec = secs["lattice-distance"]
    assert sec["tables"] == 1 and len(sec["imgs"]) == 1 and not sec["missing"]
    assert "not recorded" not in sec["text"]
    # tiled: δ = 0, off-sharing = the whole distance; wide: off-sharing 0 (report_synth's stand-in numbers)
    assert "sharing released in tiles (tiled:2)" in sec["text"] and "locality released (wide:full)" in sec["text"]


def test_lattice_sections_say_what_is_missing(tmp_path):
    exp = make_experiment(tmp_path / "partial", partial=True)  # its runs' metrics have no offsharing_ratio
    (exp / "analysis" / "memory.json").unlink()
    plan = json.loads((exp / "plan.json").read_text())
    for rid, run in plan.items():  # no soft run: the soft runs become plain eFCN runs of the plan
        if run["kind"] == "soft":
            run["config"]["soft_lambda"] = 0.0
    (exp / "plan.json").write_text(json.dumps(plan))
    secs = parse_report(write_report(exp, analyse=False).read_text())
    notes = {k: " | ".join(secs[k]["missing"]) for k in ("lattice", "lattice-distance")}
    assert "memory: analysis/memory.json is missing" in notes["lattice"]
    assert "not measured" in secs["lattice"]["text"] and secs["lattice"]["tables"] == 1
    assert "efcn-t4-s1) is running" in notes["lattice"]  # unfinished corners are listed
    assert "soft" not in secs  # no soft run in the plan: no section saying so
    assert "offsharing_ratio not recorded" in notes["lattice-distance"]
    assert secs["lattice-distance"]["imgs"]  # δ is still drawn


def test_an_experiment_without_the_lattice_has_no_lattice_sections(tmp_path):
    import csv
    import shutil

    exp = make_experiment(tmp_path / "plain")
    drop = {k for k, _, _ in LATTICE} | {"efcn", "elcn"}
    plan = {rid: r for rid, r in json.loads((exp / "plan.json").read_text()).items() if r["kind"] not in drop}
    (exp / "plan.json").write_text(json.dumps(plan))
    with open(exp / "summary.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["id"] in plan]
    with open(exp / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for d in (exp / "runs").iterdir():
        if d.name not in plan:
            shutil.rmtree(d)
    secs = parse_report(write_report(exp, analyse=False).read_text())
    # the spec asked for no lattice corner and no soft release: no section for them, and none for the eFCN/eLCN
    assert not {"lattice", "soft", "lattice-distance", "final-efcn", "final-elcn", "curves-elcn"} & set(secs), list(secs)
    assert secs["curves-efcn"]["imgs"] and secs["hierarchical"]["imgs"]
