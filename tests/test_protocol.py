"""The relaxation protocol: spec validation, plans of every preset, the run store end to end (idempotence,
failures, resume after a real SIGKILL). Training uses tiny synthetic data so the whole file stays quick."""
from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from archrelax.cli import main as cli_main
from archrelax.protocol import (
    SpecError, Store, format_status, list_presets, load_spec, make_plan, run_experiment, spec_from_dict,
)

# 40 train / 20 test images of 2 classes, 28x28 (VanillaCNN's smallest input); batch 20 -> 2 steps per epoch
TINY = {
    "name": "tiny",
    "model": "vanilla_cnn",
    "model_kwargs": {"width": 2},
    "data": "synthetic:1x28x28:2:40:20",
    "train": {"batch_size": 20, "lr": 0.05, "eval_times": "every"},
    "cnn": {"epochs": 2, "until_zero_loss": False},
    "relaxed": {"epochs": 1, "until_zero_loss": False},
    "switch_times": [0, 1],
    "targets": ["fc"],
    "baselines": ["fcn"],
}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory) -> Path:
    """The TINY experiment trained once, uninterrupted: CNN, eFCN at t_w = 0 and 1, FCN baseline."""
    out = tmp_path_factory.mktemp("exp") / "tiny"
    logs: list[str] = []
    run_experiment(spec_from_dict(TINY), out, log=logs.append)
    assert logs[0] == "4 runs planned: 0 already finished, 4 to run"
    return out


# ---- plans ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list_presets())
def test_preset_plan_graph_and_ids(preset):
    spec = load_spec(preset=preset)
    plan = make_plan(spec)
    assert plan, preset
    assert [r.id for r in make_plan(load_spec(preset=preset)).values()] == list(plan)  # stable ids
    seen: set[str] = set()
    for run in plan.values():
        assert run.id.startswith(f"{run.kind}-")
        assert len(run.id.rsplit("-", 1)[1]) == 8
        if run.depends_on is not None:
            assert run.depends_on in seen, f"{run.id} comes before its parent {run.depends_on}"
            parent = plan[run.depends_on]
            if run.auto is not None:  # its switch time (and so its snapshot) is chosen once the CNN is done
                assert (run.snapshot, run.snapshot_epoch, run.t_w) == (None, None, None)
                assert parent.config["snapshot_every_eval"] is True
                seen.add(run.id)
                continue
            assert run.snapshot == f"runs/{parent.id}/snapshots/epoch_{run.snapshot_epoch:g}.pt"
            assert run.snapshot_epoch in parent.config["snapshots"]
        seen.add(run.id)
    kinds = [r.kind for r in plan.values()]
    switch = spec.switch_list()
    assert kinds.count("cnn") == len(spec.seeds)
    assert 0.0 in switch and max(switch) <= spec.cnn.length()
    for seed in spec.seeds:  # every seed relaxes at every switch time (presets may have several seeds)
        if "fc" in spec.targets:
            assert sorted(r.t_w for r in plan.values() if r.kind == "efcn" and r.seed == seed and r.auto is None) == switch
        if "lc" in spec.targets:
            assert sorted(r.t_w for r in plan.values() if r.kind == "elcn" and r.seed == seed and r.auto is None) == switch
    for b, seed in ((b, s) for b in spec.baselines for s in spec.seeds):  # one baseline of each kind per seed
        (base,) = [r for r in plan.values() if r.kind == b and r.seed == seed]
        assert base.depends_on is None and base.config["model"] == b
        assert base.config["model_kwargs"]["base"] == spec.model
    for run in plan.values():
        if run.kind == "hier":  # eLCN at t_w1, then its own-clock snapshot at t_w2 - t_w1
            parent = plan[run.depends_on]
            assert parent.kind == "elcn" and parent.t_w == run.t_w <= run.t_w2
            assert run.snapshot_epoch == pytest.approx(run.t_w2 - run.t_w)
            assert run.config["relax"] == "fc" and parent.config["relax"] == "lc"
    if preset == "hierarchical":
        assert kinds.count("hier") == len(spec.grid()) == 8  # t_w1 in {0,2,8}, t_w2 in {2,8,32}, t_w1 <= t_w2
    if preset == "demo":
        assert len(switch) >= 5 and {"cnn", "fcn", "efcn", "elcn"} <= set(kinds)


