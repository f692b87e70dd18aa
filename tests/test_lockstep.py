"""Lockstep training's promises: the stacked model computes each member's own function and gradient, one optimiser
over stacked parameters is R optimisers, lockstep runs write the same run folders and metrics as separate runs
(eFCN and eLCN, several switch times, two seeds), members stop independently, an interrupted group resumes (by
lockstep or by the ordinary trainer), and a model the stacking does not support falls back to separate training.

Tolerance: metrics of lockstep and separate runs agree to a relative 1e-5, in both modes of the stacked layers
(member by member, the CPU default: each member's own ops, bit for bit; batched, the CUDA default: bmm, grouped
convs, the grouped eLCN kernel). The fused CPU SGD step over the stack (vectorised over other element
boundaries) rounds a few elements one ulp differently, and batched layers round differently, which a few dozen
SGD steps grow to ~1e-7 (observed: at most 1.5e-7 relative over every metric here).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archrelax.embed.relax import relax
from archrelax.models import create_model, register_model
from archrelax.train import TrainConfig, load_checkpoint, model_from_checkpoint, read_metrics, train
from archrelax.train.checkpoint import rng_state
from archrelax.train.lockstep import train_lockstep
from archrelax.train.stacked import NotStackable, check_stacked, stack_models
from archrelax.utils import atomic_torch_save

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

DATA = "synthetic:1x28x28:10:200:100"  # 4 steps per epoch at batch 50
VOLATILE = ("wall_time", "peak_mem_bytes")
RTOL = 1e-5


def cfg(**kw) -> TrainConfig:
    base = dict(model="vanilla_cnn", model_kwargs={"width": 4}, data=DATA, batch_size=50, epochs=2, lr=0.05,
                eval_times="every", device="cpu", progress=False, checkpoint_every_s=None)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cnns(tmp_path_factory, train_one_thread) -> Path:
    """Two seeds of a width-4 VanillaCNN, snapshots at epochs 0, 1, 2."""
    root = tmp_path_factory.mktemp("cnns")
    for seed in (0, 1):
        train_one_thread(cfg(snapshots=[0, 1, 2], seed=seed), root / f"cnn{seed}")
    return root


def snap(cnns: Path, seed: int, t: int) -> str:
    return str(cnns / f"cnn{seed}" / "snapshots" / f"epoch_{t}.pt")


def assert_rows_close(a: list[dict], b: list[dict], rtol: float = RTOL) -> float:
    """Same rows (keys, epochs, steps), numbers to ``rtol``; returns the largest relative difference."""
    assert len(a) == len(b)
    worst = 0.0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k in VOLATILE:
                continue
            if isinstance(ra[k], float):
                worst = max(worst, abs(ra[k] - rb[k]) / max(abs(ra[k]), 1e-12))
                assert rb[k] == pytest.approx(ra[k], rel=rtol, abs=1e-9), (k, ra, rb)
            else:
                assert ra[k] == rb[k], (k, ra, rb)
    return worst


# ---- the stacked model -----------------------------------------------------------------------------------


def _members(name: str, kw: dict, to: str | None, n: int = 3) -> list[nn.Module]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        m = create_model(name, **kw)
        out.append(relax(m, to=to, example_input=None) if to else m)
    return out


@pytest.mark.parametrize("name,kw", [("vanilla_cnn", dict(width=4, input_size=28, in_channels=1)),
                                     ("alexnet", dict(width=2, dropout=0.5))])
@pytest.mark.parametrize("to", [None, "lc", "fc", "wide:full", "tiled:2"])
@pytest.mark.parametrize("batched", [True, False])
def test_stacked_forward_and_gradients_are_each_members_own(name, kw, to, batched):
    import copy

    models = _members(name, kw, to)
    own = [copy.deepcopy(m) for m in models]
    rng = []
    for r in range(3):  # each member's dropout stream, as a run of its own would start it
        torch.manual_seed(100 + r)
        rng.append(rng_state(torch.device("cpu")))
    net, members = stack_models(models, rng, batched=batched)
    x, y = torch.randn(3, 5, *models[0].input_shape), torch.randint(0, 10, (3, 5))
    out = net(x.flatten(0, 1))
    F.cross_entropy(out, y.flatten(), reduction="none").view(3, 5).mean(1).sum().backward()
    for r, m in enumerate(own):
        torch.manual_seed(100 + r)
        o = m(x[r])
        F.cross_entropy(o, y[r]).backward()
        torch.testing.assert_close(out[5 * r : 5 * r + 5], o, rtol=1e-6, atol=1e-7)
        if not batched:  # member by member: the member's own ops, bit for bit
            assert torch.equal(out[5 * r : 5 * r + 5], o)
        for n, p in m.named_parameters():
            torch.testing.assert_close(net.get_parameter(n).grad[r], p.grad, rtol=1e-5, atol=1e-7)
            if not batched:
                assert torch.equal(net.get_parameter(n).grad[r], p.grad), n
            assert torch.equal(models[r].get_parameter(n), net.get_parameter(n).detach()[r])  # members are views
        assert torch.equal(members.rng[r]["torch"], torch.get_rng_state())  # the member's stream moved on as its own
    with pytest.raises(ValueError, match="takes \\(R·B, ...\\) inputs"):
        net(x[0, :4])


def test_unsupported_models_are_refused_by_name_and_mixing_forwards_are_caught():
    bn = [nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)) for _ in range(2)]
    with pytest.raises(NotStackable, match=r"'1' \(BatchNorm2d\).*supported: DenseConv"):
        stack_models(bn)
    assert all(p.data.data_ptr() != 0 for m in bn for p in m.parameters())  # untouched
    with pytest.raises(NotStackable, match="differs from model 0"):
        stack_models([nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 4))])

    class Mixing(nn.Module):  # centres over the batch: fine alone, wrong on a merged batch
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x - x.mean(0))

    models = [Mixing() for _ in range(2)]
    net, _ = stack_models(models)
    with pytest.raises(NotStackable, match="does not treat the samples of a batch independently"):
        check_stacked(net, models, torch.randn(2, 4, 4))


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("fused", [False, True])
def test_one_optimizer_over_stacked_parameters_is_r_optimizers(opt, fused):
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt]
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3) if opt == "sgd" else dict(lr=1e-3, weight_decay=1e-2)
    shapes = [(40, 33), (17,), (300, 7)]
    torch.manual_seed(0)
    sep = [[torch.randn(s, requires_grad=True) for s in shapes] for _ in range(3)]
    stacked = [torch.stack([sep[r][i].detach() for r in range(3)]).requires_grad_() for i in range(len(shapes))]
    opts, one = [cls(p, fused=fused, **kw) for p in sep], cls(stacked, fused=fused, **kw)
    for _ in range(6):
        grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
        for r in range(3):
            for p, g in zip(sep[r], grads[r]):
                p.grad = g.clone()
            opts[r].step()
        for i, p in enumerate(stacked):
            p.grad = torch.stack([grads[r][i] for r in range(3)])
        one.step()
    for i in range(len(shapes)):
        for r in range(3):
            if fused and opt == "sgd":  # the fused CPU kernel's vector/scalar split falls elsewhere: 1 ulp
                torch.testing.assert_close(stacked[i].detach()[r], sep[r][i].detach(), rtol=2.5e-7, atol=1e-7)
            else:
                assert torch.equal(stacked[i].detach()[r], sep[r][i].detach()), (opt, fused, i, r)
            state = one.state[stacked[i]]
            for k, v in opts[r].state[sep[r][i]].items():
                torch.testing.assert_close(state[k][r] if v.dim() else state[k], v, rtol=2.5e-7, atol=1e-7)


# ---- lockstep runs against separate runs ------------------------------------------------------------------


@pytest.mark.parametrize("to", ["fc", "lc"])
@pytest.mark.parametrize("batched", [False, True])
def test_lockstep_metrics_equal_separate_runs(cnns, tmp_path, to, batched):
    configs = [cfg(relax=to, seed=s, init_from=snap(cnns, s, t), snapshots=[0.5] if t == 1 else [])
               for s in (0, 1) for t in (0, 1, 2)]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    results = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(len(configs))], batched=batched)
    assert [r["status"] for r in results] == ["done"] * 6
    for i, c in enumerate(configs):
        sep, ls = tmp_path / f"sep{i}", tmp_path / f"ls{i}"
        assert_rows_close(read_metrics(sep / "metrics.jsonl"), read_metrics(ls / "metrics.jsonl"))
        assert "offlocal_ratio" in read_metrics(ls / "metrics.jsonl")[-1]
        assert TrainConfig.from_dict(json.loads((ls / "config.json").read_text())) == c
        st = json.loads((ls / "status.json").read_text())
        assert st["status"] == "done" and st["stop_reason"] == "epochs" and st["step"] == 8
        for rel in ("checkpoints/last.pt", "final.pt", *(["snapshots/epoch_0.5.pt"] if i % 3 == 1 else [])):
            a, b = load_checkpoint(sep / rel), load_checkpoint(ls / rel)  # weights_only=True
            assert a.keys() == b.keys() and a["arch"] == b["arch"] and a["param_names"] == b["param_names"]
            assert a["step"] == b["step"] and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
            for k in a["model"]:
                torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-6)
            if a["optimizer"] is not None:
                assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
                for j, s in a["optimizer"]["state"].items():
                    torch.testing.assert_close(b["optimizer"]["state"][j]["momentum_buffer"], s["momentum_buffer"],
                                               rtol=1e-4, atol=1e-6)
            # a member's own slice is saved, never the whole stack
            assert (ls / rel).stat().st_size < 1.01 * (sep / rel).stat().st_size
        model_from_checkpoint(ls / "final.pt")


def test_members_stop_independently_like_separate_runs(cnns, tmp_path):
    bad = load_checkpoint(snap(cnns, 0, 2))
    bad["model"] = {k: v * 30 for k, v in bad["model"].items()}  # diverges within the first epoch
    atomic_torch_save(bad, tmp_path / "bad.pt")
    starts = [snap(cnns, 0, 0), snap(cnns, 0, 1), str(tmp_path / "bad.pt"), snap(cnns, 0, 2)]
    configs = [cfg(relax="fc", init_from=s, epochs=None, until_zero_loss=True, max_epochs=6, loss_threshold=0.5)
               for s in starts]
    sep = [train(c, tmp_path / f"sep{i}") for i, c in enumerate(configs)]
    ls = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(len(configs))])
    ends = [(r["status"], r["stop_reason"], r["epoch"]) for r in ls]
    assert ends == [(r["status"], r["stop_reason"], r["epoch"]) for r in sep]
    assert len(set(ends)) >= 3, ends  # zero loss at different epochs, the cap, a divergence
    assert ("diverged", None, 1.0) in ends
    for i in range(len(configs)):
        assert_rows_close(read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl"),
                          read_metrics(tmp_path / f"ls{i}" / "metrics.jsonl"))
    # a finished group is returned as it is, not redone
    again = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(len(configs))])
    assert [r["metrics"] for r in again] == [r["metrics"] for r in ls]


RUNNER = ("import json, sys, torch; from archrelax.train import TrainConfig; "
          "from archrelax.train.lockstep import train_lockstep; torch.set_num_threads(1); "
          "cs = [TrainConfig.from_dict(c) for c in json.loads(sys.argv[1])]; "
          "train_lockstep(cs, json.loads(sys.argv[2]))")


def test_kill_minus_9_then_resume_by_lockstep_or_by_the_trainer(cnns, tmp_path):
    configs = [cfg(relax=to, init_from=snap(cnns, 0, t), epochs=4, snapshots=[3]) for to, t in
               (("fc", 0), ("fc", 2))]
    ref = [tmp_path / f"ref{i}" for i in range(2)]
    train_lockstep(configs, ref)
    victim = [c.to_dict() | {"checkpoint_every_steps": 3} for c in configs]  # runtime field: same numbers
    runs = [tmp_path / f"run{i}" for i in range(2)]
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(victim), json.dumps([str(r) for r in runs])],
                            env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, killed = time.time() + 120, False
    while time.time() < deadline and proc.poll() is None:
        try:
            steps = [load_checkpoint(r / "checkpoints" / "last.pt")["step"] for r in runs]
        except (FileNotFoundError, ValueError):
            steps = [-1]
        if min(steps) >= 7:  # mid-epoch of the 2nd epoch (4 steps per epoch)
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    assert killed and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert all(json.loads((r / "status.json").read_text())["status"] == "running" for r in runs)
    by_trainer = [tmp_path / f"solo{i}" for i in range(2)]
    for r, s in zip(runs, by_trainer):
        shutil.copytree(r, s)
        (s / ".lock").unlink(missing_ok=True)
    resumed = train_lockstep(configs, runs)
    assert [r["status"] for r in resumed] == ["done", "done"]
    for i in range(2):
        assert_rows_close(read_metrics(ref[i] / "metrics.jsonl"), read_metrics(runs[i] / "metrics.jsonl"))
        assert (runs[i] / "snapshots" / "epoch_3.pt").is_file()
        assert train(configs[i], by_trainer[i])["status"] == "done"  # the ordinary trainer resumes a member
        assert_rows_close(read_metrics(ref[i] / "metrics.jsonl"), read_metrics(by_trainer[i] / "metrics.jsonl"))


def test_members_at_different_steps_train_as_separate_stacks(cnns, tmp_path, monkeypatch):
    import archrelax.train.lockstep as ls

    configs = [cfg(relax="fc", init_from=snap(cnns, 0, t), checkpoint_every_steps=1) for t in (1, 2)]
    sep = [train(c, tmp_path / f"sep{i}") for i, c in enumerate(configs)]
    step, calls = ls._Lockstep._step, []

    def interrupted(self, *a, **kw):  # the first run stops after 3 steps (as if its process were stopped)
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return step(self, *a, **kw)

    monkeypatch.setattr(ls._Lockstep, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_lockstep(configs[:1], [tmp_path / "ls0"])
    monkeypatch.setattr(ls._Lockstep, "_step", step)
    # as the trainer: a KeyboardInterrupt that bypassed the signal handling leaves the run resumable
    assert json.loads((tmp_path / "ls0" / "status.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "ls0" / "checkpoints" / "last.pt")["step"] == 3
    notes: list[str] = []
    out = train_lockstep(configs, [tmp_path / "ls0", tmp_path / "ls1"], log=notes.append)  # steps 3 and 0
    assert [r["status"] for r in out] == ["done", "done"]
    assert any("2 different steps or shapes" in n for n in notes), notes
    for i in range(2):
        assert_rows_close(read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl"),
                          read_metrics(tmp_path / f"ls{i}" / "metrics.jsonl"))
    assert out[0]["metrics"]["train_loss"] == pytest.approx(sep[0]["metrics"]["train_loss"], rel=RTOL)


@register_model("_test_bn_cnn")
def _bn_cnn(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    m = nn.Sequential(nn.Conv2d(in_channels, 4, 5, stride=4), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * ((input_size - 5) // 4 + 1) ** 2, num_classes))
    m.input_shape = (in_channels, input_size, input_size)
    return m


def test_unstackable_model_falls_back_to_separate_training_with_a_note(tmp_path):
    configs = [cfg(model="_test_bn_cnn", model_kwargs={}, seed=s, epochs=1) for s in (0, 1)]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    notes: list[str] = []
    out = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(2)], log=notes.append)
    assert [r["status"] for r in out] == ["done", "done"]
    assert any("BatchNorm2d" in n and "one after another" in n for n in notes), notes
    for i in range(2):  # the ordinary loop: the same numbers exactly
        a, b = (read_metrics(tmp_path / f"{k}{i}" / "metrics.jsonl") for k in ("sep", "ls"))
        assert [{k: v for k, v in r.items() if k not in VOLATILE} for r in a] == \
            [{k: v for k, v in r.items() if k not in VOLATILE} for r in b]


def test_group_checks_configs_and_records_a_failing_member(cnns, tmp_path):
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        train_lockstep([cfg(lr=0.1), cfg(lr=0.2)], [tmp_path / "a", tmp_path / "b"])
    configs = [cfg(relax="fc", init_from=snap(cnns, 0, 1), epochs=1),
               cfg(relax="fc", init_from=str(tmp_path / "missing.pt"), epochs=1)]
    out = train_lockstep(configs, [tmp_path / "ok", tmp_path / "bad"])
    assert out[0]["status"] == "done"
    assert out[1]["status"] == "failed" and "missing.pt" in out[1]["error"] and "Traceback" in out[1]["traceback"]
    assert json.loads((tmp_path / "bad" / "status.json").read_text())["status"] == "failed"


def test_members_checkpoint_on_the_time_rule_not_at_every_epoch_end(cnns, tmp_path):
    c = cfg(relax="fc", init_from=snap(cnns, 0, 1), checkpoint_every_s=3600.0)  # epochs=2: 2 epoch ends
    train(c, tmp_path / "sep")
    train_lockstep([c, c.to_dict() | {"init_from": snap(cnns, 0, 2)}], [tmp_path / "ls0", tmp_path / "ls1"])
    assert load_checkpoint(tmp_path / "sep" / "checkpoints" / "last.pt")["step"] == 8  # the trainer: every epoch end
    assert load_checkpoint(tmp_path / "ls0" / "checkpoints" / "last.pt")["step"] == 0  # a stack: the time rule only
    assert load_checkpoint(tmp_path / "ls0" / "final.pt")["step"] == 8


def test_bf16_autocast_lockstep_runs_and_tracks_separate_runs(cnns, tmp_path):
    configs = [cfg(relax="lc", init_from=snap(cnns, 0, t), epochs=1, amp="bf16") for t in (1, 2)]
    sep = [train(c, tmp_path / f"sep{i}") for i, c in enumerate(configs)]
    ls = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(2)])
    for a, b in zip(sep, ls):  # same bf16 GEMMs member by member: equal up to bf16 rounding of sums
        assert b["status"] == "done"
        assert b["metrics"]["train_loss"] == pytest.approx(a["metrics"]["train_loss"], rel=1e-2)


# ---- the lattice and the soft release in lockstep ------------------------------------------------


@pytest.mark.parametrize("to", ["wide:full", "tiled:2", "fc@features.0"])
def test_lattice_members_equal_separate_runs(cnns, tmp_path, to):
    """Wide and tiled layers stack member by member (their own forward); a path step relaxing one layer stacks
    its eFCN layer beside the remaining convs."""
    to, _, layer = to.partition("@")
    extra = {"relax_layers": [layer]} if layer else {}
    configs = [cfg(relax=to, seed=s, init_from=snap(cnns, s, t), **extra) for s, t in ((0, 1), (0, 2), (1, 1))]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    notes: list[str] = []
    out = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(3)], log=notes.append)
    assert notes == [] and [r["status"] for r in out] == ["done"] * 3  # one stack, no fallback
    for i in range(3):
        rows = read_metrics(tmp_path / f"ls{i}" / "metrics.jsonl")
        assert_rows_close(read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl"), rows)
        assert "offsharing_ratio" in rows[-1]
        a, b = (load_checkpoint(tmp_path / f"{k}{i}" / "final.pt") for k in ("sep", "ls"))
        assert a["arch"] == b["arch"]
        model_from_checkpoint(tmp_path / f"ls{i}" / "final.pt")


@pytest.mark.parametrize("to,toward,schedule,batched", [("fc", "cnn", "exp:1", False), ("fc", "local", "const", True),
                                                        ("lc", "shared", "linear:2", False)])
def test_soft_release_members_equal_separate_runs(cnns, tmp_path, to, toward, schedule, batched):
    """The penalty's gradient λ(t)·2(θ − Pθ) goes into each member's slice of the stacked gradient, λ(t) from the
    member's own step: metrics (soft_lambda, soft_penalty included) and weights equal separate soft runs."""
    soft = dict(soft_lambda=4.0, soft_toward=toward, soft_schedule=schedule)
    configs = [cfg(relax=to, seed=s, init_from=snap(cnns, s, t), **soft) for s, t in ((0, 1), (0, 2), (1, 2))]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    hard = train(cfg(relax=to, init_from=snap(cnns, 0, 1)), tmp_path / "hard")
    notes: list[str] = []
    out = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(3)], log=notes.append, batched=batched)
    assert notes == [] and [r["status"] for r in out] == ["done"] * 3  # trained in lockstep, not by the fallback
    for i in range(3):
        sep = read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl")
        assert_rows_close(sep, read_metrics(tmp_path / f"ls{i}" / "metrics.jsonl"))
        assert {"soft_lambda", "soft_penalty"} <= sep[-1].keys()
        a, b = (load_checkpoint(tmp_path / f"{k}{i}" / "final.pt") for k in ("sep", "ls"))
        for k in a["model"]:
            torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-6)
    # the penalty changes the training: a test that ignored it would fail
    assert out[0]["metrics"]["train_loss"] != pytest.approx(hard["metrics"]["train_loss"], rel=1e-3)


