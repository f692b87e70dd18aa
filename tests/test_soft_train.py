"""The trainer across the lattice: every target string, relaxation paths (init_from + relax of a partially
relaxed model), optimiser state carried through tiled/wide moves, and the soft release (λ = 0 is the hard
relaxation bit for bit, λ(t) and the penalty in the metrics, exact resume, a very large λ follows the CNN)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from archrelax.data import BatchFeed, load_data
from archrelax.embed import DenseConv, relax, relaxed_layers, to_cnn
from archrelax.models import build_architecture
from archrelax.train import TrainConfig, load_checkpoint, model_from_checkpoint, read_metrics, train
from archrelax.train.soft import soft_lambda
from test_train import DATA, cfg, stable  # the trainer tests' small config (a width-8 VanillaCNN's eFCN stays small)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn_snapshot(tmp_path_factory) -> str:
    """A CNN trained one epoch (SGD with momentum), its snapshot at epoch 1 (optimiser state included)."""
    out = tmp_path_factory.mktemp("cnn")
    torch.set_num_threads(1)
    train(cfg(epochs=1, snapshots=[1], eval_times=[0, 1]), out)
    return str(out / "snapshots" / "epoch_1.pt")


# ---- targets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to, spec", [("lc", "lc"), ("fc", "fc"), ("wide:5", "wide:5"), ("wide:07", "wide:7"),
                                      ("wide:5x6", "wide:5x6"), ("wide:full", "wide:full"), ("tiled:2", "tiled:2"),
                                      ("tiled:2x3", "tiled:2x3")])
def test_every_target_string_trains_from_the_cnn_exactly(tmp_path, cnn_snapshot, to, spec):
    """Each target embeds the snapshot exactly (the run starts with the CNN's losses), is stored in its canonical
    spelling in relax_chain, and rebuilds from the arch record."""
    cnn = load_checkpoint(cnn_snapshot)
    out = tmp_path / "r"
    result = train(cfg(epochs=0.5, relax=to, init_from=cnn_snapshot, eval_times=[0, 0.5]), out)
    assert result["status"] == "done"
    first = read_metrics(out / "metrics.jsonl")[0]
    cnn_rows = read_metrics(cnn_snapshot.replace("snapshots/epoch_1.pt", "metrics.jsonl"))
    assert first["train_loss"] == pytest.approx(cnn_rows[-1]["train_loss"], rel=1e-5, abs=1e-6)
    assert first["offlocal_ratio"] == pytest.approx(0, abs=1e-10) and first["cnn_distance"] == pytest.approx(0, abs=1e-5)
    final = load_checkpoint(out / "final.pt")
    assert final["arch"]["relax_chain"] == [spec] and "relax_chain_layers" not in final["arch"]
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())).relax == spec
    model = build_architecture(final["arch"])
    model.load_state_dict(final["model"])  # shapes of the rebuilt model are the trained one's
    assert final["model"]["features.0.weight"].shape != cnn["model"]["features.0.weight"].shape


@pytest.mark.parametrize("bad", ["wide", "wide:0", "tiled:x", "cnn", "lc:2", "full"])
def test_bad_targets_are_one_line_errors_listing_the_forms(bad, capsys):
    with pytest.raises(ValueError, match=r"TrainConfig.relax=.* is not valid; allowed: 'lc', 'fc', 'wide:K'.*'tiled:T'"):
        cfg(relax=bad)
    from archrelax.cli import main

    assert main(["train", "vanilla_cnn", "--relax", bad, "--out", "never-created"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--relax {bad} is not valid; allowed: 'lc', 'fc'" in err


# ---- relaxation paths: init_from + relax of a partially relaxed model -----------------------------------------


def test_path_relaxes_one_layer_then_another_exactly_and_resumes(tmp_path, cnn_snapshot):
    first, second = tmp_path / "f0", tmp_path / "f3"
    train(cfg(epochs=1, relax="fc", relax_layers=["features.0"], init_from=cnn_snapshot, snapshots=[0.5],
              eval_times=[0, 0.5, 1]), first)
    snap = first / "snapshots" / "epoch_0.5.pt"
    config = cfg(epochs=1, relax="tiled:2", relax_layers=["features.3"], init_from=str(snap), eval_times=[0, 0.5, 1],
                 checkpoint_every_steps=1)
    done = train(config, second)
    assert done["status"] == "done"
    rows = read_metrics(second / "metrics.jsonl")
    parent = {r["epoch"]: r for r in read_metrics(first / "metrics.jsonl")}
    assert rows[0]["global_epoch"] == 1.5  # on the CNN's clock: 1 (CNN) + 0.5 (first step)
    assert rows[0]["train_loss"] == pytest.approx(parent[0.5]["train_loss"], rel=1e-5, abs=1e-6)
    final = load_checkpoint(second / "final.pt")
    arch = final["arch"]
    assert arch["relax_chain"] == ["fc", "tiled:2"]
    assert arch["relax_chain_layers"] == [["features.0"], ["features.3"]] and arch["relax_layers"] is None
    model = model_from_checkpoint(final)
    kinds = {n: type(m).__name__ for n, m in relaxed_layers(model).items()}
    assert kinds == {"features.0": "DenseConv", "features.3": "TiledConv2d"}
    assert type(model.features[6]).__name__ == "Conv2d"  # never selected: still the conv
    # a third step with no selection moves everything still below fc: the tiled layer and the last conv
    third = train(cfg(epochs=0, relax="fc", init_from=str(second / "final.pt"), eval_times=[0]), tmp_path / "all")
    arch3 = load_checkpoint(tmp_path / "all" / "final.pt")["arch"]
    assert arch3["relax_chain_layers"] == [["features.0"], ["features.3"], None]
    assert {type(m).__name__ for m in relaxed_layers(model_from_checkpoint(tmp_path / "all" / "final.pt")).values()} == {
        "DenseConv"}
    assert third["metrics"]["train_loss"] == pytest.approx(rows[-1]["train_loss"], rel=1e-5, abs=1e-6)
    # resume of a path step: its architecture is rebuilt from the per-step selections
    status = json.loads((second / "status.json").read_text())
    (second / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    (second / "final.pt").unlink()
    ck = load_checkpoint(second / "checkpoints" / "last.pt")
    assert ck["arch"] == arch
    again = train(config, second)
    assert again["status"] == "done" and again["metrics"]["train_loss"] == done["metrics"]["train_loss"]


def test_carry_goes_through_tiled_and_wide_moves(tmp_path, cnn_snapshot):
    """optimizer_state='carry' from a tiled (or wide) run's snapshot into its eFCN: the momentum buffers go through
    the same move up the lattice as the weights (DenseConv.from_relaxed of the layer holding the buffer)."""
    for to in ("tiled:2", "wide:7"):
        mid = tmp_path / to.replace(":", "")
        train(cfg(epochs=0.5, relax=to, init_from=cnn_snapshot, snapshots=[0.5], eval_times=[0.5]), mid)
        snap = load_checkpoint(mid / "snapshots" / "epoch_0.5.pt")
        out = mid / "fc"
        train(cfg(epochs=0, relax="fc", init_from=str(mid / "snapshots" / "epoch_0.5.pt"), optimizer_state="carry",
                  eval_times=[0]), out)
        carried = load_checkpoint(out / "checkpoints" / "last.pt")
        src = model_from_checkpoint(snap)
        for name in ("features.0.weight", "features.3.bias"):
            buf = carried["optimizer"]["state"][carried["param_names"].index(name)]["momentum_buffer"]
            src_buf = snap["optimizer"]["state"][snap["param_names"].index(name)]["momentum_buffer"]
            layer = src.get_submodule(name.rsplit(".", 1)[0])
            with torch.no_grad():
                getattr(layer, name.rsplit(".", 1)[1]).copy_(src_buf)
            expected = getattr(DenseConv.from_relaxed(layer), name.rsplit(".", 1)[1])
            assert buf.shape == expected.shape != src_buf.shape
            torch.testing.assert_close(buf, expected, rtol=0, atol=0)


# ---- soft release --------------------------------------------------------------------------------------------


def test_lambda_zero_is_the_hard_relaxation_bit_for_bit(tmp_path, cnn_snapshot):
    hard = cfg(relax="fc", init_from=cnn_snapshot)
    train(hard, tmp_path / "hard")
    train(cfg(relax="fc", init_from=cnn_snapshot, soft_lambda=0.0, soft_schedule="exp:1"), tmp_path / "zero")
    # λ > 0 whose schedule is 0 from the switch on: λ(t) = 0 at every step adds nothing either
    train(cfg(relax="fc", init_from=cnn_snapshot, soft_lambda=5.0, soft_schedule="step:0"), tmp_path / "step0")
    ref = stable(read_metrics(tmp_path / "hard" / "metrics.jsonl"))
    assert stable(read_metrics(tmp_path / "zero" / "metrics.jsonl")) == ref
    step0 = stable(read_metrics(tmp_path / "step0" / "metrics.jsonl"))
    assert [{k: v for k, v in r.items() if not k.startswith("soft_")} for r in step0] == ref
    assert all(r["soft_lambda"] == 0.0 for r in step0)
    weights = [load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("hard", "zero", "step0")]
    for w in weights[1:]:
        assert all(torch.equal(w[k], weights[0][k]) for k in w)


def test_soft_run_records_lambda_and_penalty_and_resumes_exactly(tmp_path, cnn_snapshot, monkeypatch):
    config = cfg(relax="fc", init_from=cnn_snapshot, soft_lambda=4.0, soft_schedule="exp:0.5", eval_times=[0, 0.5, 1,
                                                                                                          1.5, 2])
    train(config, tmp_path / "ref")
    rows = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert [r["soft_lambda"] for r in rows] == [soft_lambda("exp:0.5", r["epoch"], lam=4.0) for r in rows]
    assert rows[0]["soft_penalty"] == 0.0  # right after the embedding, exactly
    assert all(r["soft_penalty"] > 0 for r in rows[1:])
    # interrupted after step 5 (a checkpoint every 2 steps), then resumed: the same run
    from archrelax.train.step import UpdateStep

    calls = {"n": 0}
    real = UpdateStep.add_soft_grad

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        real(self, *args)

    monkeypatch.setattr(UpdateStep, "add_soft_grad", flaky)
    victim = TrainConfig.from_dict({**config.to_dict(), "checkpoint_every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        train(victim, tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 4
    monkeypatch.setattr(UpdateStep, "add_soft_grad", real)
    train(victim, tmp_path / "cut")
    assert stable(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == stable(rows)
    a, b = (load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("ref", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_soft_settings_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"soft_schedule='exp' is not valid; allowed: 'const', 'linear:E'"):
        cfg(soft_schedule="exp")
    with pytest.raises(ValueError, match=r"soft_lambda=-1 is not valid; allowed: a number >= 0"):
        cfg(soft_lambda=-1)
    with pytest.raises(ValueError, match=r"soft_toward='conv' is not valid; allowed: one of 'cnn', 'local', 'shared'"):
        cfg(soft_toward="conv")
    # SGD: lr·λ >= 1 + momentum diverges on the penalty alone
    with pytest.raises(ValueError, match=r"lr·λ = 0.05·40 = 2 >= 1 \+ momentum = 1.9.*allowed: λ < 38"):
        cfg(relax="fc", soft_lambda=40)
    cfg(relax="fc", soft_lambda=40, optimizer="adam")  # no such bound for Adam
    with pytest.raises(ValueError, match="no relaxed layer for the penalty"):
        train(cfg(epochs=0.5, soft_lambda=1.0), tmp_path / "cnn")
    from archrelax.cli import main

    for argv, text in ((["--soft-schedule", "linear"], "--soft-schedule linear is not valid; allowed: 'const'"),
                       (["--soft-lambda", "-2"], "--soft-lambda -2.0 is not valid; allowed: a number >= 0"),
                       (["--soft-lambda", "40", "--relax", "fc", "--lr", "0.05"], "lr·λ = 0.05·40 = 2 >= 1 + momentum"),
                       (["--soft-toward", "x"], "argument --soft-toward: invalid choice: 'x'")):
        try:
            rc = main(["train", "vanilla_cnn", *argv, "--out", str(tmp_path / "never")])
        except SystemExit as e:  # argparse's own usage errors (choices)
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and text in err.splitlines()[-1], err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("schedule", ["const", "linear:2", "exp:0.5", "step:1", "step:0", "exp:1e-1", "linear:.5"])
def test_every_schedule_form_on_the_command_line(schedule):
    from archrelax.cli import build_parser
    from archrelax.train._cli import config_from_args
    from archrelax.train.soft import SoftSchedule

    p = build_parser()._subparsers._group_actions[0].choices["train"]
    c = config_from_args(p.parse_args(["vanilla_cnn", "--out", "x", "--relax", "fc", "--soft-lambda", "2",
                                       "--soft-schedule", schedule, "--soft-toward", "shared"]))
    assert (c.soft_lambda, c.soft_schedule, c.soft_toward) == (2.0, SoftSchedule.parse(schedule).spec, "shared")


def test_a_very_large_lambda_follows_the_cnn(tmp_path, cnn_snapshot):
    """What a very large λ makes of the eFCN, precisely (SGD without momentum, lr·λ = 1/2: each update projects
    the previous point onto the CNN subspace exactly, θ' = Pθ − lr·g):

    1. it stays on the CNN subspace up to one step's off-subspace excursion: cnn_distance ≤ 0.3 of the hard
       eFCN's at every evaluation (which grows, while the soft run's does not), and a function a CNN computes (its
       CNN projection's loss is its own);
    2. its CNN part follows the CNN trained by SGD with each tap's step divided by its tie count (its number of
       copies in the eFCN): gradient descent on the embedded parameters, projected, is that preconditioned CNN
       step. Not undone: a tied entry of the eFCN receives 1/ties of the CNN's update of its tap, so the conv
       layers learn ~positions times slower than in the plain CNN continuation, whose trajectory it does NOT
       follow (measured: the oracle moves 0.15 in weight space, the soft run's projection ends 0.02 from it, the
       CNN continuation 0.67).
    """
    lr = 0.05
    base = dict(init_from=cnn_snapshot, momentum=0.0, lr=lr, epochs=2, batch_size=10, eval_times=[0, 0.5, 1, 1.5, 2])
    runs = {"soft": dict(relax="fc", soft_lambda=0.5 / lr), "hard": dict(relax="fc"), "cont": {}}
    for name, kw in runs.items():
        train(cfg(**base, **kw), tmp_path / name)
    soft, hard = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("soft", "hard"))
    assert soft[0]["cnn_distance"] == hard[0]["cnn_distance"] == pytest.approx(0, abs=1e-6)
    # from 10 steps on: the soft run's distance is one step's excursion (it does not grow), the hard run's grows
    sd, hd = [r["cnn_distance"] for r in soft[1:]], [r["cnn_distance"] for r in hard[1:]]
    assert all(a <= 0.3 * b for a, b in zip(sd, hd)) and max(sd) <= 1.5 * min(sd), (sd, hd)
    assert sd[-1] <= 0.1 * hd[-1] and hd[-1] > 1e-2
    # the oracle: the CNN with each tap's step divided by its tie count, on the trainer's own batches
    cnn = model_from_checkpoint(cnn_snapshot)
    start = {k: v.clone() for k, v in cnn.state_dict().items()}
    ties = {}
    for name, layer in relaxed_layers(relax(cnn, "fc")).items():
        ties[f"{name}.weight"] = torch.diagonal(layer.tap_gram()).reshape(layer.geometry.kernel_size).float()
        ties[f"{name}.bias"] = float(layer.geometry.P)
    data = load_data(DATA, train_size=None, test_size=None, seed=0)
    feed = BatchFeed(data.train.images, data.train.labels, 10, mean=data.mean, std=data.std,
                     device=torch.device("cpu"), shuffle=True, seed=0)
    oracle = model_from_checkpoint(cnn_snapshot).train()
    for epoch in range(2):
        for x, y in feed.epoch(epoch):
            oracle.zero_grad()
            F.cross_entropy(oracle(x), y).backward()
            with torch.no_grad():
                for n, p in oracle.named_parameters():
                    p -= lr * p.grad / ties.get(n, 1.0)
    end = model_from_checkpoint(tmp_path / "soft" / "final.pt")
    projected = to_cnn(end, like=cnn)
    cont = model_from_checkpoint(tmp_path / "cont" / "final.pt")

    def dist(a: dict, b: dict) -> float:
        return float(sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5)

    o, moved = oracle.state_dict(), dist(oracle.state_dict(), start)
    assert moved > 0.01
    assert dist(projected.state_dict(), o) <= 0.25 * moved
    assert dist(cont.state_dict(), o) >= 10 * dist(projected.state_dict(), o)
    # its function is a CNN's: the loss of its projection is its own, to the off-subspace excursion
    whole = BatchFeed(data.train.images, data.train.labels, len(data.train.labels), mean=data.mean, std=data.std,
                      device=torch.device("cpu"), shuffle=False)
    (xn, y), = list(whole.epoch(0))
    with torch.no_grad():
        la, lb = F.cross_entropy(end.eval()(xn), y).item(), F.cross_entropy(projected.eval()(xn), y).item()
    assert abs(la - lb) <= 0.01 * la
    assert soft[-1]["train_loss"] == pytest.approx(la, rel=1e-4)
