"""The lattice in the protocol: spec targets for every corner (cnn, wide:K, wide:full, tiled:T), soft-release
runs, relaxation paths (per-layer switch times, the hierarchical grid as paths), readable run ids that leave the
existing plans' ids alone, validation of every new key, and a small experiment of every new kind end to end."""
from __future__ import annotations

import pytest

from archrelax.protocol import load_spec, make_plan, spec_from_dict
from archrelax.protocol.spec import SpecError
from archrelax.store.plan import KINDS, RELAXED_KINDS, plan_to_json

TINY = {"model_kwargs": {"width": 2}, "data": "synthetic:1x28x28:2:40:20",
        "cnn": {"epochs": 2, "until_zero_loss": False}, "relaxed": {"epochs": 1, "until_zero_loss": False},
        "switch_times": [0, 1], "targets": ["fc"], "baselines": ["fcn"]}
DEMO_IDS = ["cnn-s0-57cf6c98", "efcn-tw0-s0-a451e995", "efcn-tw0.5-s0-6c738f18", "efcn-tw1-s0-ee4bb409",
            "efcn-tw2-s0-35998ffd", "efcn-tw4-s0-a5dd867b", "elcn-tw0-s0-89eb4546", "elcn-tw0.5-s0-9f92dfb9",
            "elcn-tw1-s0-4667aa9d", "elcn-tw2-s0-e4714868", "elcn-tw4-s0-8b596baa", "fcn-s0-ddac57d0"]


def problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        spec_from_dict(data)
    return e.value.problems


# ---- targets ----------------------------------------------------------------------------------------------


def test_every_corner_is_a_target_with_a_readable_id_and_the_other_runs_keep_theirs():
    spec = load_spec(preset="demo", overrides=["targets=[fc, lc, cnn, wide:full, wide:05, tiled:2x3]"])
    plan = make_plan(spec)
    assert [i for i in plan if i in DEMO_IDS] == DEMO_IDS  # adding targets adds runs, changes none
    switch = spec.switch_list()
    by_kind = {k: [r for r in plan.values() if r.kind == k] for k in KINDS}
    for kind, prefix, relax in (("cont", "cont", None), ("wide", "wide-full", "wide:full"), ("tiled", "tiled-2x3", "tiled:2x3")):
        runs = by_kind[kind] if kind != "wide" else [r for r in by_kind["wide"] if r.config["relax"] == relax]
        assert [r.t_w for r in runs] == switch
        for r in runs:
            assert r.id.startswith(f"{prefix}-tw{r.t_w:g}-s0-") and r.config["relax"] == relax
            assert plan[r.depends_on].kind == "cnn" and r.snapshot_epoch == r.t_w and r.t_w2 is None
    assert {r.config["relax"] for r in by_kind["wide"]} == {"wide:full", "wide:5"}  # canonical spelling
    assert [r.id.rsplit("-", 2)[0] for r in by_kind["wide"] if r.config["relax"] == "wide:5"][0] == "wide-5-tw0"
    assert all(r.config["soft_lambda"] == 0 for r in plan.values())


@pytest.mark.parametrize("targets, text", [
    (["fc", "xfc"], "(not 'xfc')"), (["wide"], "(not 'wide')"), (["wide:0"], "(not 'wide:0')"),
    (["tiled:2x"], "(not 'tiled:2x')"), (["lc>wide:3"], "(not 'lc>wide:3')"),
])
def test_bad_targets_name_the_value_and_every_valid_form(targets, text):
    (line,) = [p for p in problems({**TINY, "targets": targets}) if "'targets'" in p]
    assert text in line and "'cnn' (the CNN continued" in line and "'wide:full'" in line and "'tiled:T'" in line
    assert "\n" not in line


# ---- soft release --------------------------------------------------------------------------------------------


