"""Claims 6 and 7 read a λ_max only where it converged: an unconverged estimate is missing (named in the
statistic and the reason), not a number, and an experiment whose CNN end never converged has no pair left."""
from __future__ import annotations

import dataclasses

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
