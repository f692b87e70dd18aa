"""A run's record agrees with itself: the rule between a checkpoint and its folder (train/checkpoint.check_record,
applied by every resume through set_up) and the cheap checks of `archrelax status` (RunFolder.record_problems).

The rows of tests/test_faults.py run the commands a user runs; here are the mechanism's own promises.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest

from archrelax.store import RunFolder
from archrelax.train import TrainConfig, load_checkpoint, read_metrics, train
from archrelax.train.checkpoint import RecordMismatchError, RowsDigest, check_record, resume_point

import test_integrity as integrity_tests  # a module, not its functions: pytest collects nothing twice

pytestmark = pytest.mark.usefixtures("one_thread")

VOLATILE = ("wall_time", "peak_mem_bytes")


def config(**kw) -> TrainConfig:
    """test_integrity's run (3 epochs of 2 steps, snapshots at epochs 0, 1, 2) with a metrics row at every step."""
    return integrity_tests.config(**{"eval_times": [0, 0.5, 1, 1.5, 2, 2.5, 3], **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_one_thread):
    return train_one_thread(config(), tmp_path_factory.mktemp("run") / "run")


def stopped_copy(run, tmp_path, name: str = "copy"):
    """The finished run as if stopped at its snapshot of epoch 2 (step 4, 5 rows: steps 0 to 4): that snapshot is its
    last.pt, and the log holds one more row (step 5) than it was written after, as after a stop between checkpoints."""
    out = tmp_path / name
    shutil.copytree(run, out)
    (out / "final.pt").unlink()
    shutil.copy(out / "snapshots" / "epoch_2.pt", out / "checkpoints" / "last.pt")
    log = out / "metrics.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:6]))
    st = json.loads((out / "status.json").read_text())
    (out / "status.json").write_text(json.dumps({**st, "status": "interrupted", "step": 4, "epoch": 2.0,
                                                 "global_epoch": 2.0, "n_metrics": 5}))
    return out


def stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_rows_read_back_digest_as_written():
    rows = [{"epoch": 0.1, "step": 1, "train_loss": 1 / 3, "x": float("nan"), "y": -0.0, "z": None, "big": 2**62,
             "lr": 1e-05, "inf": float("inf")}]
    back = [json.loads(json.dumps(r)) for r in rows]
    assert math.isnan(back[0]["x"]) and RowsDigest(back).hexdigest() == RowsDigest(rows).hexdigest()
    assert RowsDigest(rows).hexdigest() != RowsDigest([{**rows[0], "train_loss": 1 / 3 + 1e-16}]).hexdigest()
    assert RowsDigest().hexdigest() != RowsDigest([{}]).hexdigest()  # a row is never nothing


def test_every_checkpoint_records_the_rows_it_was_written_after(run):
    rows = read_metrics(run / "metrics.jsonl")
    for path in [run / "checkpoints" / "last.pt", *sorted((run / "snapshots").glob("*.pt"))]:
        p = load_checkpoint(path)["progress"]
        assert p["metrics_digest"] == RowsDigest(rows[: p["n_metrics"]]).hexdigest(), path
    st = json.loads((run / "status.json").read_text())
    assert st["n_metrics"] == len(rows) and RunFolder(run).record_problems() == []


def test_a_resume_keeps_status_within_the_log_and_the_run_exact(run, tmp_path):
    out = stopped_copy(run, tmp_path)
    folder = RunFolder(out)
    assert folder.record_problems() == []  # a row past the checkpoint is the resume's to redo, not a lost one
    ck = resume_point(folder, config=config())
    assert ck is not None and ck["step"] == 4
    res = train(config(), out)
    assert res["status"] == "done" and folder.record_problems() == []
    assert stable(read_metrics(out / "metrics.jsonl")) == stable(read_metrics(run / "metrics.jsonl"))
    assert json.loads((out / "status.json").read_text())["n_metrics"] == len(read_metrics(out / "metrics.jsonl"))


@pytest.mark.parametrize("harm", ["cut", "swapped", "other run's"])
def test_a_log_that_is_not_the_checkpoints_is_refused_and_restarts_from_a_snapshot_it_holds(run, tmp_path, harm):
    out = stopped_copy(run, tmp_path)
    folder, log = RunFolder(out), out / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    if harm == "cut":  # steps 0 to 2 kept: epoch_1 (step 2, 3 rows) still a resume point
        log.write_text("".join(lines[:3]))
    elif harm == "swapped":  # rows 3 and 4 (steps 3, 4) in the wrong order
        log.write_text("".join([*lines[:3], lines[4], lines[3], *lines[5:]]))
    else:  # the log of a run with another seed (other initial weights): none of its rows is this run's
        other = tmp_path / "seed1"
        train(config(seed=1), other)
        log.write_text((other / "metrics.jsonl").read_text())
    with pytest.raises(RecordMismatchError, match=r"metrics.jsonl") as e:
        check_record(folder, load_checkpoint(out / "checkpoints" / "last.pt"), config())
    assert ("holds 3 rows" in str(e.value)) == (harm == "cut")
    ck = resume_point(folder, "intact", config=config())
    # cut and swapped keep rows 0 to 2 (epoch_1's, step 2); no snapshot fits another run's log: a start from scratch
    assert (ck["step"] if ck is not None else None) == {"cut": 2, "swapped": 2, "other run's": None}[harm]
    res = train(config(restart="intact"), out)
    assert res["status"] == "done"
    assert stable(read_metrics(out / "metrics.jsonl")) == stable(read_metrics(run / "metrics.jsonl"))


def test_the_config_must_be_the_checkpoints(run, tmp_path):
    out = stopped_copy(run, tmp_path)
    folder = RunFolder(out)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match=r"in 2 keys \(checkpoint -> config.json: lr: 0.1 -> 0.2, seed: 0 -> 3\)"):
        check_record(folder, ck, config(lr=0.2, seed=3))
    for restart in (None, "intact", "scratch"):  # no restart mends it
        with pytest.raises(ValueError, match="cannot go on under another config"):
            resume_point(folder, restart, config=config(lr=0.2))
    assert (out / "checkpoints" / "last.pt").exists()
    check_record(folder, ck, config(progress=True, checkpoint_every_s=5.0, restart="scratch"))  # runtime fields: free