def test_soft_section_plans_one_run_per_lambda_and_schedule_at_every_switch_time():
    spec = spec_from_dict({**TINY, "soft": {"lambdas": [2, 5], "schedules": ["exp:0.50", "step:1"], "toward": "shared"}})
    plan = make_plan(spec)
    soft = [r for r in plan.values() if r.kind == "soft"]
    assert len(soft) == 2 * 2 * 2
    got = {(r.config["soft_lambda"], r.config["soft_schedule"], r.config["soft_toward"], r.t_w) for r in soft}
    assert got == {(lam, s, "shared", t) for lam in (2.0, 5.0) for s in ("exp:0.5", "step:1") for t in (0.0, 1.0)}
    ids = sorted(r.id.rsplit("-", 1)[0] for r in soft)
    assert "soft-shared-exp0.5-lam2-tw0-s0" in ids and "soft-shared-step1-lam5-tw1-s0" in ids
    assert all(r.config["relax"] == "fc" and plan[r.depends_on].kind == "cnn" for r in soft)
    # no soft section: the plan is what it was
    assert list(make_plan(spec_from_dict(TINY))) == [i for i in plan if not i.startswith("soft-")]


def test_relaxed_soft_keys_make_every_relaxed_run_soft_but_not_the_baselines_or_the_cnn():
    base = make_plan(spec_from_dict({**TINY, "targets": ["fc", "cnn"]}))
    spec = spec_from_dict({**TINY, "targets": ["fc", "cnn"],
                           "relaxed": {**TINY["relaxed"], "soft_lambda": 3, "soft_schedule": "linear:1"}})
    plan = make_plan(spec)
    for r in plan.values():
        soft = (r.config["soft_lambda"], r.config["soft_schedule"])
        assert soft == ((3.0, "linear:1") if r.kind == "efcn" else (0.0, "const")), r.id
    changed = {r.id for r in base.values()} ^ {r.id for r in plan.values()}
    assert {i.split("-")[0] for i in changed} == {"efcn"}  # the CNN, its continuation and the baseline keep their ids


@pytest.mark.parametrize("schedule", ["const", "linear:2", "linear:.5", "exp:0.5", "exp:1e-1", "step:0", "step:1"])
def test_every_schedule_form_in_the_spec_and_in_set(schedule):
    from archrelax.train.soft import SoftSchedule

    canon = SoftSchedule.parse(schedule).spec
    spec = spec_from_dict({**TINY, "soft": {"lambdas": [1], "schedules": [schedule]}})
    assert spec.soft.grid() == [(1.0, canon)]
    spec = load_spec(overrides=[f"relaxed.soft_schedule={schedule}", "relaxed.soft_lambda=1", f"soft.schedules={schedule}",
                                "soft.lambdas=1", "cnn.epochs=2", "cnn.until_zero_loss=false"])
    assert spec.relaxed.soft_schedule == schedule and spec.soft.schedules == [schedule]
    assert {r.config["soft_schedule"] for r in make_plan(spec).values() if r.kind in ("efcn", "soft")} == {canon}


@pytest.mark.parametrize("soft, text", [
    ({"lambdas": [1]}, "'soft' has lambdas [1.0] and schedules []"),
    ({"schedules": ["const"]}, "'soft' has lambdas [] and schedules ['const']"),
    ({"lambdas": [-1], "schedules": ["const"]}, "'soft.lambdas' = [-1] is out of range; allowed: numbers > 0"),
    ({"lambdas": [1], "schedules": ["exp"]}, "'soft.schedules' = ['exp'] is out of range; allowed: schedules 'const'"),
    ({"lambdas": [1], "schedules": ["cosine:2"]}, "(not 'cosine:2')"),
    ({"lambdas": [100], "schedules": ["const"]}, "'soft.lambdas' = 100: with SGD, lr·λ = 0.05·100 = 5 >= 1 + momentum"),
    ({"lambdas": [1], "schedules": ["const"], "target": "lc>fc"}, "'soft.target' = 'lc>fc' is out of range"),
    ({"lambdas": [1], "schedules": ["const"], "toward": "conv"}, "'soft.toward' = 'conv' has the wrong type"),
    ({"lambda": [1]}, "unknown key 'soft.lambda'; did you mean 'soft.lambdas'?"),
])
def test_bad_soft_settings_are_one_line_each(soft, text):
    found = [p for p in problems({**TINY, "soft": soft}) if text in p]
    assert len(found) == 1 and "\n" not in found[0], problems({**TINY, "soft": soft})


