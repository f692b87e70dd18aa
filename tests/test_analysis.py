"""The analyses' promises: known eigenvalues and traces, exact interpolation endpoints, the local-only
ablation of an untrained eFCN is its CNN, no analysis changes the caller's model, and analyse_experiment
writes (and caches) every file on a real, small experiment folder."""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from archrelax.analysis import (
    ANALYSES, AnalysisSettings, analyse_experiment, distance_curve, evaluate, evaluate_ablation, final_gain,
    hessian_eigenvalues, hessian_trace, interpolate, interpolate_state, local_change, measure_sharpness,
    memory_table, offlocal_templates, read_metrics,
)
from archrelax.embed import relax


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class Quadratic(nn.Module):
    """loss = ½ θᵀAθ (the forward returns it; the "loss function" passes it through): Hessian = A."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.theta = nn.Parameter(torch.randn(len(a), generator=torch.Generator().manual_seed(1), dtype=a.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta + 0 * x.sum()


def passthrough(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out


def known_matrix(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Qᵀ with a seeded random orthogonal Q: dense, so Hutchinson has real variance."""
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(eigs) @ q.T


DUMMY = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


def test_top_eigenvalues_of_a_quadratic():
    eigs = torch.linspace(0.5, 8.0, 40, dtype=torch.float64)
    eigs[-1], eigs[-2] = 12.0, 10.0
    model = Quadratic(known_matrix(eigs))
    res = hessian_eigenvalues(model, *DUMMY, k=2, loss_fn=passthrough, tol=1e-8, max_iter=300)
    assert all(res.converged), res
    assert res.values[0] == pytest.approx(12.0, rel=1e-3)
    assert res.values[1] == pytest.approx(10.0, rel=1e-3)
    # the stated tolerance is honoured: a loose tol stops earlier with a bigger residual
    loose = hessian_eigenvalues(model, *DUMMY, k=1, loss_fn=passthrough, tol=1e-2, max_iter=300)
    assert loose.iterations[0] < res.iterations[0] and loose.residuals[0] <= 0.1
    # max_iter is a hard cap, reported as not converged
    capped = hessian_eigenvalues(model, *DUMMY, k=1, loss_fn=passthrough, tol=1e-12, max_iter=3)
    assert capped.iterations == [3] and capped.converged == [False]


def test_hutchinson_trace_of_a_known_matrix():
    eigs = torch.linspace(1.0, 10.0, 50, dtype=torch.float64)
    model = Quadratic(known_matrix(eigs, seed=3))
    est = hessian_trace(model, *DUMMY, probes=200, loss_fn=passthrough, seed=0)
    true = eigs.sum().item()
    assert abs(est.trace - true) <= 0.05 * true
    assert 0 < est.stderr < 0.05 * true and abs(est.trace - true) <= 4 * est.stderr
    # seeded: the same probes give the same estimate
    assert hessian_trace(model, *DUMMY, probes=200, loss_fn=passthrough, seed=0) == est


# --------------------------------------------------------------------------------------------------------------
# small real models: a CNN with BatchNorm and dropout, and its eFCN

def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.3),
        nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))


def data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def efcn_of(cnn: nn.Module) -> nn.Module:
    return relax(cnn, to="fc", example_input=(1, 2, 6, 6))


def perturbed(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        for m in out.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
                m.running_mean.add_(0.1)
                m.running_var.mul_(1.5)
    return out


def snapshot(model: nn.Module) -> tuple[dict, list]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, m.training) for n, m in model.named_modules()])


