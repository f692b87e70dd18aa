"""The trainer's promises: determinism, exact resume after a real kill -9, exact relaxation of a snapshot,
optimiser-state carry/reset, divergence, until-zero-loss, config round trip, the CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from archrelax.train import TrainConfig, load_checkpoint, read_metrics, train
from archrelax.train.schedule import lr_at, time_steps
from conftest import sigkill_at_step

# 1x28x28 inputs keep the eFCN of a width-8 VanillaCNN small (784 -> 1800 dense first layer)
DATA = "synthetic:1x28x28:10:200:100"
VOLATILE = ("wall_time", "peak_mem_bytes")  # the only fields allowed to differ between equal runs


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def cfg(**kw) -> TrainConfig:
    base = dict(model="vanilla_cnn", model_kwargs={"width": 8}, data=DATA, batch_size=50, epochs=2, lr=0.05,
                eval_times="every", device="cpu", progress=False, checkpoint_every_s=None)
    return TrainConfig(**{**base, **kw})


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = train(cfg(), tmp_path / "a")
    b = train(cfg(), tmp_path / "b")
    c = train(cfg(seed=1), tmp_path / "c")
    ra, rb, rc = (stable(read_metrics(tmp_path / n / "metrics.jsonl")) for n in "abc")
    assert a["status"] == b["status"] == "done"
    assert len(ra) == 3 and [r["epoch"] for r in ra] == [0, 1, 2]  # "every": 0 and each epoch end
    assert ra == rb
    assert ra != rc
    run = tmp_path / "a"
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    assert (run / "final.pt").exists() and (run / "checkpoints" / "last.pt").exists()
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == cfg()
    row = read_metrics(run / "metrics.jsonl")[-1]
    assert row["wall_time"] > 0 and row["peak_mem_bytes"] > 0 and row["lr"] == 0.05
    assert "offlocal_ratio" not in row  # a plain CNN has no relaxed layers


def test_finished_run_is_not_redone_and_other_config_is_refused(tmp_path):
    first = train(cfg(epochs=1), tmp_path)
    mtime = (tmp_path / "final.pt").stat().st_mtime_ns
    again = train(cfg(epochs=1, progress=True), tmp_path)  # runtime-only fields may differ
    assert again["metrics"] == first["metrics"] and (tmp_path / "final.pt").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different config.*'lr'"):
        train(cfg(epochs=1, lr=0.01), tmp_path)


KILL_CFG = dict(epochs=6, batch_size=20, eval_times="every", snapshots=[0, 0.5, 3])


def test_kill_minus_9_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    config = cfg(**KILL_CFG)
    reference = train(config, tmp_path / "ref")
    # the victim checkpoints every 2 steps (checkpoint frequency is a runtime field: same numbers)
    victim = cfg(**KILL_CFG, checkpoint_every_steps=2)
    run = tmp_path / "killed"
    # kill it once a mid-epoch checkpoint of the 3rd epoch exists (10 steps per epoch)
    killed_at = sigkill_at_step(victim.to_dict(), run, 22)
    assert json.loads((run / "status.json").read_text())["status"] == "running"  # died without a word
    assert not (run / "final.pt").exists()
    with open(run / "metrics.jsonl", "a") as f:  # and as if it died half-way through a metrics line
        f.write('{"epoch": 7.0, "step": 7')
    resumed = train(config, run)
    assert resumed["status"] == "done"
    assert stable(read_metrics(run / "metrics.jsonl")) == stable(read_metrics(tmp_path / "ref" / "metrics.jsonl"))
    assert resumed["metrics"]["train_loss"] == reference["metrics"]["train_loss"]
    a, b = load_checkpoint(run / "final.pt"), load_checkpoint(tmp_path / "ref" / "final.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for t in ("0", "0.5", "3"):
        assert (run / "snapshots" / f"epoch_{t}.pt").exists()


@pytest.mark.parametrize("rng", [
    {},  # plain SGD on a VanillaCNN: the shuffling alone draws random numbers
    # dropout draws from the global torch RNG at every training step and augmentation from the feed's stream:
    # an evaluation between two steps (the snapshots are mid-epoch) must draw from neither
    dict(model="alexnet", model_kwargs={"width": 2, "dropout": 0.5}, data="synthetic:3x32x32:10:200:100",
         augment=["crop", "flip"]),
], ids=["vanilla", "dropout+augment"])
def test_evaluates_at_start_end_and_every_snapshot_without_changing_the_trajectory(tmp_path, rng):
    # eval_times alone would evaluate at epoch 1 only; snapshots add their steps (and 0 and the end are always
    # evaluated), so a relaxed run's first evaluation has its parent's at the same weights to compare with
    train(cfg(epochs=2, snapshots=[0.5, 1.5], eval_times=[1], **rng), tmp_path / "snaps")
    train(cfg(epochs=2, snapshots=[], eval_times=[1], **rng), tmp_path / "plain")
    snaps, plain = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("snaps", "plain"))
    assert [r["epoch"] for r in snaps] == [0, 0.5, 1, 1.5, 2] and [r["epoch"] for r in plain] == [0, 1, 2]
    assert stable(plain) == [r for r in stable(snaps) if r["epoch"] in (0, 1, 2)]  # the same trajectory, bit for bit
    a, b = (load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("snaps", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_snapshot_every_eval_saves_at_every_evaluation_row_even_the_stopping_one(tmp_path):
    # what a switch time chosen from the evaluations (switch_times: auto) starts from: every row has its file, also
    # the row an until-zero-loss stop records outside eval_times (loss_threshold 10: stops at the first epoch end)
    stop = dict(epochs=None, until_zero_loss=True, max_epochs=3, loss_threshold=10.0, eval_times=[0])
    for name, kw in (("fixed", dict(epochs=2, eval_times=[0.5])), ("stop", stop)):
        train(cfg(snapshot_every_eval=True, **kw), tmp_path / name)
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        snaps = sorted(float(p.stem[6:]) for p in (tmp_path / name / "snapshots").glob("epoch_*.pt"))
        assert snaps == [r["epoch"] for r in rows] == ([0, 0.5, 2] if name == "fixed" else [0, 1]), name
    train(cfg(epochs=2, eval_times=[0.5]), tmp_path / "plain")  # the same trajectory, bit for bit
    plain, fixed = (stable(read_metrics(tmp_path / n / "metrics.jsonl")) for n in ("plain", "fixed"))
    assert plain == fixed


def test_a_planned_snapshot_on_the_step_of_a_zero_loss_stop_is_written(tmp_path):
    # loss_threshold 10 stops at the first epoch end, the step of the planned snapshot at epoch 1: a relaxed run
    # switching at t_w = 1 starts from that file, which holds the final weights
    stop = dict(epochs=None, until_zero_loss=True, max_epochs=3, loss_threshold=10.0, eval_times=[0])
    result = train(cfg(snapshots=[0.5, 1], **stop), tmp_path)
    assert result["stop_reason"] == "zero_loss" and result["metrics"]["epoch"] == 1
    snaps = sorted(float(p.stem[6:]) for p in (tmp_path / "snapshots").glob("epoch_*.pt"))
    assert snaps == [0.5, 1]
    a, b = (load_checkpoint(tmp_path / n)["model"] for n in ("snapshots/epoch_1.pt", "final.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("to", ["fc", "lc"])
def test_relaxed_snapshot_starts_with_the_cnn_losses(tmp_path, to):
    cnn = train(cfg(epochs=1, snapshots=[1], eval_times=[0, 1]), tmp_path / "cnn")
    snap = tmp_path / "cnn" / "snapshots" / "epoch_1.pt"
    relaxed = train(cfg(epochs=0, relax=to, init_from=str(snap), eval_times=[0]), tmp_path / to)
    a, b = cnn["metrics"], relaxed["metrics"]
    assert b["epoch"] == 0 and b["global_epoch"] == 1.0
    for k in ("train_loss", "test_loss"):
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6)
    assert (b["train_acc"], b["test_acc"]) == (a["train_acc"], a["test_acc"])
    assert b["offlocal_ratio"] == pytest.approx(0.0, abs=1e-10) and b["cnn_distance"] == pytest.approx(0.0, abs=1e-5)
    final = load_checkpoint(tmp_path / to / "final.pt")
    assert final["arch"]["relax_chain"] == [to] and final["global_epoch"] == 1.0
    assert final["model"]["features.0.weight"].shape != load_checkpoint(snap)["model"]["features.0.weight"].shape


def test_optimizer_state_carry_embeds_momentum_reset_drops_it(tmp_path):
    train(cfg(epochs=1, snapshots=[1], eval_times=[1]), tmp_path / "cnn")
    snap_path = tmp_path / "cnn" / "snapshots" / "epoch_1.pt"
    snap = load_checkpoint(snap_path)
    runs = {mode: tmp_path / mode for mode in ("carry", "reset")}
    for mode, out in runs.items():
        train(cfg(epochs=0, relax="fc", init_from=str(snap_path), optimizer_state=mode, eval_times=[0]), out)
    carry, reset = (load_checkpoint(runs[m] / "checkpoints" / "last.pt") for m in ("carry", "reset"))
    assert reset["optimizer"]["state"] == {}
    names = carry["param_names"]
    i = names.index("features.0.weight")
    buf = carry["optimizer"]["state"][i]["momentum_buffer"]
    cnn_buf = snap["optimizer"]["state"][snap["param_names"].index("features.0.weight")]["momentum_buffer"]
    from archrelax.models import build_architecture

    layer = build_architecture(carry["arch"]).get_submodule("features.0")
    assert buf.shape == carry["model"]["features.0.weight"].shape != cnn_buf.shape
    torch.testing.assert_close(buf, layer.embed_weight(cnn_buf))
    # a carried optimiser cannot come from a different kind of optimiser
    with pytest.raises(ValueError, match="optimizer='sgd'.*'adam'"):
        train(cfg(epochs=0, relax="fc", init_from=str(snap_path), optimizer_state="carry", optimizer="adam"),
              tmp_path / "adam")


def test_diverging_run_stops_with_status_diverged_and_keeps_last_good_checkpoint(tmp_path):
    result = train(cfg(lr=1e9, epochs=3, checkpoint_every_steps=1, eval_times=[0]), tmp_path)
    assert result["status"] == "diverged" and "NaN" in result["error"]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "final.pt").exists()
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert train(cfg(lr=1e9, epochs=3, checkpoint_every_steps=1, eval_times=[0]), tmp_path)["status"] == "diverged"


def test_until_zero_loss_stops_at_full_train_accuracy(tmp_path):
    result = train(cfg(epochs=None, until_zero_loss=True, max_epochs=60, lr=0.02, eval_times="log:5"), tmp_path)
    m = result["metrics"]
    assert result["status"] == "done" and result["stop_reason"] == "zero_loss"
    assert m["train_acc"] == 1.0 and 0 < m["epoch"] < 60 and m["epoch"] == int(m["epoch"])
    capped = train(cfg(epochs=None, until_zero_loss=True, max_epochs=0.5, eval_times="log:3"), tmp_path / "cap")
    assert capped["stop_reason"] == "max_epochs" and capped["metrics"]["epoch"] == 0.5


def test_config_round_trip_and_validation():
    c = cfg(relax="lc", snapshots="log:5", augment=["flip"])
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match=r"unknown TrainConfig key\(s\) \['lrr'\].*'lr'"):
        TrainConfig.from_dict({**c.to_dict(), "lrr": 0.1})
    bad = [dict(optimizer="rmsprop"), dict(relax="conv"), dict(until_zero_loss=True, epochs=None),
           dict(until_zero_loss=True, max_epochs=5), dict(eval_times="log:x"), dict(snapshots="every"),
           dict(optimizer_state="carry"), dict(batch_size=0)]
    for kw in bad:
        with pytest.raises(ValueError, match="TrainConfig"):
            cfg(**kw)


def test_schedules_and_time_grids():
    assert lr_at(0, 10, lr=1.0, warmup_epochs=1) == pytest.approx(0.1)
    assert lr_at(9, 10, lr=1.0, warmup_epochs=1) == pytest.approx(1.0)
    assert lr_at(25, 10, lr=1.0, schedule="step", step_size=2, gamma=0.5) == pytest.approx(0.5)
    assert lr_at(50, 10, lr=1.0, schedule="cosine", total_epochs=10) == pytest.approx(0.5)
    assert lr_at(100, 10, lr=1.0, schedule="cosine", total_epochs=10) == pytest.approx(0.0, abs=1e-12)
    log = time_steps("log:20", 20, 2000)
    assert len(log) == 20 and log[0] == 0 and log[-1] == 2000 and log[1] == 1
    assert time_steps("every", 4, 10) == [0, 4, 8, 10]
    assert time_steps([0, 0.5, 2], 4, 8) == [0, 2, 8]
    with pytest.raises(ValueError, match=r"\[9\] lie past the end"):
        time_steps([9], 4, 8, name="snapshots")


def test_snapshots_load_with_weights_only_and_fractional_names(tmp_path):
    train(cfg(epochs=1, snapshots=[0, 0.5], eval_times=[1], optimizer="adam", lr=1e-3), tmp_path)
    for t, step in (("0", 0), ("0.5", 2)):
        snap = torch.load(tmp_path / "snapshots" / f"epoch_{t}.pt", weights_only=True)
        assert snap["step"] == step and snap["config"]["optimizer"] == "adam" and snap["arch"]["model"] == "vanilla_cnn"
    assert snap["optimizer"]["state"]  # Adam moments after two steps


def test_cli_trains_and_help_lists_every_option(tmp_path, capsys):
    from archrelax.cli import build_parser, main

    rc = main(["train", "vanilla_cnn", "--model-kwargs", '{"width": 8}', "--data", DATA, "--batch-size", "50",
               "--epochs", "1", "--eval-times", "0,1", "--snapshots", "0", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0 and "done at epoch 1" in capsys.readouterr().out
    assert (tmp_path / "snapshots" / "epoch_0.pt").exists()
    rc = main(["train", "vanilla_cnn", "--model-kwargs", '{"width": 8}', "--data", DATA, "--epochs", "0",
               "--relax", "fc", "--from", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r")])
    assert rc == 2 and "nope.pt" in capsys.readouterr().err
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = sub.format_help()
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.option_strings[-1] in text
    assert "(default: 0.1)" in text and "(default: log:20)" in text


def test_bf16_autocast_runs_and_tensorboard_absence_is_explained(tmp_path):
    result = train(cfg(epochs=1, amp="bf16", eval_times=[0, 1]), tmp_path / "bf16")
    assert result["status"] == "done" and 0 < result["metrics"]["train_loss"] < 10
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install 'archrelax\\[tensorboard\\]'"):
            train(cfg(epochs=1, tensorboard=True), tmp_path / "tb")
        assert json.loads((tmp_path / "tb" / "status.json").read_text())["status"] == "failed"
    else:
        train(cfg(epochs=1, tensorboard=True), tmp_path / "tb")
        assert any((tmp_path / "tb" / "tensorboard").iterdir())


def check_force_overrides_the_memory_guard(tmp_path, capsys, monkeypatch) -> None:  # a row of test_faults.py
    """`--force` (TrainConfig.force_memory, a runtime field) reaches relax(): refused without it, trained with
    it; a resume may change it, and the rebuilt relaxed model passes the guard only with it."""
    import importlib

    from archrelax.cli import main

    guard = importlib.import_module("archrelax.embed.relax")  # the module (archrelax.embed.relax is also the function)
    monkeypatch.setattr(guard, "available_memory", lambda device: 1)  # 1 byte free
    argv = ["train", "vanilla_cnn", "--model-kwargs", '{"width": 4}', "--data", DATA, "--relax", "fc", "--epochs",
            "0.5", "--batch-size", "50", "--lr", "0.05", "--eval-times", "0", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "archrelax train: error: relax(to='fc') needs about" in err and "force=True" in err
    assert main([*argv, "--force", "--out", str(tmp_path / "yes")]) == 0
    assert json.loads((tmp_path / "yes" / "config.json").read_text())["force_memory"] is True
    # resume from checkpoints/last.pt: the relaxed model is rebuilt (build_architecture -> relax)
    status = tmp_path / "yes" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "status": "interrupted"}))
    with pytest.raises(MemoryError, match="force=True"):
        train(cfg(model_kwargs={"width": 4}, relax="fc", epochs=0.5, eval_times=[0]), tmp_path / "yes")
    status.write_text(json.dumps({**json.loads(status.read_text()), "status": "interrupted"}))
    result = train(cfg(model_kwargs={"width": 4}, relax="fc", epochs=0.5, eval_times=[0], force_memory=True),
                   tmp_path / "yes")
    assert result["status"] == "done" and result["epoch"] == 0.5
