"""The claims: each of the thirteen built to hold, to fail and to lack its data in a synthetic experiment
folder (tests/claims_synth.py), and the verdict checked; too few seeds, unfinished runs, failed or damaged
analyses; the thresholds in docs/claims.md equal the code's; the `archrelax claims` command."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archrelax.analysis.claims import CLAIMS, THRESHOLDS, ClaimThresholds, evaluate_claims, format_claims
from archrelax.analysis.claims.stats import holm, paired, spearman, t_interval
from archrelax.cli import main as cli_main
from archrelax.store import ExperimentFolder
from archrelax.store import results as R
from claims_synth import Synth

DOCS = Path(__file__).resolve().parent.parent / "docs" / "claims.md"


def _mutated(**fields):
    """A Synth with these fields, built; ``runs=`` {id: {attr: value}} edits runs after the build."""
    edits = fields.pop("runs", {})

    def make() -> Synth:
        s = Synth(**fields).build()
        for rid, attrs in edits.items():
            for k, v in attrs.items():
                setattr(s.runs[rid], k, v(getattr(s.runs[rid], k)) if callable(v) else v)
        return s

    return make


NO_HIER = ("efcn", "elcn", "fcn", "lcn")
WITH_ATTN = ("efcn", "elcn", "fcn", "lcn", "hier", "attn")
# (claim, case, synthetic experiment, expected verdict, words the reason must contain)
CASES = [
    (1, "hold", _mutated(), "supported", "no jump beyond the tolerance"),
    (1, "fail", _mutated(runs={"efcn-tw2-s0": {"loss0": lambda x: x * 1.01}}), "contradicted", "not exact"),
    (1, "fail-rise", _mutated(runs={"elcn-tw4-s1": {"loss1": lambda x: 1.0}}), "contradicted", "ends above its start"),
    (1, "lack", _mutated(kinds=NO_HIER, cnn_evals_at_snapshots=False), "not measured", "no evaluation of the parent"),
    (2, "hold", _mutated(), "supported", "claimed direction"),
    (2, "fail", _mutated(fcn_below_efcn0=-0.03), "contradicted", "opposite direction"),
    (2, "lack", _mutated(kinds=("efcn", "elcn", "lcn", "hier")), "not measured", "no vanilla FCN"),
    (3, "hold", _mutated(), "supported", "no t_w falls significantly"),
    (3, "fail", _mutated(fall_after_switch=0.03), "contradicted", "falls significantly after the switch at t_w = 4"),
    (3, "lack", _mutated(kinds=("elcn", "fcn", "lcn")), "not measured", "no eFCN runs"),
    (4, "hold", _mutated(), "supported", "beats its CNN at t_w = "),
    (4, "fail", _mutated(gain={0.0: -0.08, 1.0: -0.05, 2.0: -0.04, 4.0: -0.06}), "contradicted",
     "even the best t_w (2) loses"),
    (4, "lack", _mutated(kinds=("elcn", "fcn", "lcn")), "not measured", "no eFCN runs"),
    (5, "hold", _mutated(), "supported", "t_w=2 is intermediate"),
    (5, "fail", _mutated(gain={0.0: -0.05, 1.0: 0.0, 2.0: 0.01, 4.0: 0.05}), "contradicted", "endpoint t_w=4"),
    (5, "lack", _mutated(tws=(0.0, 4.0)), "not measured", "needs 3"),
    (6, "hold", _mutated(), "supported", "claimed direction"),
    (6, "fail", _mutated(lam_along={0.0: 40.0, 1.0: 15.0, 2.0: 5.0, 4.0: 20.0}), "contradicted", "opposite"),
    (6, "lack", _mutated(analyses=("memory", "ablation", "interpolation")), "not measured", "sharpness.json is missing"),
    (7, "hold", _mutated(), "supported", "claimed direction"),
    (7, "fail", _mutated(lam_end_efcn=60.0), "contradicted", "opposite"),
    (7, "lack", _mutated(analyses=("memory", "ablation", "interpolation")), "not measured", "sharpness.json is missing"),
    (8, "hold", _mutated(), "supported", "claimed direction"),
    (8, "fail", _mutated(delta={0.0: 0.01, 1.0: 0.1, 2.0: 0.2, 4.0: 0.3}), "contradicted", "opposite"),
    (8, "lack", _mutated(tws=(0.0, 4.0)), "not measured", "fewer than 3 eFCN switch times"),
    (9, "hold", _mutated(), "supported", "off-local part alone at chance, and both parts beat"),
    (9, "fail", _mutated(offlocal_acc=0.5), "contradicted", "above chance"),
    (9, "fail-local", _mutated(both_minus_local=-0.03), "contradicted", "local part alone beats both"),
    (9, "lack", _mutated(analyses=("memory", "sharpness", "interpolation")), "not measured", "ablation.json is missing"),
    (10, "hold", _mutated(), "supported", "at most 10%"),
    (10, "fail", _mutated(local_change=0.5), "contradicted", "exceeds 0.1"),
    (10, "lack", _mutated(analyses=("memory", "sharpness", "interpolation")), "not measured", "ablation.json is missing"),
    (11, "hold", _mutated(), "supported", "claimed direction"),
    (11, "fail", _mutated(interp_bump=-0.1), "contradicted", "opposite"),
    (11, "lack", _mutated(analyses=("memory", "sharpness", "ablation")), "not measured", "interpolation.json is missing"),
    (12, "hold", _mutated(), "supported", "equivalent within"),
    (12, "fail", _mutated(memory=(5_000_000, 10_000_000)), "contradicted", "saves only 2.0×"),
    (12, "fail-gain", _mutated(elcn_minus_efcn=-0.06), "contradicted", "differ by more than"),
    (12, "lack", _mutated(kinds=("efcn", "fcn", "lcn")), "not measured", "lacks eLCN runs"),
    (13, "hold", _mutated(), "supported", "claimed direction"),
    (13, "fail", _mutated(hier_above_single=-0.03), "contradicted", "opposite"),
    (13, "lack", _mutated(kinds=NO_HIER), "not measured", "no hierarchical runs"),
    (14, "hold", _mutated(kinds=WITH_ATTN), "supported", "finished attention runs: no jump beyond the tolerance"),
    (14, "fail", _mutated(kinds=WITH_ATTN, runs={"attn-tw2-s0": {"loss0": lambda x: x * 1.01}}), "contradicted",
     "not exact"),
    (14, "lack", _mutated(kinds=WITH_ATTN, cnn_evals_at_snapshots=False), "not measured", "no evaluation of the parent"),
    (15, "hold", _mutated(kinds=WITH_ATTN), "supported", "the attention beats its CNN at t_w = "),
    (15, "fail", _mutated(kinds=WITH_ATTN, attn_gain={0.0: -0.08, 1.0: -0.05, 2.0: -0.04, 4.0: -0.06}), "contradicted",
     "even the best t_w (2) loses"),
    (16, "hold", _mutated(auto_above_best=0.0), "supported", "not worse than the best fixed t_w (2)"),
    (16, "fail", _mutated(auto_above_best=-0.06), "contradicted", "worse than the best fixed t_w (2) by more than"),
    (16, "lack", _mutated(auto_above_best=0.0, kinds=("elcn", "fcn", "lcn")), "not measured",
     "automatic switch times have no eFCN runs"),
]


@pytest.mark.parametrize("number,case,make,verdict,words", CASES,
                         ids=[f"claim{n}-{c}" for n, c, *_ in CASES])
def test_claim_verdict(tmp_path, number, case, make, verdict, words):
    root = make().write(tmp_path / "exp")
    claim = next(c for c in evaluate_claims(root) if c.number == number)
    assert claim.number == number and claim.text == CLAIMS[number].text
    assert claim.verdict == verdict, (claim.verdict, claim.reason, claim.statistic)
    assert words in claim.reason, claim.reason
    if verdict == "not measured":
        assert claim.measure, "a claim that is not measured must say what would measure it"
    else:
        assert claim.statistic != "—" and claim.n_seeds == 3, claim


def test_every_claim_has_its_three_cases():
    # a claim asked only of plans with its runs (the attention runs' 14, 15) lacks its data by not being asked
    # (test_attention_claims_are_asked_only_of_plans_with_attention_runs); a "lack" case of its own is optional
    cases = {(n, c.split("-")[0]) for n, c, *_ in CASES}
    assert cases - {(n, "lack") for n in CLAIMS if CLAIMS[n].only_with} == \
        {(n, c) for n in CLAIMS for c in ("hold", "fail", "lack") if not (CLAIMS[n].only_with and c == "lack")}


def test_attention_claims_are_asked_only_of_plans_with_attention_runs(tmp_path):
    without = evaluate_claims(Synth().write(tmp_path / "plain"))
    assert [c.number for c in without] == list(range(1, 14))
    found = evaluate_claims(Synth(kinds=WITH_ATTN).write(tmp_path / "attn"))
    assert [c.number for c in found] == list(range(1, 16))
    assert [c.verdict for c in found[:13]] == [c.verdict for c in without]  # the paper's claims ignore them


def test_auto_claim_is_asked_only_of_plans_with_auto_runs_and_leaves_the_others_alone(tmp_path):
    without = evaluate_claims(Synth().write(tmp_path / "plain"))
    found = evaluate_claims(Synth(auto_above_best=0.0).write(tmp_path / "auto"))
    assert [c.number for c in found] == list(range(1, 14)) + [16]
    # claims 1-13 read the fixed switch times only: the auto runs (at t_w = 2 here) change none of their numbers
    assert [(c.verdict, c.statistic) for c in found[:13]] == [(c.verdict, c.statistic) for c in without]
    c16 = found[-1]
    assert c16.numbers["chosen_t_w"] == {0: 2.0, 1: 2.0, 2: 2.0} and c16.numbers["best_fixed_t_w"] == 2.0
    assert c16.n_seeds == 3 and "peak-sharpness" in c16.statistic


def test_one_seed_is_too_few_for_the_statistical_claims(tmp_path):
    found = evaluate_claims(Synth(seeds=(0,)).write(tmp_path / "exp"))
    for c in found:
        if c.test == "runs":  # per-run checks (the jump, the local-block change) need no seed statistics
            assert c.verdict == "supported", c
        else:
            assert c.verdict == "not enough evidence" and "too few seeds (n=1; 3 needed)" in c.reason, c
            assert c.n_seeds == 1 and c.statistic != "—"


def test_unfinished_runs_are_counted_in_the_reason(tmp_path):
    s = Synth().build()
    for t in (0.0, 1.0, 2.0, 4.0):
        s.runs[f"efcn-tw{t:g}-s2"].status = "running"
    s.runs["fcn-s1"].status = "pending"
    found = evaluate_claims(s.write(tmp_path / "exp"))
    c2 = found[1]
    assert c2.verdict == "not enough evidence" and c2.n_seeds == 1, c2
    assert "too few seeds (n=1; 3 needed); 2 of 6 planned efcn/fcn runs not finished" in c2.reason, c2.reason
    assert found[3].verdict == "not enough evidence" and "4 of 15 planned efcn/cnn runs not finished" in found[3].reason


def test_failed_unreadable_and_partly_corrupt_inputs_become_reasons(tmp_path):
    root = Synth().write(tmp_path / "exp")
    exp = ExperimentFolder(root)
    exp.write_result(R.SharpnessResult(error="RuntimeError: out of memory"))
    exp.result_path("ablation").write_text("{not json")
    exp.run("efcn-tw1-s0").status_path.write_text("")  # unreadable: that run is left out, not fatal
    found = evaluate_claims(root)
    for n in (6, 7):
        assert found[n - 1].verdict == "not enough evidence"
        assert "analysis sharpness failed: RuntimeError: out of memory" in found[n - 1].reason
    for n in (9, 10):
        assert found[n - 1].verdict == "not enough evidence" and "analysis ablation unreadable" in found[n - 1].reason
    assert found[3].verdict == "supported"  # eFCN t_w=1 s0 missing leaves other switch times significant
    with pytest.raises(FileNotFoundError, match="plan.json"):
        evaluate_claims(tmp_path)


def test_lattice_runs_do_not_enter_the_claims(tmp_path):
    # the claims compare CNN, eFCN, eLCN, FCN and LCN (and hier): runs of the lattice's kinds (the CNN continued,
    # wide, tiled, soft, relaxation paths) in the same experiment change no verdict, statistic or reason, even
    # when each of them would break a claim (a jump at the switch, a loss that ends above its start, chance)
    from claims_synth import SynthRun

    plain = evaluate_claims(Synth().write(tmp_path / "plain"))
    s = Synth().build()
    for seed in s.seeds:
        for t in s.tws:
            for kind in ("cont", "wide", "tiled", "soft"):
                s._add(SynthRun(f"{kind}-tw{t:g}-s{seed}", kind, seed, t, s.relaxed_epochs, 5.0, 9.0, 0.1, 0.05,
                                0.9, t_w=t, parent=f"cnn-s{seed}", snapshot_epoch=t, snapshots=(1.0,)))
        s._add(SynthRun(f"path-tw1-2-s{seed}", "path", seed, 2.0, s.relaxed_epochs, 5.0, 9.0, 0.1, 0.05, 0.9,
                        t_w=1.0, t_w2=2.0, parent=f"wide-tw1-s{seed}", snapshot_epoch=1.0))
    root = s.write(tmp_path / "lattice")
    assert {r.kind for r in ExperimentFolder(root).read_plan().values()} >= {"cont", "wide", "tiled", "soft", "path"}
    key = lambda c: (c.number, c.verdict, c.statistic, c.n_seeds, c.reason)  # noqa: E731
    assert [key(c) for c in evaluate_claims(root)] == [key(c) for c in plain]


def test_report_synth_experiment_gets_verdicts(tmp_path):
    from report_synth import make_experiment

    found = evaluate_claims(make_experiment(tmp_path / "rep"))
    assert [c.number for c in found] == list(range(1, 14))
    by = {c.number: c for c in found}
    assert by[1].verdict == "supported"  # its relaxed runs start at their CNN's loss
    assert by[2].verdict == "not enough evidence" and "too few seeds (n=2; 3 needed)" in by[2].reason


# ---- the statistics -------------------------------------------------------------------------------------------
def test_paired_test_matches_scipy_and_handles_degenerate_spreads():
    from scipy import stats

    d = paired({0: 0.8, 1: 0.9, 2: 0.7}, {0: 0.7, 1: 0.75, 2: 0.72})
    assert d.n == 3 and d.diffs == pytest.approx({0: 0.1, 1: 0.15, 2: -0.02})
    assert d.p_greater == pytest.approx(stats.ttest_rel([0.8, 0.9, 0.7], [0.7, 0.75, 0.72],
                                                        alternative="greater").pvalue)
    assert d.p_greater + d.p_less == pytest.approx(1.0)
    same = paired({0: 0.02, 1: 0.02, 2: 0.02})
    assert (same.sd, same.p_greater, same.p_less) == (0.0, 0.0, 1.0)
    assert paired({0: 0.0, 1: 0.0}).p_greater == 1.0
    assert paired({3: 0.5}, {4: 0.1}).n == 0  # no common seed
    assert math.isnan(paired({0: 0.1}).p_greater)


def test_holm_spearman_and_interval():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adj = holm([0.02, float("nan"), 0.5])
    assert adj[0] == pytest.approx(0.04) and math.isnan(adj[1]) and adj[2] == 0.5
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5])) and math.isnan(spearman([1, 2], [1, 2]))
    lo, hi = t_interval(paired({0: 0.01, 1: 0.02, 2: 0.03}), 0.90)
    assert lo == pytest.approx(0.02 - 2.919986 * 0.01 / 3**0.5, abs=1e-6) and hi > 0.02


# ---- the thresholds: one place in code, the same numbers in docs/claims.md -------------------------------------------
def test_docs_state_the_thresholds_of_the_code():
    text = DOCS.read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", text, re.M))
    fields = {f.name: getattr(THRESHOLDS, f.name) for f in dataclasses.fields(ClaimThresholds)}
    assert set(table) == set(fields), f"docs/claims.md thresholds {sorted(table)} vs code {sorted(fields)}"
    for name, value in fields.items():
        doc = table[name]
        assert (doc == value) if isinstance(value, str) else (float(doc) == value), (name, doc, value)
    for n, info in CLAIMS.items():  # every claim has its rule in the docs, under its number
        assert re.search(rf"^### {n}\. ", text, re.M), f"docs/claims.md has no section for claim {n}"


def test_thresholds_are_checked_and_change_verdicts(tmp_path):
    with pytest.raises(ValueError, match="min_seeds"):
        ClaimThresholds(min_seeds=1)
    root = Synth().write(tmp_path / "exp")
    strict = ClaimThresholds(local_change_max=0.01)
    assert evaluate_claims(root, strict)[9].verdict == "contradicted"
    assert evaluate_claims(root, ClaimThresholds(min_seeds=4))[1].reason.startswith("too few seeds (n=3; 4 needed)")


# ---- archrelax claims --------------------------------------------------------------------------------------------
def test_cli_claims_table_and_json(tmp_path, capsys):
    s = Synth().build()
    s.runs["efcn-tw2-s0"].loss0 *= 1.01
    root = s.write(tmp_path / "exp")
    assert cli_main(["claims", str(root)]) == 0
    out = capsys.readouterr().out
    for c in evaluate_claims(root):
        assert re.search(rf"^ ?{c.number}  {re.escape(c.verdict)}\s+{c.n_seeds}  ", out, re.M), c.number
    assert "not exact" in out and "12 supported, 1 contradicted (of 13 claims)" in out
    assert cli_main(["claims", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["experiment"] == str(root) and data["thresholds"]["alpha"] == THRESHOLDS.alpha
    assert [c["number"] for c in data["claims"]] == list(range(1, 14))
    assert data["claims"][0]["verdict"] == "contradicted" and data["claims"][0]["anchors"] == ["curves-efcn"]
    assert data["claims"][1]["numbers"]["diff"].keys() == {"0", "1", "2"}
    assert cli_main(["claims", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_claims_import_no_torch(tmp_path):
    root = Synth().write(tmp_path / "exp")
    code = ("import sys; from archrelax.analysis.claims import evaluate_claims, format_claims; "
            "print(format_claims(evaluate_claims(sys.argv[1]))); "
            "assert 'torch' not in sys.modules, 'the claims imported torch'")
    res = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=os.environ)
    assert res.returncode == 0, res.stderr
    assert "13 supported" in res.stdout


def test_format_claims_wraps_and_says_what_would_measure(tmp_path):
    root = Synth(kinds=NO_HIER).write(tmp_path / "exp")
    text = format_claims(evaluate_claims(root), width=80)
    assert "to measure: add `lc>fc` to `targets`" in text
    assert max(len(line) for line in text.splitlines() if line.startswith("      ")) <= 80
