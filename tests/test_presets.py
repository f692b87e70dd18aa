"""The needle presets: `needle-mnist` (the issue's acceptance experiment, CPU), `needle-cifar10` (the same
protocol on CIFAR-10, for a GPU or a cluster) and `needle-cifar10-cpu` (the paper's question on CIFAR-10 sized
for two CPU cores) plan the paper's protocol; needle-cifar10 runs end to end at tiny size on the real CIFAR-10
zip through `imagefolder:` (skipped where the zip is absent), and its claims and report come out of it.
`vanilla-cifar10-sgd` holds the settings of the paper's public code."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from archrelax.analysis import analysis_names
from archrelax.protocol import list_presets, load_spec, make_plan, preset_path

_DEFAULT_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"  # shared/ beside the repo
CIFAR_ZIP = Path(os.environ.get("ARCHRELAX_CIFAR10_ZIP", _DEFAULT_ZIP))


@pytest.mark.parametrize("name,data", [("needle-mnist", "mnist5k"), ("needle-cifar10", "cifar10")])
def test_needle_presets_plan_the_papers_protocol(name, data):
    spec = load_spec(preset=name)
    assert (spec.data, spec.model, spec.train.optimizer, spec.seeds) == (data, "vanilla_cnn", "sgd", [0, 1, 2])
    switch = spec.switch_list()
    end = spec.cnn.epochs
    assert spec.cnn.until_zero_loss is False and end is not None  # fixed length: every snapshot gets written
    # spread over the CNN's training: t_w = 0, the end, and log-spaced times between (each at least twice the last)
    assert switch[0] == 0 and switch[-1] == end and len(switch) >= 5
    assert all(b >= 1.5 * a for a, b in zip(switch[1:], switch[2:]))
    assert spec.relaxed.until_zero_loss and spec.relaxed.max_epochs >= 8  # to zero loss, capped
    assert set(spec.analyses) == set(analysis_names())
    plan = make_plan(spec)
    kinds = Counter((r.kind, r.seed) for r in plan.values())
    grid = spec.grid()
    assert grid and all(b - a < spec.relaxed.max_epochs and b - a <= 7 for a, b in grid)
    for s in spec.seeds:
        assert kinds[("cnn", s)] == 1 and kinds[("fcn", s)] == 1 and kinds[("lcn", s)] == 1
        relaxed = len(switch) + len(spec.auto_rules())  # the fixed switch times and the automatic one
        assert kinds[("efcn", s)] == relaxed and kinds[("elcn", s)] == relaxed
        assert kinds[("hier", s)] == len(grid)


def _header(name: str) -> str:
    return "".join(line for line in preset_path(name).read_text().splitlines(True) if line.startswith("#"))


@pytest.mark.parametrize("name", list_presets())
def test_preset_headers_hold_no_placeholder(name):
    """A preset's header is read as a statement of fact (costs, sources, pilots): nothing left to fill in."""
    header = _header(name)
    for marker in ("[FILL", "FILL:", "TODO", "TBD", "XXX"):
        assert marker not in header, (name, marker)


def test_needle_cifar10_cpu_plans_the_question_on_two_cores():
    """CIFAR-10 through the zip, the paper's width, >= 5 switch times from 0 to the CNN's end, eFCN and eLCN to zero
    loss (capped), the FCN, 3 seeds (the claims' min_seeds), 2 workers, every analysis at no smaller sample counts
    than needle-mnist's; the header gives the command and the estimate, labelled as such, from measured costs."""
    spec, mnist = load_spec(preset="needle-cifar10-cpu"), load_spec(preset="needle-mnist")
    assert spec.data.startswith("imagefolder:") and spec.data.endswith("cifar10-jpeg.zip")
    assert spec.model == "vanilla_cnn" and spec.model_kwargs["width"] == 64 and spec.workers == 2
    assert len(spec.seeds) >= 3 and spec.train_size is not None and spec.test_size is not None
    switch, end = spec.switch_list(), spec.cnn.epochs
    assert spec.cnn.until_zero_loss is False and end is not None  # fixed length: every snapshot gets written
    assert switch[0] == 0 and switch[-1] == end and len(switch) >= 5
    assert all(b >= 1.5 * a for a, b in zip(switch[1:], switch[2:]))  # spread over the CNN's training
    assert spec.relaxed.until_zero_loss and spec.relaxed.max_epochs is not None
    assert set(spec.targets) == {"fc", "lc"} and spec.baselines == ["fcn"]
    assert set(spec.analyses) == set(analysis_names())
    for key, value in mnist.analysis_settings.items():
        assert spec.analysis_settings[key] >= value, (key, spec.analysis_settings)
    plan = make_plan(spec)
    kinds = Counter((r.kind, r.seed) for r in plan.values())
    for s in spec.seeds:
        assert kinds[("cnn", s)] == kinds[("fcn", s)] == 1
        assert kinds[("efcn", s)] == kinds[("elcn", s)] == len(switch)
    header = _header("needle-cifar10-cpu")
    assert "archrelax run --preset needle-cifar10-cpu" in header, header
    assert "measured" in header and "load average" in header and "ms per image" in header, header
    assert "Estimate from the measured per-image costs, not a measured run" in header, header
    assert "over 2 workers" in header and "sharpness" in header and "cap" in header, header