def test_bad_relaxed_soft_keys():
    out = problems({**TINY, "relaxed": {**TINY["relaxed"], "soft_lambda": -1, "soft_schedule": "linear", "soft_toward": "x"}})
    assert any("'relaxed.soft_lambda' = -1 is out of range; allowed: a number >= 0" in p for p in out)
    assert any("'relaxed.soft_schedule' = 'linear' is out of range; allowed: 'const', 'linear:E'" in p for p in out)
    assert any("'relaxed.soft_toward' = 'x' has the wrong type; allowed: one of 'cnn', 'local', 'shared'" in p for p in out)
    (line,) = problems({**TINY, "relaxed": {**TINY["relaxed"], "soft_lambda": 50}})
    assert line.startswith("'relaxed.soft_lambda' = 50: with SGD, lr·λ = 0.05·50 = 2.5 >= 1 + momentum = 1.9")


# ---- relaxation paths -----------------------------------------------------------------------------------------

PATH = {"name": "f0-then-f3", "steps": [{"at": 0, "to": "fc", "layers": ["features.0"]},
                                          {"at": 1, "to": "tiled:2", "layers": "features.3"},
                                          {"at": 1.5, "to": "fc"}]}


def test_a_path_is_a_chain_of_runs_each_from_the_previous_snapshot():
    spec = spec_from_dict({**TINY, "targets": [], "paths": [PATH], "relaxed": {"epochs": 1, "until_zero_loss": False}})
    plan = make_plan(spec)
    cnn = next(r for r in plan.values() if r.kind == "cnn")
    steps = [r for r in plan.values() if r.kind == "path"]
    assert [r.id.rsplit("-", 1)[0] for r in steps] == ["path-f0-then-f3-tw0-s0", "path-f0-then-f3-tw0-tw1-s0",
                                                        "path-f0-then-f3-tw0-tw1-tw1.5-s0"]
    assert [r.config["relax"] for r in steps] == ["fc", "tiled:2", "fc"]
    assert [r.config["relax_layers"] for r in steps] == [["features.0"], ["features.3"], None]
    assert [r.depends_on for r in steps] == [cnn.id, steps[0].id, steps[1].id]
    assert [r.snapshot_epoch for r in steps] == [0.0, 1.0, 0.5]  # each on its parent's own clock
    assert [r.config["snapshots"] for r in steps] == [[1.0], [0.5], []]
    assert [(r.t_w, r.t_w2) for r in steps] == [(0.0, None), (0.0, 1.0), (0.0, 1.5)]
    assert 0.0 in cnn.config["snapshots"]


