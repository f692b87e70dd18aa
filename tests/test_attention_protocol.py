"""Attention runs in the protocol: the kind `attn` planned at every switch time on the convs where the attention
fits (spec `attention`), the spec's errors (a conv that would not fit, soft + attention), the trainer's attention
measures on a fixed probe batch (recorded like δ, without changing the trajectory), an exact resume, lockstep
members equal to separate runs, and a tiny experiment end to end (plan, run, stop and resume, report, claims)."""
from __future__ import annotations

import math

import pytest
import torch

from archrelax.embed.attention import AttentionConv2d, attention_cost
from archrelax.embed.attention_measures import MEASURE_KEYS
from archrelax.protocol import load_spec, make_plan, spec_from_dict
from archrelax.protocol.spec import SpecError
from archrelax.train import TrainConfig, load_checkpoint, read_metrics, train
from archrelax.train.lockstep import train_lockstep
from archrelax.train.stacked import stack_models
from conftest import sigkill_at_step

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# width 8: VanillaCNN's second and third convs fit (attention_cost 0.78 and 0.16 on 28x28), its first does not (98)
TINY = {"name": "tiny-attn", "model_kwargs": {"width": 8}, "data": "synthetic:1x28x28:2:40:20",
        "train": {"batch_size": 20, "lr": 0.05, "eval_times": "every"},
        "cnn": {"epochs": 2, "until_zero_loss": False}, "relaxed": {"epochs": 1, "until_zero_loss": False},
        "switch_times": [0, 1, 2], "targets": ["cnn", "attn"], "baselines": []}
DATA = "synthetic:1x28x28:10:200:100"  # 4 steps per epoch at batch 50
VOLATILE = ("wall_time", "peak_mem_bytes")


def cfg(**kw) -> TrainConfig:
    base = dict(model="vanilla_cnn", model_kwargs={"width": 4}, data=DATA, batch_size=50, epochs=2, lr=0.05,
                eval_times="every", device="cpu", progress=False, checkpoint_every_s=None)
    return TrainConfig(**{**base, **kw})


def stable(rows: list[dict], drop: tuple[str, ...] = ()) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE + drop} for r in rows]


def problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        make_plan(spec_from_dict(data))
    return e.value.problems


@pytest.fixture(scope="module")
def cnns(tmp_path_factory, train_one_thread):
    """Two seeds of a width-4 VanillaCNN on 28x28 digits-like data, snapshots at epochs 0, 1, 2."""
    root = tmp_path_factory.mktemp("cnns")
    for seed in (0, 1):
        train_one_thread(cfg(snapshots=[0, 1, 2], seed=seed), root / f"cnn{seed}")
    return root


def snap(cnns, seed: int, t: int) -> str:
    return str(cnns / f"cnn{seed}" / "snapshots" / f"epoch_{t}.pt")


# attention on the second and third convs, α low enough for live gradients, exact enough for relax()'s check
ATTN = dict(relax="attn:alpha=24", relax_layers=["features.3", "features.6"])


# ---- the plan -----------------------------------------------------------------------------------------------------


def test_attn_target_plans_one_run_per_switch_time_on_the_convs_that_fit_at_the_protocol_alpha():
    plan = make_plan(spec_from_dict(TINY))
    attn = [r for r in plan.values() if r.kind == "attn"]
    assert [r.t_w for r in attn] == [0.0, 1.0, 2.0]
    for r in attn:
        assert r.config["relax"] == "attn:alpha=32" and r.config["relax_layers"] == ["features.3", "features.6"]
        assert r.id.startswith(f"attn-alpha32-tw{r.t_w:g}-s0-") and plan[r.depends_on].kind == "cnn"
        assert r.config["soft_lambda"] == 0
    kinds = [r.kind for r in plan.values()]
    assert kinds == ["cnn", "cont", "cont", "cont", "attn", "attn", "attn"]  # plan order: KINDS
    # a target that names its α keeps it (80 is relax()'s default: canonical "attn"); attention.alpha applies
    # to the others; options and other layers
    spec = spec_from_dict({**TINY, "targets": ["attn:alpha=80", "attn:dk=0"], "attention": {"alpha": 40}})
    got = {(r.config["relax"], r.id.rsplit("-", 3)[0]) for r in make_plan(spec).values() if r.kind == "attn"}
    assert got == {("attn", "attn"), ("attn:alpha=40,dk=0", "attn-alpha40-dk0")}
    spec = spec_from_dict({**TINY, "attention": {"layers": ["features.6"]}})
    assert {tuple(r.config["relax_layers"]) for r in make_plan(spec).values() if r.kind == "attn"} == {("features.6",)}
    # the lattice preset's attention column: the same rule picks VanillaCNN's features.3 and features.6
    lattice = make_plan(load_spec(preset="lattice"))
    assert {tuple(r.config["relax_layers"]) for r in lattice.values() if r.kind == "attn"} == {("features.3", "features.6")}