def test_changing_one_option_changes_only_the_runs_it_affects():
    base = make_plan(spec_from_dict(TINY))
    longer = make_plan(spec_from_dict({**TINY, "relaxed": {"epochs": 2, "until_zero_loss": False}}))
    assert {r.id for r in base.values() if r.kind == "cnn"} == {r.id for r in longer.values() if r.kind == "cnn"}
    assert not {r.id for r in base.values() if r.kind != "cnn"} & set(longer)
    more = make_plan(spec_from_dict({**TINY, "switch_times": [0, 1, 2]}))
    # the CNN must save one more snapshot (new id); relaxed runs at unchanged switch times keep theirs
    assert {r.id for r in base.values() if r.kind in ("efcn", "fcn")} < set(more)
    assert not {r.id for r in base.values() if r.kind == "cnn"} & set(more)
    seeds = make_plan(spec_from_dict({**TINY, "seeds": [0, 1]}))
    assert set(base) < set(seeds) and len(seeds) == 2 * len(base)


# ---- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    ({"lr": 0.1}, ["unknown key 'lr'", "did you mean 'train.lr'"]),
    ({"train": {"lrr": 0.1}}, ["unknown key 'train.lrr'", "did you mean 'train.lr'", "valid here:"]),
    ({"train": {"lr": -1}}, ["'train.lr' = -1 is out of range", "a number > 0"]),
    ({"train": {"momentum": 1.5}}, ["'train.momentum' = 1.5", "0 <= momentum < 1"]),
    ({"train": {"batch_size": "big"}}, ["'train.batch_size' = 'big' has the wrong type", "an integer"]),
    ({"cnn": {"epochs": 4, "until_zero_loss": False}, "switch_times": [0, 2, 5]},
     ["'switch_times' = [0, 2, 5]", "[5] after the end of CNN training", "epoch 4", "times in [0, 4]"]),
    ({"targets": ["fc", "cnm"]}, ["'targets'", "'fc' (eFCN), 'lc' (eLCN), 'lc>fc'", "'wide:full'", "(not 'cnm')"]),
    ({"baselines": ["mlp"]}, ["'baselines'", "'fcn', 'lcn'"]),
    ({"switch_times": "log:x"}, ["'switch_times' = 'log:x' is out of range", "'log:N'"]),
    ({"analyses": ["sharpnes"]}, ["unknown analysis 'sharpnes'", "did you mean 'sharpness'"]),
    ({"model": "vanila_cnn"}, ["'model' = 'vanila_cnn' is not a registered model", "did you mean 'vanilla_cnn'"]),
    ({"cnn": {"epochs": 5, "until_zero_loss": True}}, ["'cnn.epochs' = 5", "conflict", "max_epochs"]),
    ({"relaxed": {"epochs": 2, "until_zero_loss": False}, "targets": ["lc>fc"], "cnn": {"epochs": 8, "until_zero_loss": False},
      "hierarchical": {"t_w1": [0], "t_w2": [4]}}, ["t_w2 - t_w1 <= 2"]),
])
def test_invalid_specs_name_key_value_and_what_is_allowed(data, expected):
    with pytest.raises(SpecError) as e:
        spec_from_dict(data)
    for text in expected:
        assert text in str(e.value), str(e.value)