def test_the_hierarchical_grid_is_a_set_of_paths_with_the_same_runs_and_ids():
    grid = {**TINY, "targets": ["lc>fc"], "switch_times": [0, 1, 2], "relaxed": {"epochs": 2, "until_zero_loss": False},
            "hierarchical": {"t_w1": [0, 1], "t_w2": [1, 2]}}
    pairs = [(a, b) for a in (0, 1) for b in (1, 2) if a <= b]
    paths = {**grid, "targets": [], "hierarchical": {},
             "paths": [{"name": f"h{a}{b}", "steps": [{"at": a, "to": "lc"}, {"at": b, "to": "fc"}]} for a, b in pairs]}
    a, b = make_plan(spec_from_dict(grid)), make_plan(spec_from_dict(paths))
    assert plan_to_json(a) == plan_to_json(b)  # same ids, order, configs, parents, snapshots
    assert [r.kind for r in a.values()].count("hier") == len(pairs) == 4
    # the packaged hierarchical preset, its grid given as paths instead
    spec = load_spec(preset="hierarchical")
    as_paths = [{"name": f"g{i}", "steps": [{"at": t1, "to": "lc"}, {"at": t2, "to": "fc"}]}
                for i, (t1, t2) in enumerate(spec.grid())]
    other = load_spec(preset="hierarchical", overrides=["targets=[fc]"])
    other.paths = as_paths
    assert list(make_plan(other)) == list(make_plan(spec))
    # paths sharing their first step share its run (one eLCN saving every snapshot its children need)
    elcn = [r for r in b.values() if r.kind == "elcn"]
    assert [r.config["snapshots"] for r in elcn] == [[1.0, 2.0], [0.0, 1.0]]


@pytest.mark.parametrize("paths, text", [
    ([{"steps": [{"at": 1, "to": "fc"}, {"at": 0.5, "to": "fc", "layers": ["x"]}]}],
     "'paths[0]' (path0).steps[1].at = 0.5 is before the previous step's 1"),
    ([{"name": "a", "steps": [{"at": 0, "to": "fc"}, {"at": 1, "to": "lc"}]}],
     "'paths[0]' (a).steps[1]: 'fc' -> 'lc' on the same layers is not a move up the lattice"),
    ([{"name": "a", "steps": [{"at": 0, "to": "wide:5"}, {"at": 1, "to": "tiled:2"}]}], "'wide:5' -> 'tiled:2'"),
    ([{"name": "a", "steps": [{"at": 0, "to": "fcn"}]}], "'paths[0]' (a).steps[0].to = 'fcn' is not a relaxation target"),
    ([{"name": "a", "steps": [{"at": -1, "to": "fc"}]}], "'paths[0]' (a).steps[0].at = -1 must be an epoch >= 0"),
    ([{"name": "a", "steps": [{"at": 0, "to": "fc", "layers": []}]}], "'paths[0]' (a).steps[0].layers = [] must be"),
    ([{"name": "a", "steps": [{"at": 0, "to": "fc", "layer": ["x"]}]}], "'paths[0]' (a).steps[0] = {"),
    ([{"name": "a", "steps": []}], "'paths[0]' (a).steps = [] must be a non-empty list"),
    ([{"name": "a b", "steps": [{"at": 0, "to": "fc"}]}], "'paths[0]'.name = 'a b' must be a word"),
    ([{"name": "a", "steps": [{"at": 0, "to": "fc"}]}, {"name": "a", "steps": [{"at": 1, "to": "fc"}]}],
     "'paths[1]'.name = 'a' repeats another path's name"),
    ([{"name": "a", "step": []}], "'paths[0]' = {'name': 'a', 'step': []} must be a mapping {name: ..., steps: [...]}"),
    ([{"name": "a", "steps": [{"at": 3, "to": "fc"}]}], "'paths' 'a' switches at [3] after the end of CNN training"),
    ([{"name": "a", "steps": [{"at": 0, "to": "lc"}, {"at": 2, "to": "fc"}]}],
     "'paths' 'a' steps 0 -> 2 need a run to train more than the relaxed runs' length 1 epochs"),
])
def test_bad_paths_are_one_line_each(paths, text):
    out = problems({**TINY, "paths": paths})
    assert sum(text in p for p in out) == 1 and all("\n" not in p for p in out), out


def test_paths_from_set_and_an_empty_comparison_is_refused():
    spec = load_spec(overrides=["cnn.epochs=2", "cnn.until_zero_loss=false", "targets=[]", "baselines=[]",
                                "paths=[{name: p, steps: [{at: 1, to: fc, layers: [features.0]}]}]"])
    assert spec.path_list()[0].steps[0].layers == ("features.0",)
    out = problems({**TINY, "targets": [], "baselines": []})
    assert any("'targets', 'baselines', 'paths' and 'soft' are all empty" in p for p in out)


