"""Automatic switch times (switch_times: [auto]): the rule on hand-written metrics rows, the spec's checks, the plan's
auto runs, the choice recorded in switch.json and read back, and a tiny experiment end to end, resumed."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from archrelax.analysis.context import Context
from archrelax.analysis.settings import AnalysisSettings

from archrelax.protocol import SpecError, make_plan, run_experiment, spec_from_dict
from archrelax.protocol.dryrun import dry_run
from archrelax.report import write_report
from archrelax.store import ExperimentFolder, Run, StoreError
from archrelax.store.switch import DEFAULT_RULE, SwitchError, canonical_rule, choose, peak_sharpness
from archrelax.train.config import TrainConfig
from test_protocol import TINY

HAS_SHARPNESS = "sharpness_products" in TrainConfig.__dataclass_fields__
needs_sharpness = pytest.mark.skipif(not HAS_SHARPNESS, reason="TrainConfig has no sharpness_products (λ_max along "
                                     "training) in this version")


def _row(epoch: float, lam: float | None, converged: bool = True) -> dict:
    row = {"epoch": epoch, "step": int(epoch * 10), "train_loss": 1.0, "test_acc": 0.5}
    if lam is not None:
        row.update(lambda_max=lam, lambda_max_residual=1e-4 if converged else 0.3, lambda_max_converged=converged)
    return row


# ---- the rule ----------------------------------------------------------------------------------------------------
def test_peak_sharpness_picks_the_largest_converged_value():
    rows = [_row(0, 5.0), _row(1, 20.0), _row(2, 40.0), _row(4, 15.0)]
    assert peak_sharpness(rows) == (2.0, 40.0)
    assert choose("peak-sharpness", rows).to_json() == {"t_w": 2.0, "rule": "peak-sharpness", "value": 40.0}


def test_peak_sharpness_skips_unconverged_and_unmeasured_rows():
    rows = [_row(0, 5.0), _row(1, 90.0, converged=False), _row(1.5, None), _row(2, 40.0), _row(3, float("nan"))]
    assert peak_sharpness(rows) == (2.0, 40.0)


def test_peak_sharpness_ties_go_to_the_earliest_time():
    assert peak_sharpness([_row(0, 5.0), _row(1, 40.0), _row(2, 40.0), _row(3, 10.0)]) == (1.0, 40.0)


def test_no_converged_value_is_an_error_naming_the_run():
    with pytest.raises(SwitchError, match=r"run cnn-s0-abc: 2 evaluation\(s\) measured λ_max, none converged"):
        peak_sharpness([_row(0, 5.0, False), _row(1, 6.0, False)], where="run cnn-s0-abc")
    with pytest.raises(SwitchError, match="no evaluation row measured λ_max .*sharpness_products"):
        choose("peak-sharpness", [_row(0, None)], where="run cnn-s0-abc")


def test_rule_names_are_checked_against_the_registry():
    assert canonical_rule("auto") == DEFAULT_RULE == canonical_rule("auto:peak-sharpness")
    with pytest.raises(SwitchError, match="'auto:steepest' names no switch rule; allowed: 'auto' .*'auto:peak-"):
        canonical_rule("auto:steepest")
    with pytest.raises(SwitchError, match="no switch rule named 'x'; allowed: peak-sharpness"):
        choose("x", [])


# ---- the spec and the plan -------------------------------------------------------------------------------------------
AUTO = {**TINY, "baselines": [], "switch_times": [0, "auto"],
        "cnn": {**TINY["cnn"], **({"sharpness_products": 8} if HAS_SHARPNESS else {})}}


@needs_sharpness
def test_spec_refuses_auto_without_sharpness_along_the_cnn():
    with pytest.raises(SpecError, match=r"'switch_times' = \[0, auto\] asks for a time chosen from λ_max along the "
                       r"CNN's training, and 'cnn.sharpness_products' = 0 measures none; allowed: "
                       r"cnn.sharpness_products > 0"):
        spec_from_dict({**AUTO, "cnn": TINY["cnn"]})
    with pytest.raises(SpecError, match=r"'switch_times' = \[0, 'auto:nope'\] is out of range; allowed: .*'auto' "
                       r"\(rule peak-sharpness\) / 'auto:peak-sharpness'"):
        spec_from_dict({**AUTO, "switch_times": [0, "auto:nope"]})
    with pytest.raises(SpecError, match="only the 'lc>fc' grid is a target, which uses fixed times only"):
        spec_from_dict({**AUTO, "targets": ["lc>fc"], "switch_times": [0, 1, "auto"]})


@needs_sharpness
def test_plan_has_auto_runs_with_stable_ids_and_a_cnn_snapshotting_every_evaluation():
    spec = spec_from_dict({**AUTO, "switch_times": [0, "auto", "auto:peak-sharpness"]})  # one rule: one run
    assert spec.switch_list() == [0.0] and spec.auto_rules() == ["peak-sharpness"]
    plan = make_plan(spec)
    assert list(plan) == list(make_plan(spec_from_dict(AUTO)))  # stable ids; `auto` is the default rule
    cnn, fixed, auto = plan.values()
    assert cnn.config["snapshot_every_eval"] is True and auto.depends_on == cnn.id
    assert auto.id.startswith("efcn-twauto-s0-") and auto.auto == "peak-sharpness"
    assert (auto.t_w, auto.snapshot, auto.snapshot_epoch) == (None, None, None)  # chosen once the CNN is done
    # the fixed run keeps the id it has without the auto run (its parent's training identity is unchanged)
    assert fixed.id in make_plan(spec_from_dict({**AUTO, "switch_times": [0]}))
    assert next(iter(make_plan(spec_from_dict(TINY)).values())).config["snapshot_every_eval"] is False  # no auto


# ---- the record: switch.json -----------------------------------------------------------------------------------------
def _folder(tmp_path, rows: list[dict], status: str = "done") -> tuple[ExperimentFolder, Run]:
    exp = ExperimentFolder(tmp_path / "exp")
    cnn = Run(id="cnn-s0-x", kind="cnn", seed=0, config={}, identity="c")
    auto = Run(id="efcn-twauto-s0-y", kind="efcn", seed=0, config={}, depends_on=cnn.id, auto="peak-sharpness")
    exp.root.mkdir()
    exp.write_plan({cnn.id: cnn, auto.id: auto})
    folder = exp.run(cnn.id)
    folder.path.mkdir(parents=True)
    for r in rows:
        folder.append_metrics(r)
    folder.write_status(status, epoch=rows[-1]["epoch"], step=rows[-1]["step"])
    return exp, auto


def test_the_choice_is_recorded_once_and_read_back(tmp_path):
    exp, auto = _folder(tmp_path, [_row(0, 5.0), _row(1, 30.0), _row(2, 10.0)])
    assert exp.read_plan()[auto.id].t_w is None  # not chosen yet
    got = exp.resolve_auto(auto)
    assert (got.t_w, got.snapshot_epoch, got.snapshot) == (1.0, 1.0, "runs/cnn-s0-x/snapshots/epoch_1.pt")
    assert json.loads(exp.switch_path.read_text()) == {
        "cnn-s0-x": {"peak-sharpness": {"t_w": 1.0, "rule": "peak-sharpness", "value": 30.0}}}
    assert exp.read_plan()[auto.id] == got  # every reader sees the resolved run
    assert exp.read_plan(resolve=False)[auto.id] == auto  # plan.json itself is unchanged (the same plan digest)
    exp.run("cnn-s0-x").append_metrics(_row(3, 99.0))  # the rows change: the recorded choice stands
    assert exp.resolve_auto(auto).t_w == 1.0
    rows = list(csv.DictReader(open(exp.write_summary())))
    assert [(r["id"], r["t_w"], r["auto"]) for r in rows] == [("cnn-s0-x", "", ""),
                                                              (auto.id, "1", "peak-sharpness")]


def test_no_choice_before_the_cnn_is_done_or_from_a_damaged_record(tmp_path):
    exp, auto = _folder(tmp_path, [_row(0, 5.0)], status="running")
    with pytest.raises(SwitchError, match="run efcn-twauto-s0-y: its switch time .* cnn-s0-x, which is 'running'"):
        exp.resolve_auto(auto)
    assert not exp.switch_path.exists()
    exp.switch_path.write_text('{"cnn-s0-x": {"peak-sharpness": {"t_w": "one"}}}')
    with pytest.raises(StoreError, match="switch.json' is not a record of chosen switch times"):
        exp.read_plan()


# ---- end to end ------------------------------------------------------------------------------------------------------
@needs_sharpness
def test_tiny_experiment_chooses_records_and_resumes_with_the_same_time(tmp_path):
    out = tmp_path / "auto"
    logs: list[str] = []
    run_experiment(spec_from_dict(AUTO), out, log=logs.append)
    exp = ExperimentFolder(out)
    plan = exp.read_plan()
    cnn, fixed, auto = plan.values()
    rows = exp.run(cnn.id).read_metrics()
    assert all("lambda_max" in r for r in rows)
    want = max((r for r in rows if r["lambda_max_converged"]), key=lambda r: r["lambda_max"])["epoch"]
    assert auto.t_w == want and f"  {auto.id}: switch time by rule 'peak-sharpness': t_w = {want:g}" in logs
    assert [t for t, _ in exp.run(cnn.id).snapshots()] == [r["epoch"] for r in rows]  # one per evaluation
    config = exp.run(auto.id).read_config()
    assert config["init_from"].endswith(f"{cnn.id}/snapshots/epoch_{want:g}.pt")
    # the analyses read only the snapshots a planned run starts from, not one per evaluation
    ctx = Context(exp, AnalysisSettings())
    assert [t for t, _ in ctx.snapshots(cnn)] == sorted({0.0, want}) != [r["epoch"] for r in rows]
    assert exp.run(auto.id).read_status().status == "done"
    summary = {r["id"]: r for r in csv.DictReader(open(exp.summary_path))}
    assert (summary[auto.id]["t_w"], summary[auto.id]["auto"]) == (f"{want:g}", "peak-sharpness")
    html = write_report(out, analyse=False).read_text()
    assert f"<td>auto={want:g}</td>" in html  # the runs table
    assert f"auto={want:g} (peak-sharpness)" in html and "★ = the switch time chosen by the rule" in html
    text, _ = dry_run(spec_from_dict(AUTO), out)  # the plan table shows the recorded time, not the rule
    row = next(line for line in text.splitlines() if auto.id in line)
    assert f"auto={want:g}" in row and "auto:peak-sharpness" not in row

    # resumed: nothing to do, the same choice
    record = exp.switch_path.read_text()
    logs.clear()
    run_experiment(spec_from_dict(AUTO), out, log=logs.append)
    assert logs[0] == "3 runs planned: 3 already finished, 0 to run" and exp.switch_path.read_text() == record
    # the record, not a recomputation, decides: another recorded time is the one the retrained run starts from
    other = next(r["epoch"] for r in rows if r["epoch"] != want)
    shutil.rmtree(exp.run(auto.id).path)
    exp.switch_path.write_text(record.replace(f'"t_w": {float(want)}', f'"t_w": {float(other)}'))
    run_experiment(spec_from_dict(AUTO), out, log=logs.append)
    assert exp.run(auto.id).read_config()["init_from"].endswith(f"epoch_{other:g}.pt")
    assert list(exp.read_plan()) == list(plan)  # run ids stay as planned