def test_all_problems_reported_together_and_set_overrides_are_typed(tmp_path, capsys):
    with pytest.raises(SpecError) as e:
        spec_from_dict({"train": {"lr": 0, "batch_size": 0}, "seeds": [0, 0]})
    assert len(e.value.problems) == 3
    spec = load_spec(preset="demo", overrides=["train.lr=0.2", "seeds=0,1", "targets=fc", "model_kwargs.width=3"])
    assert (spec.train.lr, spec.seeds, spec.targets, spec.model_kwargs["width"]) == (0.2, [0, 1], ["fc"], 3)
    assert isinstance(load_spec(overrides=["cnn.max_epochs=7"]).cnn.max_epochs, float)
    # through the command line: exit code 2 and the message, nothing created
    rc = cli_main(["run", "--preset", "demo", "--set", "train.lrr=0.1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key 'train.lrr'; did you mean 'train.lr'?" in err
    assert not (tmp_path / "x").exists()
    assert cli_main(["run", "--preset", "nope"]) == 2
    assert "no preset named 'nope'" in capsys.readouterr().err


# ---- running -------------------------------------------------------------------------------------------


def test_run_writes_store_and_second_run_does_no_training(tiny_experiment, tmp_path):
    exp = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, exp)
    store = Store(exp)
    rows = store.read_summary()
    assert [r["kind"] for r in rows] == ["cnn", "efcn", "efcn", "fcn"]
    assert all(r["status"] == "done" for r in rows), rows
    assert [r["t_w"] for r in rows] == ["", "0", "1", ""]
    assert [r["epochs"] for r in rows] == ["2", "1", "1", "1"]
    assert all(0 <= float(r["best_test_acc"]) <= 1 and r["final_test_loss"] for r in rows)
    assert rows[1]["final_offlocal_ratio"] and not rows[0]["final_offlocal_ratio"]
    assert yaml.safe_load((exp / "spec.yaml").read_text())["name"] == "tiny"
    plan = store.read_plan()
    assert list(plan) == list(make_plan(spec_from_dict(TINY))) == [r["id"] for r in rows]  # order kept on disk
    # the relaxed runs started from the CNN's snapshots, recorded relative to their own folder (so the
    # experiment folder can be copied or moved whole)
    for rid, run in plan.items():
        folder = exp / "runs" / rid
        cfg = yaml.safe_load((folder / "config.json").read_text())
        want = Path(run.snapshot) if run.depends_on else None  # switch times on the step grid: exact names
        assert cfg["init_from"] is None or not Path(cfg["init_from"]).is_absolute()
        got = cfg["init_from"] and Path(os.path.normpath(folder / cfg["init_from"])).relative_to(exp)
        assert got == want
        assert store.snapshot_for(run) == (store.root / want if run.depends_on else None)

    files = {p: p.stat().st_mtime_ns for p in (exp / "runs").rglob("*") if p.is_file() and p.name != ".lock"}
    logs: list[str] = []
    run_experiment(spec_from_dict(TINY), exp, log=logs.append)
    assert logs == ["4 runs planned: 4 already finished, 0 to run"]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # no run folder file rewritten
    assert _rows(exp / "summary.csv") == _rows(tiny_experiment / "summary.csv")


def test_failing_run_does_not_stop_others_and_shows_in_status(tiny_experiment, tmp_path, capsys):
    exp = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, exp)
    store = Store(exp)
    plan = store.read_plan()
    efcn1 = next(r for r in plan.values() if r.kind == "efcn" and r.t_w == 1)
    fcn = next(r for r in plan.values() if r.kind == "fcn")
    # the eFCN at t_w = 1 must start again from a damaged snapshot; the baseline after it must still train
    for r in (efcn1, fcn):
        shutil.rmtree(store.run(r.id).path)
    snap = store.snapshot_for(efcn1)
    assert snap == store.run(efcn1.depends_on).snapshot_path(1)
    snap.write_bytes(snap.read_bytes()[:100])
    logs: list[str] = []
    run_experiment(spec_from_dict(TINY), exp, log=logs.append)
    assert logs[0] == "4 runs planned: 2 already finished, 2 to run"
    status = {r["id"]: r for r in store.read_summary()}
    assert status[efcn1.id]["status"] == "failed" and "epoch_1.pt" in status[efcn1.id]["error"]
    assert status[fcn.id]["status"] == "done"
    assert store.run(efcn1.id).error_log_path.read_text().startswith("Traceback")

    assert cli_main(["status", str(exp)]) == 1  # a failed run: the exit status says so (0 only when none went wrong)
    out = capsys.readouterr().out
    assert "1 run(s) went wrong (failed)" in out
    line = next(ln for ln in out.splitlines() if ln.startswith(efcn1.id))
    assert "failed" in line and "epoch_1.pt" in line
    assert out.strip().endswith("4 runs: 3 done, 1 failed")


