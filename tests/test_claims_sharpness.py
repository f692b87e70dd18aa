"""Claims 6 and 7 read a λ_max only where it converged: an unconverged estimate is missing (named in the
statistic and the reason), not a number, and an experiment whose CNN end never converged has no pair left."""
from __future__ import annotations

import dataclasses
import json

from archrelax.analysis.claims import evaluate_claims
from archrelax.store import ExperimentFolder
from claims_synth import Synth


def _unconverge(root, pick) -> list[str]:
    """Mark the sharpness points chosen by ``pick`` unconverged, with a wild value (as an unconverged power
    iteration could give); returns their "run@epoch"."""
    exp = ExperimentFolder(root)
    res = exp.read_result("sharpness")
    out, points = [], []
    for p in res.points:
        if pick(p):
            p = dataclasses.replace(p, eigenvalues=[1e6] + p.eigenvalues[1:], eig_converged=False,
                                    eig_converged_each=[False] * len(p.eigenvalues))
            out.append(f"{p.run}@{p.epoch:g}")
        points.append(p)
    res.points = points
    exp.write_result(res)
    return out


def test_an_unconverged_lambda_max_is_missing_not_a_number(tmp_path):
    root = Synth().write(tmp_path / "exp")
    before = {c.number: c for c in evaluate_claims(root)}
    assert before[7].verdict == "supported" and "not converged" not in before[7].statistic
    gone = _unconverge(root, lambda p: p.run == "efcn-tw1-s0" and p.where == "final")
    assert len(gone) == 1
    after = {c.number: c for c in evaluate_claims(root)}
    c7 = after[7]
    # the wild value would have flipped the sign of seed 0's difference; left out, the verdict stands
    assert c7.verdict == "supported", c7
    assert f"λ_max not converged at 1 point(s), left out as missing: {gone[0]}" in c7.statistic
    assert c7.numbers["unconverged"] == gone
    assert all(abs(d) < 1e3 for d in c7.numbers["lambda_max_diff"].values())  # 1e6 never entered a mean
    assert c7.numbers["trace_diff"] == before[7].numbers["trace_diff"]  # a trace is still an estimate


def test_unconverged_cnn_ends_leave_claim_7_without_pairs(tmp_path):
    root = Synth().write(tmp_path / "exp")
    gone = _unconverge(root, lambda p: p.kind == "cnn" and p.where == "final")
    c7 = {c.number: c for c in evaluate_claims(root)}[7]
    assert c7.verdict == "not enough evidence" and c7.n_seeds == 0, c7
    assert "no seed has a converged λ_max at both the CNN's end and an eFCN's end" in c7.reason
    assert "not converged at 3 point(s)" in c7.reason and all(g in c7.reason for g in gone)


def test_claim_6_leaves_out_unconverged_cnn_snapshots(tmp_path):
    root = Synth().write(tmp_path / "exp")
    gone = _unconverge(root, lambda p: p.kind == "cnn" and p.where == "snapshot" and p.seed == 0 and p.epoch == 2.0)
    c6 = {c.number: c for c in evaluate_claims(root)}[6]
    assert c6.numbers["unconverged"] == gone and "left out as missing" in c6.statistic
    assert 0 in c6.numbers["rho"]  # seed 0 keeps 3 switch times of 4


def test_claim_6_reads_the_cnn_sharpness_along_training_when_its_rows_carry_it(tmp_path):
    """The dense curve peaks at epoch 1.5, between two switch times, and is read instead of the snapshot analysis
    (whose λ_max peaks at t_w = 2); without the analysis the claim is still measured; an unconverged row is left
    out as missing, like an unconverged snapshot."""
    hump = lambda t: 40.0 - 10.0 * abs(t - 1.5)  # noqa: E731  at t_w 0, 1, 2, 4: 25, 35, 35, 15
    snaps = {c.number: c for c in evaluate_claims(Synth().write(tmp_path / "snaps"))}[6]
    assert snaps.numbers["source"] == "snapshots" and snaps.numbers["best_and_sharpest_t_w"][0] == (2.0, 2.0)
    root = Synth(lam_rows=hump).write(tmp_path / "dense")
    c6 = {c.number: c for c in evaluate_claims(root)}[6]
    assert c6.numbers["source"] == "along training" and "rows along training (51 evaluations)" in c6.statistic
    assert c6.numbers["best_and_sharpest_t_w"] == {s: (2.0, 1.5) for s in (0, 1, 2)}, c6.numbers
    assert c6.numbers["index_distance"] == {0: 1, 1: 1, 2: 1}  # the switch time nearest the peak: t_w = 1
    assert c6.numbers["rho"] != snaps.numbers["rho"] and all(r > 0 for r in c6.numbers["rho"].values())
    assert "sharpest epoch" in c6.statistic

    bare = {c.number: c for c in evaluate_claims(Synth(lam_rows=hump, analyses=("memory", "ablation",
                                                                                  "interpolation"))
                                                 .write(tmp_path / "bare"))}[6]
    assert bare.numbers["rho"] == c6.numbers["rho"] and bare.verdict == c6.verdict

    log = ExperimentFolder(root).run("cnn-s0").metrics_path
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    for r in rows:
        if r["global_epoch"] == 1.0:
            r.update(lambda_max=1e6, lambda_max_converged=False)
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c6 = {c.number: c for c in evaluate_claims(root)}[6]
    assert c6.numbers["unconverged"] == ["cnn-s0@1"] and "left out as missing: cnn-s0@1" in c6.statistic
    assert 0 in c6.numbers["rho"]  # seed 0 keeps 3 switch times of 4
