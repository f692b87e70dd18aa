"""The run store (archrelax.store), the one owner of the experiment folder's format: its reading policies,
its typed analysis results, and the defects it fixes, each checked through the real commands: two trainers
on one folder, a different spec into an existing experiment, file modes under the umask, a rerun of a
finished experiment, a folder left by a failed start, and corrupt plan.json / status.json."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from archrelax.cli import main as cli_main
from archrelax.store import (
    FINISHED, STATES, ExperimentFolder, Run, RunBusyError, RunFolder, SpecMismatchError, Status, StoreError,
    read_metrics, spec_changes,
)
from archrelax.store import results as R

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# 40 train / 20 test images of 2 classes, 28x28 (VanillaCNN's smallest input); batch 20 -> 2 steps per epoch
TINY = {
    "name": "tiny-store",
    "model": "vanilla_cnn",
    "model_kwargs": {"width": 2},
    "data": "synthetic:1x28x28:2:40:20",
    "train": {"batch_size": 20, "lr": 0.05, "eval_times": "every", "device": "cpu"},
    "cnn": {"epochs": 1, "until_zero_loss": False},
    "relaxed": {"epochs": 1, "until_zero_loss": False},
    "switch_times": [0, 1],
    "targets": ["fc"],
    "baselines": [],
}
TRAIN = ["train", "vanilla_cnn", "--data", "synthetic:1x28x28:2:40:20", "--batch-size", "20", "--device", "cpu",
         "--eval-times", "every", "--no-progress"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _spec_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


# ---- metrics policy -------------------------------------------------------------------------------------------


def test_metrics_torn_last_line_is_ignored_corrupt_middle_line_names_file_and_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 0.0, "step": 0}, {"epoch": 1.0, "step": 2}]
    good = "".join(json.dumps(r) + "\n" for r in rows)
    assert read_metrics(tmp_path / "none.jsonl") == []
    for torn in ('{"epoch": 2.0, "st', '{"epoch": 2.0, "st\n', "\x00\x00\x00"):  # with or without its newline
        p.write_text(good + torn)
        assert read_metrics(p) == rows, torn
    p.write_text(good + "not json\n" + json.dumps({"epoch": 2.0}) + "\n")
    with pytest.raises(StoreError, match=r"metrics.jsonl' line 3 of 4 is corrupt") as e:
        read_metrics(p)
    assert e.value.path == str(p)
    p.write_text(good + "[1, 2]\n" + good)  # valid JSON but not a record: corrupt too
    with pytest.raises(StoreError, match="line 3"):
        read_metrics(p)
    # every reader shares the policy: the trainer's, the analyses', utils'
    from archrelax.analysis import read_metrics as analysis_read
    from archrelax.train import read_metrics as train_read
    from archrelax.utils import read_jsonl

    assert train_read is analysis_read is read_jsonl is read_metrics
    # the summary row of a run with a corrupt log says so instead of crashing the table
    exp = ExperimentFolder(tmp_path / "exp")
    run = Run(id="cnn-s0-x", kind="cnn", seed=0, config={})
    exp.run(run.id).path.mkdir(parents=True)
    shutil.copy(p, exp.run(run.id).metrics_path)
    row = exp.summary_row(run)
    assert row["status"] == "pending" and "line 3" in row["error"] and row["final_test_acc"] == ""


def test_truncate_metrics_keeps_n_rows_and_drops_a_torn_line(tmp_path):
    folder = RunFolder(tmp_path)
    for i in range(3):
        folder.append_metrics({"step": i})
    with open(folder.metrics_path, "a") as f:
        f.write('{"step": 3')
    folder.truncate_metrics(2)
    assert folder.metrics_path.read_text() == '{"step": 0}\n{"step": 1}\n'


# ---- status: one vocabulary, one writer -----------------------------------------------------------------------


def test_status_vocabulary_single_writer_and_corrupt_file(tmp_path):
    assert STATES == ("pending", "running", "interrupted", "done", "failed", "diverged", "damaged")
    assert FINISHED == ("done", "diverged")
    folder = RunFolder(tmp_path / "run")
    assert folder.read_status() == Status() and folder.read_status().status == "pending"  # never trained
    st = folder.write_status("running", epoch=1.5, global_epoch=3.5, step=30)
    assert st.pid == os.getpid() and st.host == socket.gethostname()
    assert Status.from_json(json.loads(folder.status_path.read_text())) == st  # round trip
    failed = folder.write_status("failed", error="boom")  # marking a failure keeps the progress reached
    assert (failed.status, failed.error, failed.epoch, failed.global_epoch, failed.step) == ("failed", "boom", 1.5, 3.5, 30)
    with pytest.raises(ValueError, match="'finished' is not a state"):
        folder.write_status("finished")
    folder.status_path.write_text('{"status": "runing"}')
    with pytest.raises(StoreError, match="status 'runing' is not a state"):
        folder.read_status()
    folder.status_path.write_text('{"status": "do')
    with pytest.raises(StoreError, match=r"status.json' is not valid JSON") as e:
        folder.read_status()
    assert e.value.path == str(folder.status_path)
    # a newer writer's extra keys are ignored
    folder.status_path.write_text(json.dumps({**st.to_json(), "signal": "SIGTERM", "status": "interrupted"}))
    assert folder.read_status().status == "interrupted"


# ---- snapshots ------------------------------------------------------------------------------------------------


def test_snapshot_for_is_the_nearest_whole_step_until_the_run_started(tmp_path):
    exp = ExperimentFolder(tmp_path)
    cnn = Run(id="cnn", kind="cnn", seed=0, config={})
    efcn = Run(id="efcn", kind="efcn", seed=0, config={}, depends_on="cnn", snapshot="runs/cnn/snapshots/epoch_0.3.pt",
               snapshot_epoch=0.3, t_w=0.3)
    at0 = Run(id="efcn0", kind="efcn", seed=0, config={}, depends_on="cnn", snapshot_epoch=0.0, t_w=0.0)
    parent = exp.run("cnn")
    assert exp.snapshot_for(cnn) is None  # from scratch
    assert exp.snapshot_for(at0) == parent.snapshot_path(0)  # known before the parent took a step
    assert exp.snapshot_for(efcn) is None  # steps per epoch unknown yet
    parent.append_metrics({"epoch": 0.0, "step": 0})
    parent.append_metrics({"epoch": 1.0, "step": 2})  # 2 steps per epoch: t = 0.3 is step round(0.6) = 1
    assert exp.snapshot_for(efcn) == tmp_path.resolve() / "runs/cnn/snapshots/epoch_0.5.pt"
    assert [t for t, _ in parent.snapshots()] == []
    # once started, the file the run was given is the truth (while it exists): relative to the run's folder
    other = tmp_path / "runs" / "cnn-old" / "snapshots" / "epoch_0.5.pt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    exp.run("efcn").write_config({"init_from": "../cnn-old/snapshots/epoch_0.5.pt"})
    assert exp.snapshot_for(efcn) == other.resolve()
    # an absolute path (older versions) is read as the same file of this folder, never outside it
    copy_of = tmp_path.parent / f"{tmp_path.name}-original" / "runs" / "cnn-old" / "snapshots" / "epoch_0.5.pt"
    copy_of.parent.mkdir(parents=True)
    copy_of.write_bytes(b"y")
    exp.run("efcn").write_config({"init_from": str(copy_of)})
    assert exp.snapshot_for(efcn) == other.resolve()
    other.unlink()  # gone here: back to the parent's file in this folder, not the original's
    assert exp.snapshot_for(efcn) == parent.snapshot_path(0.5)


# ---- analysis results: typed, round-tripping ------------------------------------------------------------------

TAG = dict(run="efcn-tw1-s0-abc", kind="efcn", seed=0, t_w=1.0, t_w2=None)


def _examples() -> list[R.AnalysisResult]:
    header = dict(params={"seed": 0, "alphas": 3}, fingerprint="ab" * 32, created="2026-11-30T12:00:00+00:00",
                  missing=[R.Missing(run="fcn-s0-x", reason="status 'running', no final.pt")])
    return [
        R.SharpnessResult(**header, points=[R.SharpnessPoint(
            **TAG, where="final", epoch=3.0, file="runs/x/final.pt", loss=0.25, eigenvalues=[12.5, 3.0],
            eig_iterations=17, eig_converged=True, eig_residual=[1e-4, 2e-3], trace=40.0, trace_stderr=1.5,
            trace_probes=4)]),
        R.DistanceResult(**header, curves=[R.DistanceRecord(**TAG, epoch=[1.0, 2.0], offlocal_ratio=[0.0, 0.1],
                                                            cnn_distance=[0.0, 0.2])],
                         gain=[R.GainRecord(**TAG, cnn_run="cnn-s0-x", final_test_acc=0.9, cnn_final_test_acc=0.85,
                                            gain=0.05, final_offlocal_ratio=0.1, final_cnn_distance=None)]),
        R.AblationResult(**header, runs=[R.AblationRecord(
            **TAG, test_acc=R.Parts(both=0.9, local=0.8, offlocal=0.1), test_loss=R.Parts(both=0.3, local=0.5, offlocal=2.3),
            local_change={"features.0": 0.12})]),
        R.TemplatesResult(**header, arrays="templates.npz", layer="features.0", input_shape=[1, 28, 28],
                          runs=[R.TemplateRecord(**TAG, key="r0", units=[3, 7], offlocal_norm=[1.5, 0.5])]),
        R.InterpolationResult(**header, alphas=[0.0, 0.5, 1.0], curves=[R.InterpolationRecord(
            **TAG, start=R.Endpoint(label="switch", source="runs/cnn/snapshots/epoch_1.pt"),
            end=R.Endpoint(label="efcn_end", source="runs/x/final.pt"), method="curvilinear",
            train_loss=[0.5, 0.7, 0.1], train_acc=[0.8, 0.7, 0.95], test_loss=[0.6, 0.8, 0.3], test_acc=[0.7, 0.6, 0.9])]),
        R.MemoryResult(**header, model="vanilla_cnn", model_kwargs={"width": 2}, input_shape=[1, 28, 28],
                       rows=[R.MemoryRow(form="fc", params=10, param_bytes=40, optimizer_bytes={"sgd": 40, "adam": 80})],
                       footprint={"layers": []}),
    ]


@pytest.mark.parametrize("result", _examples(), ids=lambda r: r.NAME)
def test_every_analysis_result_round_trips_and_fails_loudly_on_a_renamed_key(result, tmp_path):
    assert set(R.RESULT_TYPES) == {"memory", "distance", "sharpness", "ablation", "templates", "interpolation"}
    cls = type(result)
    assert result.analysis == cls.NAME and result.version == cls.VERSION
    back = cls.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result
    exp = ExperimentFolder(tmp_path)
    exp.write_result(result)
    assert exp.read_result(cls.NAME) == result
    # a renamed or missing key is an error naming it, never a silent None
    data = result.to_json()
    record_list = next(k for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)
                       and k != "missing")
    renamed = json.loads(json.dumps(data))
    first = renamed[record_list][0]
    key = next(k for k in first if k not in ("run", "kind", "seed", "t_w", "t_w2"))
    first[key + "_v2"] = first.pop(key)
    with pytest.raises(ValueError, match=f"unknown key.*{key}_v2"):
        cls.from_json(renamed)
    exp.result_path(cls.NAME).write_text(json.dumps(renamed))
    with pytest.raises(StoreError, match=f"{cls.NAME}.json.*cannot be read as the {cls.NAME} analysis"):
        exp.read_result(cls.NAME)


def test_nonfinite_floats_are_written_as_null_and_read_back_as_nan():
    point = _examples()[0].points[0]
    data = R.SharpnessResult(points=[R.SharpnessPoint(**{**point.__dict__, "loss": float("nan")})]).to_json()
    assert data["points"][0]["loss"] is None and data["error"] is None
    back = R.SharpnessResult.from_json(json.loads(json.dumps(data)))
    assert back.points[0].loss != back.points[0].loss and back.points[0].lambda_max == 12.5


# ---- defect 1: two trainers on one folder ---------------------------------------------------------------------


def test_second_trainer_on_the_same_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "archrelax.cli", *TRAIN, "--model-kwargs", '{"width": 2}', "--epochs", "100000",
           "--eval-times", "log:3", "--out", str(out)]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "checkpoints" / "last.pt").exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.05)
        assert (out / "checkpoints" / "last.pt").exists()
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # the first one is still training
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"held by pid {first.pid} on host {socket.gethostname()}" in second.stderr, second.stderr
    # the refused trainer wrote nothing: one metrics row per evaluation step, written once
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == sorted(set(steps))
    # its lock died with it: the same command now resumes (and the lock API refuses a foreign lock)
    from archrelax.train import TrainConfig, train

    folder = RunFolder(out)
    assert folder.holder() is None and folder.live_state() == "interrupted"
    with pytest.raises(ValueError, match="needs the held lock"):
        train(TrainConfig.from_dict(folder.read_config()), out, lock=RunFolder(tmp_path / "other").lock())


def test_run_lock_names_the_holder_in_process(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        assert f"pid {os.getpid()} on host" in folder.holder()
        with pytest.raises(RunBusyError, match=f"held by pid {os.getpid()}"):
            folder.lock().acquire()  # another open file description conflicts even in one process
    assert folder.holder() is None


# ---- defect 2: another spec into an existing experiment -------------------------------------------------------


def test_different_spec_into_an_experiment_is_refused_listing_keys_unless_force(tmp_path, capsys):
    exp = tmp_path / "exp"
    assert cli_main(["run", str(_spec_file(tmp_path)), "--out", str(exp)]) == 0
    files = {n: (exp / n).read_bytes() for n in ("spec.yaml", "plan.json", "summary.csv")}
    other = _spec_file(tmp_path, train={**TINY["train"], "lr": 0.1}, seeds=[0, 1])
    capsys.readouterr()
    assert cli_main(["run", str(other), "--out", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "holds a different spec" in err and "train.lr: 0.05 -> 0.1" in err and "seeds: [0] -> [0, 1]" in err
    assert "--force" in err and "keys differ" in err
    assert {n: (exp / n).read_bytes() for n in files} == files  # nothing replaced
    # the same experiment again: the folder itself, or its spec with other runtime-only keys, is accepted
    assert cli_main(["run", str(exp)]) == 0
    assert cli_main(["run", str(exp), "--workers", "2", "--set", "analyses=[memory]"]) == 0
    assert yaml.safe_load((exp / "spec.yaml").read_text())["analyses"] == ["memory"]  # spec.yaml takes them
    assert (exp / "plan.json").read_bytes() == files["plan.json"]
    # --force replaces spec and plan; the runs already trained stay on disk
    assert cli_main(["run", str(_spec_file(tmp_path, relaxed={"epochs": 0.5, "until_zero_loss": False})),
                     "--out", str(exp), "--force"]) == 0
    assert yaml.safe_load((exp / "spec.yaml").read_text())["relaxed"]["epochs"] == 0.5
    assert len(list((exp / "runs").iterdir())) == 5  # 3 first runs + 2 new relaxed runs


def test_spec_changes_are_dotted_keys_and_ignore_runtime_keys():
    old = {"name": "a", "train": {"lr": 0.05, "batch_size": 128}, "workers": 1, "slurm": {"mem_gb": 32}}
    new = {"name": "a", "train": {"lr": 0.1, "batch_size": 128, "augment": ["flip"]}, "workers": 4,
           "slurm": {"mem_gb": 64}}
    changes = spec_changes(old, new)
    assert [(k, a, b) for k, a, b in changes if k == "train.lr"] == [("train.lr", 0.05, 0.1)]
    assert [k for k, _, _ in changes] == ["train.lr", "train.augment"]


# ---- defect 3: file modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_every_written_file_gets_the_mode_the_umask_gives(tmp_path, mask):
    from archrelax.analysis import analyse_experiment
    from archrelax.data import load_data
    from archrelax.protocol import run_experiment, spec_from_dict
    from archrelax.report import write_report

    old = os.umask(mask)
    try:
        spec = spec_from_dict({**TINY, "switch_times": [0], "analyses": ["memory", "distance"]})
        exp = run_experiment(spec, tmp_path / "exp", log=lambda s: None)
        analyse_experiment(exp, only=["memory", "distance", "templates"], progress=False)
        write_report(exp, analyse=False)
        load_data("mnist5k", cache_dir=tmp_path / "cache", train_size=100, test_size=100)
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"spec.yaml", "plan.json", "summary.csv", "config.json", "status.json", "metrics.jsonl", "last.pt",
            "epoch_0.pt", "final.pt", ".lock", "memory.json", "templates.npz", "index.html"} <= names, names
    assert any(p.suffix == ".png" for p in files) and any(p.parent.name == "cache" for p in files)
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != want}
    assert not wrong, f"expected {oct(want)}: {wrong}"


# ---- defect 4: a rerun recomputes nothing ---------------------------------------------------------------------


def test_rerun_of_a_finished_experiment_recomputes_no_analysis(tmp_path):
    spec = _spec_file(tmp_path, analyses=["memory", "distance", "sharpness", "ablation", "templates", "interpolation"],
                      analysis_settings={"device": "cpu", "batch_size": 20, "sharpness_samples": 20,
                                         "sharpness_max_iter": 3, "trace_probes": 2, "eval_train_samples": 20,
                                         "eval_test_samples": 20, "template_count": 2})
    exp = tmp_path / "exp"
    assert cli_main(["run", str(spec), "--out", str(exp)]) == 0
    out = exp / "analysis"
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert len(first) == 7  # six JSON files and templates.npz
    for name in R.RESULT_TYPES:
        assert json.loads((out / f"{name}.json").read_text())["error"] is None
    from archrelax.report import write_report

    index = write_report(exp)  # as `archrelax demo` ends
    page = {p: p.stat().st_mtime_ns for p in index.parent.rglob("*") if p.is_file()}
    assert len(page) > 5
    time.sleep(0.01)  # a rewrite would show in the mtime
    assert cli_main(["run", str(exp)]) == 0  # the finished experiment again, as `archrelax demo` reruns it
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == first
    assert write_report(exp) == index
    assert {p: p.stat().st_mtime_ns for p in index.parent.rglob("*") if p.is_file()} == page  # nothing redrawn
    write_report(exp, analyse=False)  # another note on the page: drawn again
    assert index.stat().st_mtime_ns != page[index]
    # the key is the inputs' content: a new time alone (a copy, a touch) recomputes nothing ...
    from archrelax.analysis import analyse_experiment

    finals = sorted((exp / "runs").glob("efcn-*/final.pt"))
    stamp = finals[0].stat()
    os.utime(finals[0], ns=(time.time_ns(), time.time_ns()))
    analyse_experiment(exp, only=["memory", "templates"], progress=False)
    assert (out / "templates.json").stat().st_mtime_ns == first["templates.json"][0]
    # ... and an input whose content changes is seen, even at the same size and time: a run's final weights
    shutil.copyfile(finals[1], finals[0])
    os.utime(finals[0], ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert finals[0].stat().st_size == stamp.st_size
    analyse_experiment(exp, only=["memory", "templates"], progress=False)
    assert (out / "memory.json").stat().st_mtime_ns == first["memory.json"][0]  # reads only the CNN's arch
    assert (out / "templates.json").stat().st_mtime_ns != first["templates.json"][0]


# ---- defect 5: a start that failed before training ------------------------------------------------------------


def test_folder_of_a_start_that_failed_before_training_takes_the_corrected_command(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    # a typo in --model-kwargs is refused before anything is written (the factory's signature is checked first)
    assert cli_main([*TRAIN, "--model-kwargs", '{"widht": 2}', "--epochs", "1", "--out", str(out)]) == 2
    assert "widht" in capsys.readouterr().err and not out.exists()
    # so is a missing data path (the data source is checked first)
    assert cli_main([*TRAIN, "--model-kwargs", '{"width": 2}', "--epochs", "1", "--data", "imagefolder:/no/such",
                     "--out", str(out)]) == 2
    assert "/no/such" in capsys.readouterr().err and not out.exists()
    # a start that fails inside the trainer (the memory guard, at set-up) in a folder the user made: the folder
    # holds a config and a failed status, no training state (a folder this command created would be removed)
    out.mkdir()
    relax_module = sys.modules["archrelax.embed.relax"]  # the module: archrelax.embed.relax is also the function
    with monkeypatch.context() as m:
        m.setattr(relax_module, "available_memory", lambda device: 0)
        assert cli_main([*TRAIN, "--model-kwargs", '{"width": 2}', "--epochs", "1", "--relax", "fc",
                         "--out", str(out)]) == 2
    assert "needs about" in capsys.readouterr().err
    assert RunFolder(out).read_status().status == "failed" and (out / "config.json").is_file()
    assert not RunFolder(out).has_training_state()
    assert cli_main([*TRAIN, "--model-kwargs", '{"width": 2}', "--epochs", "1", "--out", str(out)]) == 0
    assert "done at epoch 1" in capsys.readouterr().out
    # a folder that did train still refuses another config
    assert cli_main([*TRAIN, "--model-kwargs", '{"width": 3}', "--epochs", "1", "--out", str(out)]) == 2
    assert "holds a run with a different config" in capsys.readouterr().err


# ---- defect 6: corrupt plan.json / status.json are named ------------------------------------------------------


def test_status_command_names_a_corrupt_plan_or_status_file(tmp_path, capsys):
    exp = tmp_path / "exp"
    assert cli_main(["run", str(_spec_file(tmp_path, switch_times=[0])), "--out", str(exp)]) == 0
    plan = json.loads((exp / "plan.json").read_text())
    capsys.readouterr()
    rid = next(iter(plan))
    (exp / "runs" / rid / "status.json").write_text('{"status": "do')  # a corrupt status.json
    assert cli_main(["status", str(exp)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(rid))
    assert " corrupt " in line and f"runs/{rid}/status.json" in line and "not valid JSON" in line
    assert out.strip().endswith("2 runs: 1 corrupt, 1 done")
    with open(exp / "summary.csv", newline="") as f:  # the summary of a run that finishes meanwhile says so too
        assert any(r["status"] == "done" for r in csv.DictReader(f))
    text = (exp / "plan.json").read_text()
    (exp / "plan.json").write_text(text[: len(text) // 2])  # a truncated plan.json
    assert cli_main(["status", str(exp)]) == 2
    err = capsys.readouterr().err
    assert str(exp / "plan.json") in err and "not valid JSON" in err and f"archrelax run {exp}" in err
    shutil.rmtree(exp / "runs" / rid)
    assert cli_main(["run", str(exp)]) == 0  # `archrelax run` rewrites the plan from spec.yaml and goes on
    assert json.loads((exp / "plan.json").read_text()) == plan


def test_job_record_round_trips_and_a_corrupt_one_is_named(tmp_path):
    from archrelax.store import JobRecord, RunFolder, StoreError

    run = RunFolder(tmp_path / "run")
    assert run.read_job() is None
    rec = JobRecord.now("123_4", folder="/exp/slurm", dependency="afterok:122_0")
    run.write_job(rec)
    assert run.read_job() == rec and rec.host == socket.gethostname() and rec.submitted
    assert not run.has_training_state()  # a queued job is no training
    for bad in ('{"job_id": 123}', '{"job_id": "1", "dependency": 5}', '["1"]', '{"job_id": "1'):
        run.job_path.write_text(bad)
        with pytest.raises(StoreError) as e:
            run.read_job()
        assert e.value.path == str(run.job_path) and str(run.job_path) in str(e.value)


# ---- analysis registry and the non-square input -----------------------------------------------------------------


def test_analysis_names_come_from_one_registry_without_torch():
    code = ("import sys; from archrelax.analysis.registry import analysis_names; "
            "from archrelax.analysis import ANALYSES; import archrelax.analysis._cli; "
            "print(','.join(analysis_names()), ANALYSES == analysis_names(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["memory,distance,sharpness,ablation,templates,interpolation", "True", "False"]
    from archrelax.analysis.registry import get_analysis

    for name in R.RESULT_TYPES:  # every name has its runner, registered in its own module
        a = get_analysis(name)
        assert a.name == name and a.run.__module__ == f"archrelax.analysis.{name}"


def test_memory_of_an_untrained_cnn_on_non_square_images(tmp_path):
    from archrelax.analysis import analyse_experiment
    from archrelax.protocol import make_plan, spec_from_dict, spec_to_dict

    spec = spec_from_dict({**TINY, "data": "synthetic:1x28x36:2:40:20"})
    exp = ExperimentFolder(tmp_path)  # planned, nothing trained: the arch is rebuilt from the data
    exp.write_spec(spec_to_dict(spec))
    exp.write_plan(make_plan(spec))
    res = analyse_experiment(tmp_path, only=["memory"], progress=False)["memory"]
    assert res.error is None, res.traceback
    assert res.input_shape == [1, 28, 36] and res.model_kwargs["input_size"] == [28, 36]
    assert [r.form for r in res.rows][:3] == ["cnn", "lc", "fc"]