def assert_unchanged(model: nn.Module, before: tuple[dict, list]) -> None:
    state, modes = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        assert torch.equal(after[k], state[k]), f"{k} changed"
    assert [(n, m.training) for n, m in model.named_modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_local_only_ablation_of_an_untrained_efcn_is_its_cnn():
    cnn = perturbed(small_cnn())  # BatchNorm with running statistics, evaluated in eval mode
    x, y = data()
    ab = evaluate_ablation(efcn_of(cnn), x, y, batch_size=16)
    ref = evaluate(cnn, x, y, batch_size=16)
    assert ab.local.acc == ref.acc and ab.both.acc == ref.acc
    assert ab.local.loss == pytest.approx(ref.loss, rel=1e-5, abs=1e-6)
    # an untrained eFCN has no off-local weights: off-local only = conv weights and biases all zero
    assert ab.offlocal.loss != pytest.approx(ref.loss, rel=1e-3)


def test_local_change_measures_the_local_blocks_only():
    start = efcn_of(small_cnn())
    end = copy.deepcopy(start)
    with torch.no_grad():
        for name, layer in [("0", end[0]), ("4", end[4])]:
            mask = layer.local_mask()
            layer.weight[mask] *= 1.1  # the local block moves by 10 %
            layer.weight[~mask] += 1.0  # off-local entries must not count
    change = local_change(end, start)
    assert change.keys() == {"0", "4"}
    assert change["0"] == pytest.approx(0.1, rel=1e-5) and change["4"] == pytest.approx(0.1, rel=1e-5)
    assert local_change(start, start) == {"0": 0.0, "4": 0.0}


def test_templates_pick_the_units_with_the_largest_offlocal_weights():
    model = efcn_of(small_cnn())
    layer = model[0]
    with torch.no_grad():  # plant off-local weights in units 7 (larger) and 2
        mask = layer.local_mask()
        layer.weight[7] += 2.0 * ~mask[7]
        layer.weight[2] += 1.0 * ~mask[2]
    t = offlocal_templates(model, count=3)
    assert t.layer == "0" and t.units[:2] == [7, 2]
    assert t.images.shape == t.weights.shape == (3, 2, 6, 6)
    assert float(t.images.min()) >= 0 and float(t.images.max()) <= 1
    # unit 7's template is its off-local part: zero (0.5 in the image) exactly where the conv reads
    local7 = mask[7].reshape(2, 6, 6)
    assert torch.all(t.images[0][local7] == 0.5) and torch.all(t.weights[0][~local7] == 2.0)
    whole = offlocal_templates(model, units=[7], part="all")
    assert torch.equal(whole.weights[0], layer.weight[7].reshape(2, 6, 6))
    with pytest.raises(ValueError, match="out of range"):
        offlocal_templates(model, units=[10_000])


def test_interpolation_endpoints_reproduce_each_model_exactly():
    cnn = perturbed(small_cnn())
    m0 = efcn_of(cnn)
    m1 = perturbed(m0, scale=0.3, seed=5)
    m0.train()  # the caller's modes must survive
    m1.eval()
    train, test = data(40, seed=1), data(24, seed=2)
    before = snapshot(m0), snapshot(m1)
    curves = interpolate(m0, m1, train, test, batch_size=16)
    assert set(curves) == {"linear", "curvilinear", "output"}
    e0 = evaluate(m0, *train, batch_size=16), evaluate(m0, *test, batch_size=16)
    e1 = evaluate(m1, *train, batch_size=16), evaluate(m1, *test, batch_size=16)
    for c in curves.values():
        assert len(c.alphas) >= 11 and c.alphas[0] == 0.0 and c.alphas[-1] == 1.0
        assert (c.train[0], c.test[0]) == e0  # bit for bit: same code path, endpoint tensors themselves
        assert (c.train[-1], c.test[-1]) == e1
        assert len({m.loss for m in c.train}) > 2  # the path between is not constant
    assert_unchanged(m0, before[0])
    assert_unchanged(m1, before[1])


def test_curvilinear_interpolation_interpolates_norms():
    a, b = small_cnn(0).state_dict(), small_cnn(1).state_dict()
    mid = interpolate_state(a, b, 0.5, "curvilinear")
    lin = interpolate_state(a, b, 0.5, "linear")
    w = "0.weight"
    assert mid[w].norm().item() == pytest.approx(0.5 * (a[w].norm() + b[w].norm()).item(), rel=1e-5)
    assert lin[w].norm() < mid[w].norm()  # the straight chord between two random directions is shorter
    assert torch.allclose(lin[w], 0.5 * (a[w] + b[w]))
    assert interpolate_state(a, b, 0.0, "curvilinear")[w] is a[w]
    with pytest.raises(ValueError, match="differ in keys"):
        interpolate_state(a, {"x": torch.zeros(1)}, 0.5)


def test_no_analysis_changes_the_callers_model():
    cnn = perturbed(small_cnn())
    model = perturbed(efcn_of(cnn), scale=0.1, seed=7)
    model.train()
    model[1].eval()  # mixed flags: each module's own flag must come back
    x, y = data(24)
    before = snapshot(model)
    rng = torch.get_rng_state()
    measure_sharpness(model, x, y, max_iter=3, probes=2, batch_size=8)
    evaluate_ablation(model, x, y)
    local_change(model, efcn_of(cnn))
    offlocal_templates(model, count=2)
    interpolate(model, perturbed(model), (x, y), (x, y), alphas=[0, 0.5, 1])
    memory_table(cnn, (2, 2, 6, 6))
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)  # seeded private generators only