# ---- the preset and a small experiment of every kind ---------------------------------------------------------


def test_lattice_preset_plans_the_four_corners_a_soft_and_an_attention_run_at_each_switch_time():
    spec = load_spec(preset="lattice")
    plan = make_plan(spec)
    switch = spec.switch_list()
    for seed in spec.seeds:
        runs = [r for r in plan.values() if r.seed == seed]
        for kind in ("cont", "wide", "elcn", "efcn", "soft", "attn"):
            assert sorted(r.t_w for r in runs if r.kind == kind) == switch, kind
        assert {r.config["relax"] for r in runs if r.kind == "wide"} == {"wide:full"}
        assert [r.kind for r in runs].count("cnn") == 1 and len(runs) == 1 + 6 * len(switch)
    assert set(spec.analyses) >= {"memory", "distance"}


@pytest.mark.slow  # ~20 s: nine runs and a whole report
def test_a_small_experiment_of_every_new_kind_runs_and_reports(tmp_path):
    """Every new kind trained end to end (wide, tiled, CNN continuation, soft, a two-step path with carried
    optimiser state), the distance analysis taking them as relaxed runs, the memory analysis counting each
    lattice target, and the report's lattice sections drawn from the real folder."""
    from archrelax.protocol import Store, run_experiment
    from archrelax.report import write_report
    from archrelax.store import read_result
    from report_synth import parse_report

    spec = spec_from_dict({**TINY, "switch_times": [1], "targets": ["cnn", "wide:full", "tiled:2", "lc", "fc"],
                           "baselines": [], "relaxed": {"epochs": 0.5, "until_zero_loss": False, "optimizer_state": "carry"},
                           "soft": {"lambdas": [5], "schedules": ["exp:0.25"]},
                           "paths": [{"name": "p", "steps": [{"at": 1, "to": "tiled:2", "layers": ["features.0"]},
                                                             {"at": 1.5, "to": "fc"}]}],
                           "train": {"batch_size": 10, "eval_times": [0, 0.5]}, "analyses": ["memory", "distance"]})
    out = tmp_path / "exp"
    run_experiment(spec, out)
    from archrelax.analysis.experiment import analyse_experiment

    analyse_experiment(out, only=["memory", "distance"])
    exp = Store(out)
    plan = exp.read_plan()
    assert {r.kind for r in plan.values()} == {"cnn", "cont", "wide", "tiled", "elcn", "efcn", "soft", "path"}
    assert all(exp.run(i).read_status().status == "done" for i in plan)
    dist = read_result(exp.result_path("distance"), "distance")
    assert {g.kind for g in dist.gain} == {k for k in RELAXED_KINDS if k not in ("hier", "attn")}
    memory = read_result(exp.result_path("memory"), "memory")
    assert [r.form for r in memory.rows] == ["cnn", "lc", "fc", "wide:full", "tiled:2", "fc_ref"]
    soft = next(r for r in plan.values() if r.kind == "soft")
    rows = exp.run(soft.id).read_metrics()
    assert rows[0]["soft_lambda"] == 5.0 and rows[-1]["soft_lambda"] == pytest.approx(5 * 2 ** -2)
    html = write_report(out, analyse=False).read_text()
    sections = parse_report(html)
    assert sections["lattice"]["tables"] == 1 and sections["lattice"]["imgs"]
    assert "wide:full" in sections["lattice"]["text"] and "MiB" in sections["lattice"]["text"]
    assert sections["soft"]["tables"] == 1 and sections["lattice-distance"]["imgs"]
    # off-sharing: drawn from the metrics when the trainer records offsharing_ratio, else said to be missing
    recorded = "offsharing_ratio" in exp.run(soft.id).read_metrics()[-1]
    assert ("offsharing_ratio not recorded" in sections["lattice-distance"]["text"]) != recorded