def test_resume_after_sigkill_matches_uninterrupted(tiny_experiment, tmp_path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    exp = tmp_path / "killed"
    cmd = [sys.executable, "-m", "archrelax.cli", "run", str(spec_file), "--out", str(exp)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill as soon as a relaxed run has written its first checkpoint: the CNN is done, an eFCN half-way
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any((exp / "runs").glob("efcn-*/checkpoints/last.pt")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(exp)
    before = {r["id"]: r["status"] for r in store.read_summary()}
    assert "pending" in before.values() or "running" in before.values()
    assert "interrupted" in format_status(store) or "pending" in format_status(store)

    done = subprocess.run([sys.executable, "-m", "archrelax.cli", "run", str(exp)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already finished" in done.stdout
    assert _rows(exp / "summary.csv") == _rows(tiny_experiment / "summary.csv")


def test_locked_run_is_waited_for_not_trained_twice(tiny_experiment, tmp_path):
    exp = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, exp)
    store = Store(exp)
    fcn = next(r for r in store.read_plan().values() if r.kind == "fcn")
    shutil.rmtree(store.run(fcn.id).path)
    release = threading.Event()
    held = threading.Event()

    def other_process() -> None:  # another open file description: flock treats it like another process
        with store.run(fcn.id).lock():
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_process)
    t.start()
    held.wait(10)
    from archrelax.protocol import run_one

    assert run_one(str(exp), fcn.id)["status"] == "busy"
    logs: list[str] = []
    timer = threading.Timer(1.0, release.set)
    timer.start()
    run_experiment(spec_from_dict(TINY), exp, log=logs.append, poll_s=0.1)
    t.join()
    assert any("held by" in ln and fcn.id in ln for ln in logs), logs
    assert store.run(fcn.id).read_status().status == "done"


def test_worker_processes_give_the_same_summary(tiny_experiment, tmp_path):
    exp = tmp_path / "workers"
    run_experiment(spec_from_dict(TINY), exp, workers=2, poll_s=0.1, log=lambda s: None)
    # same runs, same results; a worker uses fewer threads, so float sums may differ in the last digits
    got, want = _rows(exp / "summary.csv"), _rows(tiny_experiment / "summary.csv")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):
        for k in w:
            if k.startswith(("final_", "best_")) and w[k]:
                assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4), (g["id"], k)
            else:
                assert g[k] == w[k], (g["id"], k)


@pytest.mark.parametrize("workers", [1, 2])
def test_lockstep_gives_the_same_summary_and_ordinary_runs(tiny_experiment, tmp_path, workers, monkeypatch):
    if workers == 2:  # the GPU's batched layers, in spawned workers (they inherit the environment)
        monkeypatch.setenv("ARCHRELAX_LOCKSTEP_BATCHED", "1")
    exp = tmp_path / "lockstep"
    logs: list[str] = []
    run_experiment(spec_from_dict({**TINY, "lockstep": True}), exp, workers=workers, poll_s=0.1, log=logs.append)
    plan = Store(exp).read_plan()
    efcn = [rid for rid, r in plan.items() if r.kind == "efcn"]
    assert any(ln.startswith("lockstep: true with a cpu executor") for ln in logs), logs  # noted, and used anyway
    assert f"  lockstep: 2 efcn runs in one process: {', '.join(efcn)}" in logs, logs
    got, want = _rows(exp / "summary.csv"), _rows(tiny_experiment / "summary.csv")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):  # lockstep computes each run's own numbers: equal to float tolerance
        for k in w:
            if k.startswith(("final_", "best_")) and w[k]:
                assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-5), (g["id"], k)
            else:
                assert g[k] == w[k], (g["id"], k)
    for rid in efcn:  # ordinary run folders
        folder = Store(exp).run(rid)
        assert folder.read_status().status == "done" and folder.final_path.is_file() and folder.holder() is None
    # lockstep is a runtime key: the same experiment without it is accepted, with nothing left to train
    logs.clear()
    run_experiment(spec_from_dict(TINY), exp, log=logs.append)
    assert logs == ["4 runs planned: 4 already finished, 0 to run"]