def test_vanilla_cifar10_sgd_has_the_papers_code_settings():
    """main.py's defaults (SGD lr 0.1, no momentum, no weight decay, batch 250, 100 epochs for every run), the
    first N images (utils.get_data), the code's snapshot grid as switch times, each setting's source stated."""
    import numpy as np

    spec = load_spec(preset="vanilla-cifar10-sgd")
    t = spec.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size, t.augment) == ("sgd", 0.1, 0.0, 0.0, 250, [])
    assert spec.subset == "first" and spec.model_kwargs == {"width": 64}
    assert (spec.cnn.epochs, spec.cnn.until_zero_loss, spec.relaxed.epochs, spec.relaxed.until_zero_loss) == (
        100, False, 100, False)
    grid = [0.0] + [float(e) for e in np.unique(np.logspace(0, np.log10(100), 20).astype(int))]
    assert spec.switch_list() == grid and t.eval_times == grid
    header = _header("vanilla-cifar10-sgd")
    for source in ("main.py", "utils.get_data", "models.py", "--lr", "--mom", "--bs_train", "--epochs",
                   "--n_saves", "--data_size", "shuffle", "mean", "std"):
        assert source in header, (source, header)


def test_needle_mnist_states_its_sizing():
    header = _header("needle-mnist")  # measured CPU seconds, the load beside them, the estimate for 3 seeds
    assert "measured" in header and "load average" in header and "CPU-s" in header, header
    m = re.search(r"about (\d+) min in all \(limit: 30 min\)", header)
    assert m and int(m.group(1)) <= 25, header


def test_needle_cifar10_states_one_seeds_cpu_time():
    header = _header("needle-cifar10")  # one seed at reduced length on CPU, and exactly what was reduced
    assert re.search(r"measured on CPU.*?\d+ min", header, re.S) and "load average" in header, header
    # the full length is an extrapolation from the measured rates, and says so
    assert re.search(r"Extrapolated from them \(not measured\): one full seed.*?~\d+ h", header, re.S), header
    for reduced in ("seeds=[0]", "cnn.epochs=2", "relaxed.max_epochs=1", "train_size", "imagefolder:"):
        assert reduced in header, (reduced, header)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_ZIP.exists(), reason=f"{CIFAR_ZIP} not present")
@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
def test_needle_cifar10_runs_at_tiny_size_on_the_zip(tmp_path, monkeypatch, one_thread):
    from archrelax.analysis import AnalysisSettings, analyse_experiment
    from archrelax.analysis.claims import evaluate_claims
    from archrelax.protocol import run_experiment
    from archrelax.report import write_report
    from archrelax.store import ExperimentFolder
    from report_synth import parse_report

    monkeypatch.setenv("ARCHRELAX_CACHE", str(tmp_path / "cache"))  # the zip is decoded once, here
    spec = load_spec(preset="needle-cifar10", overrides=[
        f"data=imagefolder:{CIFAR_ZIP}", "train_size=100", "test_size=50", "model_kwargs.width=4",
        "train.batch_size=50", "seeds=[0]", "cnn.epochs=1", "relaxed.max_epochs=1", "switch_times=[0,0.5,1]",
        "hierarchical.t_w1=[0.5]", "hierarchical.t_w2=[1]", "train.device=cpu"])
    root = run_experiment(spec, tmp_path / "exp", log=lambda s: None)
    exp = ExperimentFolder(root)
    plan = exp.read_plan()
    assert Counter(r.kind for r in plan.values()) == {"cnn": 1, "efcn": 3, "elcn": 3, "hier": 1, "fcn": 1, "lcn": 1}
    assert {exp.run(r).read_status().status for r in plan} == {"done"}
    small = AnalysisSettings(device="cpu", batch_size=50, sharpness_samples=32, sharpness_max_iter=3,
                             trace_probes=2, eval_train_samples=32, eval_test_samples=50, template_count=2)
    res = analyse_experiment(root, progress=False, settings=small)
    assert not [n for n, r in res.items() if r.error] and set(res.how.values()) == {"computed"}
    found = {c.number: c for c in evaluate_claims(root)}
    assert len(found) == 13 and not [c for c in found.values() if c.verdict == "not measured"]
    # every relaxed run starts exactly where its parent was evaluated: the embedding of real CIFAR-10 models
    jumps = found[1].numbers["jump"]
    assert len(jumps) == 7 and max(jumps.values()) < 1e-4, jumps
    assert all(c.verdict == "not enough evidence" for n, c in found.items() if c.test == "seeds")  # one seed
    secs = parse_report(write_report(root, analyse=False, analysed=res).read_text())
    assert "computed now: memory, distance, sharpness, ablation, templates, interpolation" in secs["overview"]["text"]
    assert "too few seeds (n=1; 3 needed)" in secs["claims"]["text"]