# ---- signals ----------------------------------------------------------------------------------------------


def test_a_signal_stops_the_group_every_member_checkpointed_and_interrupted(cnns, tmp_path, monkeypatch):
    """SIGTERM mid-run: the stack's members save their state at the step reached and are 'interrupted'; members of
    a stack not started yet are 'interrupted' as they are; Interrupted (exit code 143) is raised; a rerun resumes
    them all, and the metrics equal uninterrupted runs."""
    import archrelax.train.lockstep as ls
    from archrelax.signals import Interrupted

    configs = [cfg(relax="fc", init_from=snap(cnns, s, t), epochs=3) for s, t in ((0, 0), (0, 1), (1, 2))]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    runs = [tmp_path / f"ls{i}" for i in range(3)]
    step, calls = ls._Lockstep._step, []

    def signalled_at(n: int):
        def patched(self, *a, **kw):
            calls.append(1)
            if len(calls) == n:  # a real signal to this process, while the stack trains its n-th step
                os.kill(os.getpid(), signal.SIGTERM)
            return step(self, *a, **kw)
        return patched

    monkeypatch.setattr(ls._Lockstep, "_step", signalled_at(3))
    with pytest.raises(Interrupted) as e:
        train_lockstep(configs[:1], runs[:1])
    assert e.value.exit_code == 143
    st = json.loads((runs[0] / "status.json").read_text())
    assert st["status"] == "interrupted" and st["step"] == 3, st
    assert st["error"] == "interrupted by SIGTERM at step 3 (epoch 0.75); checkpoint written, rerun to resume"
    assert load_checkpoint(runs[0] / "checkpoints" / "last.pt")["step"] == 3  # 0 steps to redo

    calls.clear()  # the group: run 0 at step 3 (its own stack, first), runs 1 and 2 fresh (a second stack)
    monkeypatch.setattr(ls._Lockstep, "_step", signalled_at(2))
    with pytest.raises(Interrupted):
        train_lockstep(configs, runs)
    states = [json.loads((r / "status.json").read_text()) for r in runs]
    assert [s["status"] for s in states] == ["interrupted"] * 3, states
    assert states[0]["step"] == 5 and load_checkpoint(runs[0] / "checkpoints" / "last.pt")["step"] == 5
    assert all("stack had not started" in s["error"] and s["step"] == 0 for s in states[1:]), states

    monkeypatch.setattr(ls._Lockstep, "_step", step)
    assert [r["status"] for r in train_lockstep(configs, runs)] == ["done"] * 3
    for i in range(3):
        assert_rows_close(read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl"), read_metrics(runs[i] / "metrics.jsonl"))


# ---- signals to `archrelax run` with lockstep: a real signal to a subprocess ------------------------------------

RUN_SPEC = {  # 2 steps per epoch; two eFCNs (t_w = 0, 1) long enough (240 steps) to be caught mid-run, as one group
    "name": "lockstep-signals", "model": "vanilla_cnn", "model_kwargs": {"width": 2},
    "data": "synthetic:1x28x28:2:40:20",
    "train": {"batch_size": 20, "lr": 0.05, "eval_times": "log:4", "device": "cpu", "checkpoint_every_steps": 7},
    "cnn": {"epochs": 2, "until_zero_loss": False}, "relaxed": {"epochs": 120, "until_zero_loss": False},
    "switch_times": [0, 1], "targets": ["fc"], "baselines": [],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def run_reference(tmp_path_factory) -> Path:
    """RUN_SPEC trained without lockstep, uninterrupted, in this process (one thread, as the subprocesses)."""
    from archrelax.protocol import run_experiment, spec_from_dict

    exp = tmp_path_factory.mktemp("ref") / "exp"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(spec_from_dict(RUN_SPEC), exp, log=lambda s: None)
    finally:
        torch.set_num_threads(n)
    return exp


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_signal_to_a_lockstep_run_interrupts_every_member_and_rerun_resumes_exactly(run_reference, tmp_path, sig):
    import yaml

    from archrelax.store import ExperimentFolder

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**RUN_SPEC, "lockstep": True}))
    exp = tmp_path / "exp"
    cli = [sys.executable, "-m", "archrelax.cli", "run", str(spec), "--out", str(exp), "--poll", "0.1"]
    proc = subprocess.Popen(cli, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    def step(run: Path) -> int:
        try:
            return json.loads((run / "status.json").read_text()).get("step", 0)
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    deadline = time.monotonic() + 180
    while not (len(runs := sorted(exp.glob("runs/efcn-*"))) == 2 and min(map(step, runs)) >= 14):
        assert proc.poll() is None, f"ended before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the group to train"
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out[-2000:] + err[-3000:]
    assert "lockstep: 2 efcn runs in one process" in out, out
    stopped = {}
    for run in runs:  # every member: checkpointed at the step reached, 'interrupted' (not failed)
        st = ExperimentFolder(exp).run(run.name).read_status()
        assert st.status == "interrupted" and st.error.startswith(f"interrupted by {sig.name} at step {st.step} "), st
        assert 14 <= st.step < 240 and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == st.step
        stopped[run] = st.step
    again = subprocess.run(cli[:4] + [str(exp)], env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    for run, s in stopped.items():  # resumed at the very step it stopped: no step redone
        assert f"resuming {run} at step {s} (epoch {s / 2:g})" in again.stderr, again.stderr[-3000:]
    for run in runs:  # and the metrics of an uninterrupted run without lockstep
        assert_rows_close(read_metrics(run_reference / "runs" / run.name / "metrics.jsonl"),
                          read_metrics(run / "metrics.jsonl"))


def test_second_step_of_a_relaxation_path_equals_separate_runs(cnns, tmp_path):
    """A path's second step: from snapshots of a partly relaxed model (features.0 an eFCN), features.3 to tiled:2;
    the members stack eFCN, tiled and conv layers side by side, and equal separate runs."""
    firsts = []
    for s in (0, 1):  # the path's first step, from each seed's CNN, snapshot at its epoch 1
        train(cfg(relax="fc", relax_layers=["features.0"], seed=s, init_from=snap(cnns, s, 1), snapshots=[1]),
              tmp_path / f"step1-{s}")
        firsts.append(str(tmp_path / f"step1-{s}" / "snapshots" / "epoch_1.pt"))
    configs = [cfg(relax="tiled:2", relax_layers=["features.3"], seed=s, init_from=firsts[s]) for s in (0, 1)]
    sep = [train(c, tmp_path / f"sep{i}") for i, c in enumerate(configs)]
    notes: list[str] = []
    out = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(2)], log=notes.append)
    assert notes == [] and [r["status"] for r in out] == ["done"] * 2
    for i in range(2):
        assert_rows_close(read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl"),
                          read_metrics(tmp_path / f"ls{i}" / "metrics.jsonl"))
        a, b = (load_checkpoint(tmp_path / f"{k}{i}" / "final.pt") for k in ("sep", "ls"))
        assert a["arch"] == b["arch"] and len(a["arch"]["relax_chain"]) == 2, a["arch"]
        kinds = {type(m).__name__ for m in model_from_checkpoint(tmp_path / f"ls{i}" / "final.pt").modules()}
        assert {"DenseConv", "TiledConv2d", "Conv2d"} <= kinds, kinds
    assert sep[0]["metrics"]["train_loss"] != sep[1]["metrics"]["train_loss"]