def test_sharpness_is_deterministic_and_finds_positive_curvature_near_a_minimum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 4))
    x, y = data(40)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):  # a convex problem: near its minimum every curvature is >= 0
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    s1 = measure_sharpness(model, x, y, k=2, tol=1e-4, max_iter=200, probes=20)
    s2 = measure_sharpness(model, x, y, k=2, tol=1e-4, max_iter=200, probes=20)
    assert s1 == s2
    assert s1.eigen.values[0] > s1.eigen.values[1] > 0
    assert s1.trace.trace > s1.eigen.values[0]  # trace = sum of >= 0 eigenvalues
    # the top eigenvalue agrees with the dense Hessian's
    params = list(model.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])

    def loss_of(v: torch.Tensor) -> torch.Tensor:
        w, b = v[: 72 * 4].view(4, 72), v[72 * 4:]
        return nn.functional.cross_entropy(x.flatten(1) @ w.T + b, y)

    top = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))[-1].item()
    assert s1.eigen.values[0] == pytest.approx(top, rel=1e-3)


def test_distance_records_and_gain(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 0.0, "global_epoch": 1.0, "test_acc": 0.5, "offlocal_ratio": 0.0, "cnn_distance": 0.0},
            {"epoch": 1.0, "test_acc": 0.6, "offlocal_ratio": 0.2, "cnn_distance": 0.3},
            {"epoch": 2.0, "test_acc": 0.7}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"epoch": 3.0, "test_a')  # truncated last line
    recs = read_metrics(p)
    assert len(recs) == 3
    curve = distance_curve(recs, epoch_offset=1.0)
    assert curve.epoch == [1.0, 2.0] and curve.offlocal_ratio == [0.0, 0.2] and curve.cnn_distance == [0.0, 0.3]
    g = final_gain(recs, [{"test_acc": 0.65}])
    assert g.gain == pytest.approx(0.05) and g.final_offlocal_ratio == 0.2 and g.final_cnn_distance == 0.3
    assert final_gain(recs, []).gain is None


def test_memory_table_orders_the_forms():
    cnn = small_cnn()
    rows = {r["form"]: r for r in memory_table(cnn, (2, 2, 6, 6))["rows"]}
    assert set(rows) >= {"cnn", "lc", "fc"}
    assert rows["cnn"]["params"] == sum(p.numel() for p in cnn.parameters())
    assert rows["cnn"]["params"] < rows["lc"]["params"] < rows["fc"]["params"]
    assert rows["fc"]["params"] == sum(p.numel() for p in efcn_of(cnn).parameters())
    assert rows["fc"]["optimizer_bytes"]["adam"] == 2 * rows["fc"]["param_bytes"]


