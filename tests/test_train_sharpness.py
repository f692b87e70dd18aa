"""λ_max along training (TrainConfig.sharpness_products): every evaluation row carries it, warm-started from the
previous evaluation's eigenvector; measuring changes neither the trajectory nor the RNG; a resumed run writes the
rows an uninterrupted one writes, bit for bit; lockstep members carry the same keys and numbers as separate runs."""
from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from archrelax.analysis.hessian import HessianOperator
from archrelax.analysis.sharpness import hessian_eigenvalues, top_eigenvalue
from archrelax.signals import Interrupted
from archrelax.train import TrainConfig, load_checkpoint, read_metrics, train
from archrelax.train.checkpoint import model_from_checkpoint
from archrelax.train.lockstep import train_lockstep
from archrelax.train.recorder import SHARPNESS_KEYS, Recorder, sharpness_batch
from archrelax.train.setup import load_run_data

DATA = "synthetic:1x28x28:10:200:100"  # 4 steps per epoch at batch 50
VOLATILE = ("wall_time", "peak_mem_bytes")
ON = dict(sharpness_products=6, sharpness_samples=48)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def cfg(**kw) -> TrainConfig:
    base = dict(model="vanilla_cnn", model_kwargs={"width": 4}, data=DATA, batch_size=50, epochs=2, lr=0.05,
                eval_times="every", device="cpu", progress=False, checkpoint_every_s=None)
    return TrainConfig(**{**base, **kw})


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def without_sharpness(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in SHARPNESS_KEYS} for r in stable(rows)]