def test_lockstep_groups_wait_for_runs_whose_snapshot_is_coming():
    from archrelax.protocol.executors import lockstep_groups

    spec = spec_from_dict({**TINY, "seeds": [0, 1], "targets": ["fc", "lc"]})
    plan = make_plan(spec)
    by = lambda kind, seed=None: [r for r, x in plan.items() if x.kind == kind and seed in (None, x.seed)]  # noqa: E731
    groups, held = lockstep_groups(plan, list(plan))
    assert sorted(map(sorted, groups)) == sorted(map(sorted, [by("cnn"), by("efcn"), by("elcn"), by("fcn")]))
    # seed 0's relaxed runs are ready, seed 1's CNN still trains: they wait to be one group with seed 1's
    ready = by("efcn", 0) + by("elcn", 0) + by("fcn")
    groups, held = lockstep_groups(plan, ready, waiting=by("efcn", 1))
    assert sorted(held) == sorted(by("efcn", 0)) and sorted(map(sorted, groups)) == sorted([by("elcn", 0), by("fcn")])


def test_demo_command_prints_summary_and_writes_report(tmp_path, capsys):
    tiny = ["data=synthetic:1x28x28:2:40:20", "train_size=null", "model_kwargs.width=2", "train.batch_size=20",
            "train.eval_times=every", "cnn.epochs=1", "relaxed.epochs=0.5", "switch_times=[0,1]", "analyses=[]"]
    rc = cli_main(["demo", "--out", str(tmp_path / "demo"), *[a for kv in tiny for a in ("--set", kv)]])
    out = capsys.readouterr().out
    assert rc == 0, out
    kinds = [r["kind"] for r in Store(tmp_path / "demo").read_summary()]
    assert sorted(kinds) == ["cnn", "efcn", "efcn", "elcn", "elcn", "fcn"]
    assert "final test" in out and str(tmp_path / "demo" / "summary.csv") in out
    if "report: " in out:  # the report step is optional (another area); when present it wrote the page
        assert (tmp_path / "demo" / "report" / "index.html").is_file()
        page = (tmp_path / "demo" / "report" / "index.html").read_text()
        # no analysis was requested (analyses=[]): the overview says so, not "--no-analyse"
        note = re.search(r"<p>Analyses: (.*?)</p>", page, re.S).group(1)
        assert note.strip() == "none", note  # the report computes and lists only the spec's analyses
        assert 'id="claims"' in page
    assert re.search(r"claims of the paper: .*not enough evidence.* \(details: `archrelax claims ", out), out


def test_analysis_settings_are_validated_and_read_back_from_the_experiment(tmp_path):
    from archrelax.analysis.experiment import settings_from_spec

    with pytest.raises(SpecError) as e:
        load_spec(preset="demo", overrides=["analysis_settings.sharpnes_samples=3"])
    assert "sharpnes_samples" in str(e.value) and "sharpness_samples" in str(e.value)

    # the resolved spec written into the experiment carries them, so `analyse`/`report` use the same settings
    tiny = ["data=synthetic:1x28x28:2:20:10", "train_size=null", "model_kwargs.width=2", "cnn.epochs=0.5",
            "relaxed.epochs=0.5", "switch_times=[0]", "targets=fc", "baselines=[]", "train.batch_size=10"]
    spec = load_spec(preset="demo", overrides=["analysis_settings.trace_probes=3", *tiny])
    root = run_experiment(spec, tmp_path / "exp", log=lambda *a: None)
    s = settings_from_spec(root)
    assert s.trace_probes == 3 and s.sharpness_max_iter == 10  # override, and the demo preset's own value
    assert settings_from_spec(tmp_path).trace_probes == 10  # no spec: the defaults