# --------------------------------------------------------------------------------------------------------------
# a real (tiny) experiment folder: the protocol plans it, the trainer trains it

SMALL = AnalysisSettings(device="cpu", batch_size=32, sharpness_samples=32, sharpness_max_iter=12, trace_probes=2,
                         eval_train_samples=32, eval_test_samples=32, template_count=3)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    from archrelax.protocol import run_experiment, spec_from_dict

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = spec_from_dict({
            "name": "analysis-test", "model": "vanilla_cnn", "model_kwargs": {"width": 2},
            "data": "synthetic:1x32x32:4:48:32", "seeds": [0],
            "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 16, "eval_times": "log:2",
                      "device": "cpu"},
            "cnn": {"epochs": 1, "until_zero_loss": False}, "relaxed": {"epochs": 0.5, "until_zero_loss": False},
            "switch_times": [0, 1], "targets": ["fc"], "baselines": ["fcn"], "executor": "local", "workers": 1})
        return run_experiment(spec, tmp_path_factory.mktemp("exp") / "exp", log=lambda s: None)
    finally:
        torch.set_num_threads(n)


def test_analyse_experiment_writes_every_cache_file(experiment):
    res = analyse_experiment(experiment, progress=False, settings=SMALL)
    out = experiment / "analysis"
    assert set(res) == set(ANALYSES)
    for name in ANALYSES:
        obj = json.loads((out / f"{name}.json").read_text())
        assert obj["error"] is None, obj.get("traceback")
        assert obj["analysis"] == name and obj["fingerprint"] and obj["missing"] == []
        assert res[name].to_json() == obj  # the typed result returned is the file written
    sharp = json.loads((out / "sharpness.json").read_text())["points"]
    assert {p["where"] for p in sharp} == {"snapshot", "final"}
    assert {p["kind"] for p in sharp} == {"cnn", "efcn", "fcn"}
    assert all(math.isfinite(p["eigenvalues"][0]) and p["trace_probes"] == 2 for p in sharp)
    dist = json.loads((out / "distance.json").read_text())
    assert sorted(g["t_w"] for g in dist["gain"]) == [0.0, 1.0]
    assert all(c["offlocal_ratio"] for c in dist["curves"])
    abl = json.loads((out / "ablation.json").read_text())["runs"]
    assert len(abl) == 2 and all(set(r["local_change"]) == {"features.0", "features.3", "features.6"} for r in abl)
    tmpl = json.loads((out / "templates.json").read_text())
    with np.load(out / "templates.npz", allow_pickle=False) as npz:
        for r in tmpl["runs"]:
            assert npz[r["key"]].shape == (3, 1, 32, 32) and r["units"] == tmpl["runs"][0]["units"]
    assert {r["kind"] for r in tmpl["runs"]} == {"efcn", "fcn"}
    interp = json.loads((out / "interpolation.json").read_text())
    assert len(interp["alphas"]) == 11 and len(interp["curves"]) == 2 * 3
    mem = json.loads((out / "memory.json").read_text())
    assert [r["form"] for r in mem["rows"]][:3] == ["cnn", "lc", "fc"]
    assert mem["input_shape"] == [1, 32, 32]  # the model as trained on this data, not the factory's default