def test_init_from_may_move_with_its_experiment_but_not_name_another_snapshot(run, tmp_path):
    folder = RunFolder(tmp_path / "runs" / "efcn")
    folder.path.mkdir(parents=True)
    ck = {"config": config(init_from="/old/exp/runs/cnn-s0-abc/snapshots/epoch_1.pt").to_dict(), "step": 0,
          "progress": {"n_metrics": 0}}
    check_record(folder, ck, config(init_from=str(tmp_path / "runs" / "cnn-s0-abc" / "snapshots" / "epoch_1.pt")))
    for other in ("/old/exp/runs/cnn-s1-def/snapshots/epoch_1.pt", "/old/exp/runs/cnn-s0-abc/snapshots/epoch_2.pt"):
        with pytest.raises(ValueError, match="init_from"):
            check_record(folder, ck, config(init_from=other))


def test_record_problems(run, tmp_path):
    out = stopped_copy(run, tmp_path)
    folder = RunFolder(out)
    log = out / "metrics.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    assert folder.record_problems() == ["metrics.jsonl holds 2 rows where status.json recorded 5: the log lost rows"]
    with folder.lock():  # a live run's record is in flux: not judged
        st = json.loads((out / "status.json").read_text())
        (out / "status.json").write_text(json.dumps({**st, "status": "running"}))
        assert folder.record_problems() == []
    assert folder.record_problems() == ["metrics.jsonl holds 2 rows where status.json recorded 5: the log lost rows"]
    done = tmp_path / "done"
    shutil.copytree(run, done)
    folder = RunFolder(done)
    with open(done / "metrics.jsonl", "a") as f:
        f.write(json.dumps(read_metrics(done / "metrics.jsonl")[-1]) + "\n")
    (done / "final.pt").unlink()
    n = len(read_metrics(run / "metrics.jsonl"))
    assert folder.record_problems() == [f"metrics.jsonl holds {n + 1} rows where status.json recorded {n} as the run "
                                        "ended", "final.pt is missing"]
    st = json.loads((done / "status.json").read_text())
    (done / "status.json").write_text(json.dumps({k: v for k, v in st.items() if k != "n_metrics"}))  # an older file
    (done / "metrics.jsonl").write_text("")
    assert folder.record_problems() == ["metrics.jsonl holds 0 rows", "final.pt is missing"]
    assert RunFolder(tmp_path / "never").record_problems() == []


def test_a_lockstep_member_resumes_through_the_same_rule(run, tmp_path):
    """A lockstep group sets its members up through set_up: a member whose log lost rows is marked damaged while the
    other trains on, and restarts like a run of its own."""
    from archrelax.train.lockstep import train_lockstep

    bad, good = stopped_copy(run, tmp_path), tmp_path / "good"
    log = bad / "metrics.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:3]))
    res = train_lockstep([config(), config(seed=1)], [bad, good], log=lambda s: None)
    assert res[0]["status"] == "damaged" and "the log lost rows" in res[0]["error"] and res[1]["status"] == "done"
    res = train_lockstep([config(restart="intact"), config(seed=1)], [bad, good], log=lambda s: None)
    assert [r["status"] for r in res] == ["done", "done"]
    assert stable(read_metrics(bad / "metrics.jsonl")) == stable(read_metrics(run / "metrics.jsonl"))