def test_attention_cost_separates_the_first_conv_from_the_others():
    from archrelax.protocol.attention import conv_costs

    costs = {c.name: c.cost for c in conv_costs(load_spec(preset="lattice"))}  # width 32 on mnist's 28x28
    assert costs == pytest.approx({"features.0": 785 / 32, "features.3": 50 / 32 ** 2, "features.6": 10 / 32 ** 2})
    g = AttentionConv2d.from_conv(torch.nn.Conv2d(6, 4, 3, groups=2), (5, 5)).geometry
    assert attention_cost(g) == (25 + 1) * 2 / (6 * 4)


def test_a_path_step_to_attention_is_one_run_with_the_attn_target_and_checked_likewise():
    spec = spec_from_dict({**TINY, "targets": ["attn"], "switch_times": [1],
                           "paths": [{"name": "p", "steps": [{"at": 1, "to": "attn"}, {"at": 2, "to": "fc",
                                                                                         "layers": ["features.0"]}]}]})
    plan = make_plan(spec)
    attn = [r for r in plan.values() if r.kind == "attn"]
    (step2,) = [r for r in plan.values() if r.kind == "path"]
    assert len(attn) == 1 and step2.depends_on == attn[0].id  # the path's first step is the attn target's run
    assert attn[0].snapshot_epoch == 1 and step2.snapshot_epoch == 1.0 and step2.config["relax"] == "fc"
    bad = {**TINY, "paths": [{"name": "q", "steps": [{"at": 1, "to": "attn", "layers": ["features.0"]}]}]}
    (line,) = problems(bad)
    assert "'paths' 'q' step layers" in line and "'features.0'" in line


# ---- the spec's errors --------------------------------------------------------------------------------------------


def test_a_conv_that_would_not_fit_is_refused_naming_it_its_figures_and_the_way_out():
    (line,) = problems({**TINY, "attention": {"layers": ["features.0", "features.3"]}})
    assert "'attention.layers' asks for attention on 'features.0' (1->8, kernel 4x4 on 28x28)" in line
    assert "16 heads x 225 queries x 785 keys = 2,826,000 entries per sample" in line and "attention_cost 98.1" in line
    assert "here features.3, features.6" in line and "'attention.max_cost' to at least 98.1" in line
    # raised: allowed (the user's call: a GPU, say)
    spec = spec_from_dict({**TINY, "attention": {"layers": ["features.0"], "max_cost": 100}})
    assert {tuple(r.config["relax_layers"]) for r in make_plan(spec).values() if r.kind == "attn"} == {("features.0",)}
    (line,) = problems({**TINY, "attention": {"layers": ["features.9"]}})
    assert "['features.9'] match no conv of 'vanilla_cnn'" in line and "'features.0', 'features.3'" in line
    (line,) = problems({**TINY, "relax_layers": ["features.0"]})
    assert "the attention runs have no conv to relax" in line and "'features.0'" in line and "attention_cost 98.1" in line
    assert "Check" not in line and "\n" not in line


def test_soft_release_of_attention_is_refused_by_the_spec_and_by_the_config():
    with pytest.raises(SpecError) as e:
        spec_from_dict({**TINY, "targets": ["fc", "attn"], "relaxed": {**TINY["relaxed"], "soft_lambda": 2}})
    (line,) = [p for p in e.value.problems if "soft" in p]
    assert "'relaxed.soft_lambda' = 2" in line and "('attn')" in line and "penalty reads 0" in line
    with pytest.raises(SpecError) as e:
        spec_from_dict({**TINY, "soft": {"target": "attn:dk=0", "lambdas": [1], "schedules": ["const"]}})
    assert any("'soft.target' = 'attn:dk=0'" in p and "not defined for attention" in p for p in e.value.problems)
    with pytest.raises(ValueError, match=r"soft_lambda=1\.0 with relax='attn:alpha=24'.*not defined for attention"):
        cfg(**ATTN, soft_lambda=1.0)
    cfg(**ATTN, soft_lambda=0.0)  # the hard release is fine