def test_analyse_experiment_caches_and_tolerates_a_partial_experiment(experiment, tmp_path):
    analyse_experiment(experiment, progress=False, settings=SMALL)  # warm (no-op when the test above ran)
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    out = exp / "analysis"
    stamp = {n: (out / f"{n}.json").stat().st_mtime_ns for n in ANALYSES}
    again = analyse_experiment(exp, progress=False, settings=SMALL)  # copytree keeps mtimes; keys are relative
    assert {n: (out / f"{n}.json").stat().st_mtime_ns for n in ANALYSES} == stamp  # nothing recomputed
    assert again.how == {n: "reused" for n in ANALYSES}  # ... and it says so (the report's overview shows it)
    # one eFCN "still running" and without its final weights: analysed without it, listed as missing
    plan = json.loads((exp / "plan.json").read_text())
    efcn = next(r for r, e in plan.items() if e["kind"] == "efcn")
    (exp / "runs" / efcn / "final.pt").unlink()
    (exp / "runs" / efcn / "status.json").write_text(json.dumps({"status": "running", "error": None, "epoch": 0.2}))
    res = analyse_experiment(exp, only=["ablation", "memory"], progress=False, settings=SMALL)
    assert (out / "memory.json").stat().st_mtime_ns == stamp["memory"]  # its inputs did not change
    assert res.how == {"ablation": "computed", "memory": "reused"}
    assert [m.run for m in res["ablation"].missing] == [efcn]
    assert len(res["ablation"].runs) == 1
    # a changed setting is a changed cache key
    res = analyse_experiment(exp, only=["templates"], progress=False,
                             settings=AnalysisSettings(**{**SMALL.to_dict(), "template_count": 2}))
    assert all(len(r.units) == 2 for r in res["templates"].runs)


def test_analyse_command(experiment, capsys):
    from archrelax.cli import main

    assert main(["analyse", str(experiment), "--only", "memory", "distance", "--quiet"]) == 0
    assert "memory.json" in capsys.readouterr().out
    assert main(["analyse", str(experiment / "nope"), "--quiet"]) == 2
    assert main(["analyse", str(experiment), "--only", "interpolation", "--interp-start", "nowhere"]) == 2


def test_claims_of_a_real_experiment(experiment):
    """The claims read the real files: every relaxed run starts at its CNN's train loss (the embedding is exact
    and the trainer evaluates at the snapshot steps); one seed is too few for any statistic."""
    from archrelax.analysis.claims import evaluate_claims

    analyse_experiment(experiment, progress=False, settings=SMALL)
    found = {c.number: c for c in evaluate_claims(experiment)}
    jump = found[1].numbers["jump"]
    assert found[1].verdict in ("supported", "contradicted") and len(jump) == 2, found[1]
    assert max(jump.values()) < 1e-5, jump  # float32 sums in another order, nothing more
    assert found[1].verdict == "supported" or "ends above its start" in found[1].reason
    for n in (2, 4, 7, 9, 11):
        assert found[n].verdict == "not enough evidence" and "too few seeds (n=1; 3 needed)" in found[n].reason
    assert found[5].verdict == "not measured" and found[13].verdict == "not measured"  # 2 switch times, no hier
    assert found[12].verdict == "not measured" and "lacks eLCN runs" in found[12].reason


def test_interpolation_shortcut_of_the_first_layer_equals_evaluating_every_point():
    """The first layer of an eFCN reads the input and is affine in its weights: mixed from its two end outputs,
    every point equals the plain evaluation to float rounding; a first layer that is not affine turns it off."""
    from archrelax.analysis import interpolation as I

    cnn = perturbed(small_cnn())
    a, b = efcn_of(cnn), perturbed(efcn_of(cnn), scale=0.2, seed=3)
    x, y = data(40)
    lead = I._LeadingAffine.find(copy.deepcopy(a), x[:1])
    assert lead is not None and lead.name == "0"
    fast = interpolate(a, b, (x, y), (x[:20], y[:20]), alphas=[0, 0.3, 0.7, 1], methods=("linear", "curvilinear"))
    orig = I._LeadingAffine.find
    I._LeadingAffine.find = classmethod(lambda cls, m, e: None)
    try:
        slow = interpolate(a, b, (x, y), (x[:20], y[:20]), alphas=[0, 0.3, 0.7, 1], methods=("linear", "curvilinear"))
    finally:
        I._LeadingAffine.find = orig
    for m in fast:
        for split in ("train", "test"):
            for f, s in zip(getattr(fast[m], split), getattr(slow[m], split)):
                assert f.acc == s.acc and f.loss == pytest.approx(s.loss, rel=1e-5, abs=1e-6)
    # the ends are the models' own metrics, bit for bit
    assert fast["linear"].train[0] == evaluate(a, x, y) and fast["curvilinear"].train[-1] == evaluate(b, x, y)

    class Squared(nn.Linear):  # a Linear whose output is not affine in its weight
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(inp, self.weight ** 2, self.bias)

    torch.manual_seed(0)
    m0 = nn.Sequential(nn.Flatten(), Squared(72, 5), nn.ReLU(), nn.Linear(5, 4))
    m1 = perturbed(m0, scale=0.5)
    got = interpolate(m0, m1, (x, y), (x, y), alphas=[0, 0.5, 1], methods=("linear",))["linear"].train[1]
    mid = copy.deepcopy(m0)
    mid.load_state_dict(interpolate_state(m0.state_dict(), m1.state_dict(), 0.5))
    assert got == evaluate(mid, x, y)  # the check caught it: evaluated in full