@pytest.mark.parametrize("kw", [
    {},
    # dropout draws from the global RNG at every step and augmentation from the feed's: measuring draws from neither
    dict(model="alexnet", model_kwargs={"width": 2, "dropout": 0.5}, data="synthetic:3x32x32:10:200:100",
         augment=["crop", "flip"]),
], ids=["vanilla", "dropout+augment"])
def test_measuring_sharpness_leaves_the_trajectory_bit_for_bit(tmp_path, kw):
    train(cfg(**kw), tmp_path / "off")
    train(cfg(**kw, **ON), tmp_path / "on")
    off, on = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("off", "on"))
    assert without_sharpness(on) == without_sharpness(off)
    a, b = (load_checkpoint(tmp_path / n / "final.pt") for n in ("off", "on"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert all(not set(SHARPNESS_KEYS) & r.keys() for r in off)
    for r in on:  # every row, with its types
        assert isinstance(r["lambda_max"], float) and r["lambda_max"] > 0
        assert isinstance(r["lambda_max_residual"], float) and r["lambda_max_residual"] >= 0
        assert isinstance(r["lambda_max_converged"], bool)
        assert r["lambda_max_converged"] == (r["lambda_max_residual"] <= math.sqrt(1e-3) * abs(r["lambda_max"]))


def test_each_row_is_top_eigenvalue_warm_started_from_the_previous_one(tmp_path):
    """Snapshots at every evaluation hold the weights and the eigenvector of their row: each row is
    ``top_eigenvalue`` of its weights on the fixed subset from the previous row's vector (the first from the
    seed's start vector), bit for bit; and a converged row is within its residual of the true λ_max."""
    c = cfg(**ON, epochs=3, snapshots=[0, 1, 2, 3], seed=3)
    train(c, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    x, y = sharpness_batch(c, load_run_data(c), torch.device("cpu"))
    assert x.shape == (48, 1, 28, 28) and y.shape == (48,)
    v0 = None
    for t, row in zip((0, 1, 2, 3), rows, strict=True):
        snap = load_checkpoint(tmp_path / "snapshots" / f"epoch_{t}.pt")
        model = model_from_checkpoint(tmp_path / "snapshots" / f"epoch_{t}.pt")
        top = top_eigenvalue(model, x, y, v0=v0, products=6, tol=1e-3, seed=3)
        assert (top.value, top.residual, top.converged) == (row["lambda_max"], row["lambda_max_residual"],
                                                            row["lambda_max_converged"]), t
        assert torch.equal(top.vector, snap["progress"]["sharpness_vector"])
        exact = hessian_eigenvalues(model, x, y, tol=1e-10, max_iter=200, which="largest").values[0]
        assert row["lambda_max"] <= exact * (1 + 1e-5)  # a Ritz value of the largest: below it
        if row["lambda_max_converged"]:
            assert abs(row["lambda_max"] - exact) <= row["lambda_max_residual"] * (1 + 1e-3) + 1e-6
        v0 = top.vector
    # the warm start is what makes the rows: a cold start at the last snapshot gives another estimate
    cold = top_eigenvalue(model, x, y, products=6, seed=3)
    assert cold.value != rows[-1]["lambda_max"]


def test_interrupted_run_resumes_to_the_same_rows_bit_for_bit(tmp_path, monkeypatch):
    """A signal mid-epoch (after an evaluation, before the next): the checkpoint holds the eigenvector that the next
    evaluation warm-starts from, so the resumed run's rows are the uninterrupted run's."""
    c = cfg(**ON, epochs=3)
    train(c, tmp_path / "ref")
    after, calls = Recorder.after_update, []

    def signalled(self, *a, **kw):
        calls.append(1)
        if len(calls) == 6:  # a real signal to this process at step 6 (epoch 1.5: evaluated at step 4)
            os.kill(os.getpid(), signal.SIGTERM)
        return after(self, *a, **kw)

    monkeypatch.setattr(Recorder, "after_update", signalled)
    with pytest.raises(Interrupted):
        train(c, tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["step"] == 6 and ck["progress"]["sharpness_vector"].shape == (HessianOperator(
        model_from_checkpoint(tmp_path / "ref" / "final.pt"), *sharpness_batch(c, load_run_data(c), torch.device("cpu"))
    ).dim,)
    monkeypatch.setattr(Recorder, "after_update", after)
    assert train(c, tmp_path / "run")["status"] == "done"
    ref, run = (stable(read_metrics(tmp_path / n / "metrics.jsonl")) for n in ("ref", "run"))
    assert run == ref and len(ref) == 4


def test_a_diverging_run_records_nan_and_stops(tmp_path):
    result = train(cfg(**ON, lr=1e9, epochs=3, eval_times="every"), tmp_path)
    assert result["status"] == "diverged"
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isfinite(rows[0]["lambda_max"])  # the initialisation's


def test_resume_with_other_sharpness_settings_is_refused(tmp_path):
    train(cfg(**ON, epochs=1), tmp_path)
    with pytest.raises(ValueError, match="different config.*sharpness_products"):
        train(cfg(epochs=1, sharpness_products=3, sharpness_samples=48), tmp_path)


@pytest.mark.parametrize("batched", [False, True])
def test_lockstep_members_carry_the_rows_of_separate_runs(tmp_path, batched):
    """Each member's λ_max is computed on its own model (its parameters are views of the stack's): the same keys,
    and the numbers of separate runs to float tolerance (the fused SGD over the stack rounds a few weights by an
    ulp; member by member the rest is bit for bit)."""
    configs = [cfg(**ON, seed=s) for s in (0, 1)]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    results = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(2)], batched=batched)
    assert [r["status"] for r in results] == ["done"] * 2
    worst = 0.0
    for i in range(2):
        sep, ls = (stable(read_metrics(tmp_path / f"{n}{i}" / "metrics.jsonl")) for n in ("sep", "ls"))
        assert [r.keys() for r in sep] == [r.keys() for r in ls] and set(SHARPNESS_KEYS) <= ls[0].keys()
        for a, b in zip(sep, ls):
            assert b["lambda_max"] == pytest.approx(a["lambda_max"], rel=1e-5)
            assert b["lambda_max_residual"] == pytest.approx(a["lambda_max_residual"], rel=1e-2, abs=1e-5)
            worst = max(worst, abs(a["lambda_max"] - b["lambda_max"]) / a["lambda_max"])
    print(f"lockstep (batched={batched}) λ_max vs separate runs: largest relative difference {worst:.2e}")