# ---- archrelax run --dry-run ---------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (and root itself) with its bytes and mtime: equal only if nothing was written."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))] if root.exists() else []:
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None, st.st_mtime_ns, st.st_size)
    return out


def test_dry_run_of_a_fresh_folder_prints_plan_footprint_and_guard_and_creates_nothing(tmp_path, capsys):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "new" / "exp"
    before = _tree(tmp_path)
    assert cli_main(["run", str(spec_file), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert _tree(tmp_path) == before and not out.parent.exists()
    assert "does not exist yet" in text and "plan: 4 runs, 0 finished, 4 to run (executor local, 1 worker)" in text
    for run in make_plan(spec_from_dict(TINY)).values():  # every run id, with its kind, t_w and seed, no status
        row = next(ln for ln in text.splitlines() if ln.startswith(run.id)).split()
        assert row == [run.id, run.kind, *([f"{run.t_w:g}"] if run.t_w is not None else []), "0", "-"], row
    assert "footprint of vanilla_cnn on 1x28x28 inputs" in text and "eFCN params" in text  # archrelax footprint's table
    guard = text.split("memory guard")[1]
    assert re.search(r"  fc \(efcn, fcn: 3 runs\): needs [\d.]+ [kMG]?B on cpu: fits \([\d.]+ [kMG]?B available\)",
                     guard), guard
    # with --preset, and the guard's bytes are relax()'s own count
    from archrelax.embed.relax import memory_need
    from archrelax.models import create_model

    need = sum(memory_need(create_model("vanilla_cnn", width=2, num_classes=2, in_channels=1, input_size=28),
                           "fc").values())
    from archrelax.embed.footprint import human_bytes

    assert f"needs {human_bytes(need)} on cpu" in guard
    assert cli_main(["run", "--preset", "demo", "--set", "targets=[lc]", "--out", str(out), "--dry-run"]) == 0
    assert "  lc (elcn: 5 runs)" in capsys.readouterr().out and not out.parent.exists()


def test_dry_run_of_an_existing_experiment_shows_status_and_writes_nothing(tiny_experiment, tmp_path, capsys,
                                                                          monkeypatch):
    exp = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, exp)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    before = _tree(tmp_path)
    for argv in (["run", str(exp)], ["run", str(spec_file), "--out", str(exp)]):
        assert cli_main([*argv, "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert "plan: 4 runs, 4 finished, 0 to run" in text
        assert all(next(ln for ln in text.splitlines() if ln.startswith(rid)).split()[-1] == "done"
                   for rid in Store(exp).read_plan())
    # another spec: the refusal `archrelax run` would give, exit status 1; with --force the plan it would train
    assert cli_main(["run", str(exp), "--set", "train.lr=0.2", "--dry-run"]) == 1
    text = capsys.readouterr().out
    assert "would refuse this spec" in text and "train.lr: 0.05 -> 0.2" in text and "4 to run" in text
    assert cli_main(["run", str(exp), "--set", "train.lr=0.2", "--force", "--dry-run"]) == 0
    capsys.readouterr()
    # a relaxation that would not fit: relax()'s guard refuses it, so the dry run says so (exit status 1)
    monkeypatch.setattr(sys.modules["archrelax.embed.relax"], "available_memory", lambda device: 999)
    assert cli_main(["run", str(exp), "--dry-run"]) == 1
    assert "on cpu: does not fit (999 B available" in capsys.readouterr().out
    # options checked as by `archrelax run`: a bad --workers is refused, still nothing written
    assert cli_main(["run", str(exp), "--workers", "0", "--dry-run"]) == 2
    assert "workers" in capsys.readouterr().err
    assert _tree(tmp_path) == before