def test_cpu_pooling_is_bit_exact():
    from archrelax.analysis._common import cpu_pooling, log_probs

    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.MaxPool2d(3, 2), nn.Flatten(), nn.LazyLinear(4))
    x, _ = data(30)
    model(x)
    with torch.no_grad():
        plain = torch.log_softmax(model.eval()(x), dim=1)
    assert torch.equal(log_probs(model, x, 7), plain)
    with cpu_pooling(model, torch.device("cpu")):
        pass
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks  # removed afterwards


def test_workers_give_the_same_results_and_unconverged_points_are_marked(experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    only = ["sharpness", "ablation", "interpolation"]
    strip = lambda r: {k: v for k, v in r.to_json().items() if k != "created"}  # noqa: E731
    one, two = (analyse_experiment(exp, only=only, progress=False, force=True,
                                   settings=AnalysisSettings(**{**SMALL.to_dict(), "workers": n})) for n in (1, 2))
    # with two workers the three analyses run side by side: the same results, in the order asked for
    assert {n: strip(r) for n, r in one.items()} == {n: strip(r) for n, r in two.items()}
    assert list(two) == only and two.names("computed") == only
    pts = one["sharpness"].points
    # the CNN's final weights are its last snapshot's: computed once, recorded under both files
    cnn = [p for p in pts if p.kind == "cnn"]
    assert {p.where for p in cnn} == {"snapshot", "final"} and len({p.file for p in cnn}) == len(cnn)
    # one product is no converged eigenvalue here: marked, with its bound, never silently a number
    capped = analyse_experiment(exp, only=["sharpness"], progress=False, force=True,
                                settings=AnalysisSettings(**{**SMALL.to_dict(), "sharpness_max_iter": 1,
                                                             "sharpness_tol": 1e-12}))["sharpness"]
    assert capped.points and all(not p.eig_converged and p.eig_converged_each == [False] and p.eig_iterations == 1
                                 and p.eig_bound[0] > 0 and not p.lambda_max_converged for p in capped.points)


def test_analyse_command_reads_yes_no_settings(experiment, capsys):
    from archrelax.cli import main

    assert main(["analyse", str(experiment), "--only", "memory", "--sharpness-blocks", "maybe"]) == 2
    assert "--sharpness-blocks 'maybe'" in capsys.readouterr().err


def test_per_layer_sharpness_in_the_experiment(experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    res = analyse_experiment(exp, only=["sharpness"], progress=False, force=True,
                             settings=AnalysisSettings(**{**SMALL.to_dict(), "sharpness_blocks": True}))["sharpness"]
    assert res.points and res.params["sharpness_blocks"] is True
    for p in res.points:  # the CNN's convs and the eFCN's / FCN's relaxed layers have the same paths
        assert [b.layer for b in p.blocks] == ["features.0", "features.3", "features.6"], p.blocks
        assert all(b.params > 0 and math.isfinite(b.eigenvalue) and b.products >= 1 for b in p.blocks)