# ---- the trainer: measures, resume, lockstep ---------------------------------------------------------------------


def test_attention_runs_record_the_measures_and_they_change_nothing_else(cnns, tmp_path, monkeypatch):
    """Every metrics row of an attention run holds MEASURE_KEYS (off-target share and content share ~0 at the
    switch, the conv's mean distance, α as embedded); with the measures switched off the run is bit for bit the
    same (the probe batch draws no RNG, the measures run in eval mode with buffers and RNG restored)."""
    from archrelax.train import recorder

    config = cfg(**ATTN, init_from=snap(cnns, 0, 1))
    train(config, tmp_path / "with")
    rows = read_metrics(tmp_path / "with" / "metrics.jsonl")
    assert all(set(MEASURE_KEYS) <= set(r) for r in rows)
    first, last = rows[0], rows[-1]
    assert first["attn_content_share"] == 0.0 and first["attn_offtarget"] < 1e-4  # e^-12 leaks, W_q = 0
    assert first["attn_alpha_mean"] == first["attn_alpha_min"] == 24.0 and first["attn_offset_max"] == 0.0
    assert first["attn_output_distance"] < 1e-4 and first["offlocal_ratio"] == 0.0
    assert last["attn_alpha_mean"] != 24.0 or last["attn_offset_max"] > 0  # the attention learns at α = 24
    assert all(math.isfinite(r[k]) for r in rows for k in MEASURE_KEYS)
    monkeypatch.setattr(recorder, "_attention_measures", lambda model, probe: {})
    train(config, tmp_path / "without")
    plain = read_metrics(tmp_path / "without" / "metrics.jsonl")
    assert stable(plain) == stable(rows, MEASURE_KEYS)
    a, b = (load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("with", "without"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_attention_measures_on_the_probe_batch_match_a_direct_call(cnns, tmp_path):
    from archrelax.embed.attention_measures import attention_measures
    from archrelax.train import model_from_checkpoint
    from archrelax.train.recorder import PROBE_SIZE, probe_batch
    from archrelax.train.setup import load_run_data, make_feeds

    config = cfg(**ATTN, init_from=snap(cnns, 0, 1), epochs=1)
    train(config, tmp_path / "run")
    model = model_from_checkpoint(tmp_path / "run" / "final.pt").eval()
    data = load_run_data(config)
    probe = probe_batch(make_feeds(config, data, torch.device("cpu"))[1])
    assert probe.shape == (PROBE_SIZE, 1, 28, 28)
    want = attention_measures(model, probe)
    got = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert {k: got[k] for k in MEASURE_KEYS} == pytest.approx(want, rel=1e-6, abs=1e-12)


def _stop_at_step(monkeypatch, config: TrainConfig, out, step: int) -> None:
    """Train ``config`` into ``out`` and stop it as a signal would, right after update ``step``: it checkpoints
    there and raises Interrupted."""
    from archrelax.signals import Interrupted, request_stop
    from archrelax.train.recorder import Recorder

    orig = Recorder.after_update

    def stop_there(self, *a, **kw):
        got = orig(self, *a, **kw)
        if self.step == step:
            request_stop(15)
        return got

    monkeypatch.setattr(Recorder, "after_update", stop_there)
    with pytest.raises(Interrupted):
        train(config, out)
    monkeypatch.setattr(Recorder, "after_update", orig)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == step


def test_a_stopped_attention_run_resumes_to_exactly_the_uninterrupted_run(cnns, tmp_path, monkeypatch):
    config = cfg(**ATTN, init_from=snap(cnns, 1, 2), epochs=3, checkpoint_every_steps=1)
    ref = train(config, tmp_path / "ref")
    _stop_at_step(monkeypatch, config, tmp_path / "run", 5)  # mid-epoch (4 steps per epoch)
    done = train(config, tmp_path / "run")
    assert done["status"] == ref["status"] == "done"
    assert stable(read_metrics(tmp_path / "run" / "metrics.jsonl")) == stable(read_metrics(tmp_path / "ref" / "metrics.jsonl"))
    a, b = (load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("run", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dk", [None, 0])
def test_stacked_attention_layers_compute_each_members_function_and_gradient(dk):
    """α, offsets and content maps are stacked beside weight and bias; each member's slice runs through its own
    layer; the chunk's backward takes α and the offsets it saved (not the shared copy's, swapped since)."""
    from archrelax.embed.relax import relax
    from archrelax.models import create_model

    target = "attn:alpha=8" + (f",dk={dk}" if dk is not None else "")
    models = []
    for s in range(3):
        torch.manual_seed(s)
        cnn = create_model("vanilla_cnn", width=4, in_channels=1, input_size=28)
        models.append(relax(cnn, target, layers=["features.3", "features.6"], check=False))  # α = 8: inexact
    import copy

    own = [copy.deepcopy(m) for m in models]
    for batched in (False, True):
        net, _ = stack_models([copy.deepcopy(m) for m in models], batched=batched)
        x = torch.randn(3, 5, 1, 28, 28)
        out = net(x.reshape(15, 1, 28, 28))
        out.square().sum().backward()
        for r, m in enumerate(own):
            m.zero_grad()
            y = m(x[r])
            y.square().sum().backward()
            # member by member: bit for bit; batched, the convs and linears around them round differently
            same = torch.equal if not batched else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            assert same(out[5 * r: 5 * r + 5], y)
            for n, p in m.named_parameters():
                assert same(net.get_parameter(n).grad[r], p.grad), (n, batched)
        assert net.get_parameter("features.3.offset").grad.abs().max() > 0


@pytest.mark.parametrize("batched", [False, True])
def test_lockstep_attention_members_equal_separate_runs(cnns, tmp_path, batched):
    configs = [cfg(**ATTN, seed=s, init_from=snap(cnns, s, t)) for s, t in ((0, 1), (0, 2), (1, 1))]
    for i, c in enumerate(configs):
        train(c, tmp_path / f"sep{i}")
    notes: list[str] = []
    out = train_lockstep(configs, [tmp_path / f"ls{i}" for i in range(3)], log=notes.append, batched=batched)
    assert notes == [] and [r["status"] for r in out] == ["done"] * 3  # one stack, no fallback
    for i in range(3):
        rows = read_metrics(tmp_path / f"ls{i}" / "metrics.jsonl")
        assert set(MEASURE_KEYS) <= set(rows[-1])
        sep = read_metrics(tmp_path / f"sep{i}" / "metrics.jsonl")
        assert len(sep) == len(rows) and all(a.keys() == b.keys() for a, b in zip(sep, rows))
        # lockstep's tolerance (tests/test_lockstep.py); the attention measures also absolutely to 1e-7, as the
        # output distance is a float-noise-sized number (5e-9) that other rounding moves by its own size
        for a, b in zip(stable(sep), stable(rows)):
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7 if k.startswith("attn_") else 1e-9), (k, a, b)
        a, b = (load_checkpoint(tmp_path / f"{k}{i}" / "final.pt") for k in ("sep", "ls"))
        assert a["arch"] == b["arch"] and a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-7), k


# ---- the protocol at tiny size ------------------------------------------------------------------------------------


@pytest.mark.slow  # ~30 s: eight runs, a stop and resume, the analyses and the report
def test_a_tiny_attention_experiment_runs_stops_resumes_reports_and_is_claimed(tmp_path, monkeypatch):
    from archrelax.analysis.claims import evaluate_claims
    from archrelax.analysis.experiment import analyse_experiment
    from archrelax.protocol import Store, run_experiment
    from archrelax.report import write_report
    from archrelax.signals import Interrupted, request_stop
    from archrelax.train.recorder import Recorder
    from report_synth import parse_report

    spec = spec_from_dict({**TINY, "seeds": [0, 1], "lockstep": True,
                           "analyses": ["memory", "distance", "ablation"]})
    out = tmp_path / "exp"
    orig = Recorder.after_update

    def stop_in_an_attention_run(self, *a, **kw):
        res = orig(self, *a, **kw)
        if self.cfg.relax and self.cfg.relax.startswith("attn") and self.step == 1:
            request_stop(15)
        return res

    monkeypatch.setattr(Recorder, "after_update", stop_in_an_attention_run)
    with pytest.raises(Interrupted):
        run_experiment(spec, out, log=lambda s: None)
    monkeypatch.setattr(Recorder, "after_update", orig)
    exp = Store(out)
    plan = exp.read_plan()
    states = {i: exp.run(i).read_status().status for i in plan}
    assert "interrupted" in states.values()
    run_experiment(spec, out, log=lambda s: None)
    assert all(exp.run(i).read_status().status == "done" for i in plan)
    analyse_experiment(out, only=["memory", "distance", "ablation"])
    from archrelax.store import read_result

    ablation = read_result(exp.result_path("ablation"), "ablation")
    attn_ids = [i for i, r in plan.items() if r.kind == "attn"]
    assert {m.run for m in ablation.missing} >= set(attn_ids) and not ablation.runs
    assert all("no off-local weights" in m.reason for m in ablation.missing if m.run in attn_ids)
    secs = parse_report(write_report(out, analyse=False).read_text())
    assert secs["attention"]["imgs"] and secs["attention"]["tables"] == 1
    assert "attn:alpha=32" in secs["lattice"]["text"] and "offsets released" in secs["lattice"]["text"]
    found = {c.number: c for c in evaluate_claims(out)}
    assert sorted(found) == list(range(1, 16))
    assert found[14].verdict == "supported", found[14].reason  # the switch is exact at α = 32
    assert found[14].numbers["jump"] and max(found[14].numbers["jump"].values()) < 1e-4
    assert found[15].verdict in ("not enough evidence", "supported", "contradicted") and found[15].n_seeds == 2
    assert set(found[15].numbers["gain"]) == {0.0, 1.0, 2.0}
    assert found[1].verdict == "not measured"  # no paper kinds: the attention runs are not claim 1's


def test_a_stopped_annealed_attention_run_resumes_to_exactly_the_uninterrupted_run(cnns, tmp_path, monkeypatch):
    """The sharpness's anneal is a function of the step: a run stopped mid-anneal (step 5 of 8) and resumed writes
    the same rows and weights, bit for bit; its rows follow the schedule (α + s from 24 down to about 3)."""
    config = cfg(relax="attn:alpha=24,anneal_to=3,anneal_steps=8", relax_layers=ATTN["relax_layers"],
                 init_from=snap(cnns, 1, 2), epochs=3, checkpoint_every_steps=1)
    ref = train(config, tmp_path / "ref")
    _stop_at_step(monkeypatch, config, tmp_path / "run", 5)
    assert train(config, tmp_path / "run")["status"] == ref["status"] == "done"
    rows = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert stable(read_metrics(tmp_path / "run" / "metrics.jsonl")) == stable(rows)
    a, b = (load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("run", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a) and float(a["features.3.alpha_shift"]) == 3 - 24
    assert rows[0]["attn_alpha_mean"] == 24 and rows[0]["attn_offtarget"] < 1e-4
    assert rows[-1]["attn_alpha_max"] < 4 and rows[-1]["attn_offset_max"] > 1e-3  # annealed, and the offsets moved


def test_an_annealed_attention_run_killed_with_sigkill_mid_anneal_resumes_exactly(cnns, tmp_path):
    """kill -9 of the trainer's process once a checkpoint inside the anneal exists (step >= 3 of 8): the rerun
    resumes from it, the sharpness set from the step, and ends with the uninterrupted run's rows and weights."""
    config = cfg(relax="attn:alpha=24,anneal_to=3,anneal_steps=8", relax_layers=ATTN["relax_layers"],
                 init_from=snap(cnns, 0, 2), epochs=4)
    train(config, tmp_path / "ref")
    victim = TrainConfig.from_dict({**config.to_dict(), "checkpoint_every_steps": 1})  # a runtime field
    run = tmp_path / "killed"
    killed_at = sigkill_at_step(victim.to_dict(), run, 3)
    assert killed_at < 16 and not (run / "final.pt").exists()
    assert train(config, run)["status"] == "done"
    assert stable(read_metrics(run / "metrics.jsonl")) == stable(read_metrics(tmp_path / "ref" / "metrics.jsonl"))
    a, b = (load_checkpoint(tmp_path / n / "final.pt")["model"] for n in ("killed", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_annealed_attention_layer_is_not_stacked_for_lockstep():
    """Its sharpness is set per step on the run's own model, which a stack's copy would not follow: the stack
    refuses it by name and lockstep trains it as a run of its own."""
    import copy

    from archrelax.embed.relax import relax
    from archrelax.models import create_model
    from archrelax.train.stacked import NotStackable

    cnn = create_model("vanilla_cnn", width=4, in_channels=1, input_size=28)
    model = relax(cnn, "attn:alpha=24,anneal_to=3,anneal_steps=8", layers=["features.3"])
    with pytest.raises(NotStackable, match="features.3.*alpha_shift"):
        stack_models([model, copy.deepcopy(model)])
