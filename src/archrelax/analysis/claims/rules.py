"""The thirteen claims, claims 1 and 4 again for the attention runs (14, 15), and the automatic switch time
against the fixed ones (16), each a function
``(evidence, thresholds) -> Claim``. docs/claims.md states each rule in words; the order of the checks below is
the order of the verdict rule there.

Common ground: "final" = the last evaluation of a finished (``done``) run; accuracies are fractions, shown
in percentage points (pp). Paired differences are taken within a seed (:mod:`.stats`); a statistical
verdict needs ``min_seeds`` seeds, and a claim that looks for one switch time among several corrects its
P-values with Holm's method.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from .base import CLAIMS, Claim, ClaimThresholds, Verdict
from archrelax.store.view import WENT_WRONG

from .evidence import PAPER_KINDS, Evidence, RunView, finite
from .stats import Paired, holm, paired, spearman, t_interval

__all__ = ["RULES"]


# ---- wording --------------------------------------------------------------------------------------------------
def _pp(x: float, sign: bool = True) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}")


def _p(p: float) -> str:
    """"p=0.012", "p<0.001", or "p=—" when there is no test (fewer than 2 seeds)."""
    return "p=—" if p is None or not math.isfinite(p) else ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def _t(t: float | None) -> str:
    return "?" if t is None else f"{t:g}"


def _msd(d: Paired, scale: float = 100.0, unit: str = " pp", digits: str = ".2f") -> str:
    """"+1.23 ± 0.40 pp (n=3)": mean ± sd over seeds of per-seed differences (no sd for one seed)."""
    if d.n == 0:
        return "no paired seeds"
    mean = format(scale * d.mean, "+" + digits)
    if d.n == 1:
        return f"{mean}{unit} (n=1)"
    return f"{mean} ± {format(scale * d.sd, digits)}{unit} (n={d.n})"


def _few(th: ClaimThresholds, n: int) -> str:
    return f"too few seeds (n={n}; {th.min_seeds} needed)"


def _claim(no: int, verdict: Verdict, reason: str, statistic: str = "—", n_seeds: int = 0,
           numbers: dict[str, Any] | None = None, measure: str | None = None) -> Claim:
    info = CLAIMS[no]
    return Claim(number=no, short=info.short, text=info.text, test=info.test, verdict=verdict, reason=reason,
                 statistic=statistic, n_seeds=n_seeds, anchors=info.anchors, measure=measure, numbers=numbers or {})


def _not_measured(no: int, why: str, measure: str) -> Claim:
    return _claim(no, "not measured", why, measure=measure)


def _directional(d: Paired, th: ClaimThresholds, direction: str, p: float | None = None) -> tuple[Verdict, str]:
    """The verdict rule for a claimed direction ("greater": mean > 0; "less": mean < 0) of per-seed
    differences; ``p`` overrides the claimed direction's P-value (e.g. Holm-adjusted)."""
    other = "less" if direction == "greater" else "greater"
    if d.n == 0:
        return "not enough evidence", "no seed has the runs this needs finished"
    if d.n < th.min_seeds:
        return "not enough evidence", _few(th, d.n)
    p_for = d.p(direction) if p is None else p
    if p_for < th.alpha:
        return "supported", f"significant in the claimed direction ({_p(p_for)}, α={th.alpha:g})"
    if d.p(other) < th.alpha:
        return "contradicted", f"significant in the opposite direction ({_p(d.p(other))}, α={th.alpha:g})"
    return "not enough evidence", f"difference within the seed spread ({_p(p_for)})"


def _unfinished(ev: Evidence, *kinds: str) -> str:
    """"; 3 of 10 planned efcn/cnn runs not finished" (empty when all are)."""
    return _left(ev.of_kind(*kinds), "/".join(kinds))


def _left(planned: Sequence[RunView], what: str) -> str:
    """"; 3 of 10 planned efcn/cnn runs not finished", and the runs that went wrong named as such (a failed run
    is not one that has yet to finish: it needs a rerun, and `archrelax status` says why it failed)."""
    wrong: dict[str, list[str]] = defaultdict(list)
    for v in planned:
        if not v.done and v.status in WENT_WRONG:
            wrong[v.status].append(v.id)
    waiting = sum(not v.done and v.status not in WENT_WRONG for v in planned)
    parts = [f"{len(ids)} {state}" for state, ids in wrong.items()] + ([f"{waiting} not finished"] if waiting else [])
    if not parts:
        return ""
    if not wrong:
        return f"; {waiting} of {len(planned)} planned {what} runs not finished"
    ids = [i for state in wrong.values() for i in state]
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    return (f"; of {len(planned)} planned {what} runs, {', '.join(parts)} ({shown}: see `archrelax status`; "
            "`archrelax run` retries failed runs)")


def _with(verdict_reason: tuple[Verdict, str], extra: str) -> tuple[Verdict, str]:
    v, r = verdict_reason
    return v, (r + extra) if v == "not enough evidence" else r


def _analysis(ev: Evidence, no: int, name: str) -> tuple[Any, Claim | None]:
    """The typed result of analysis ``name``, or the claim's verdict when it cannot be read from it."""
    cmd = f"run `archrelax analyse {ev.exp.root} --only {name}` (or list it under `analyses` in the spec)"
    if name in ev.result_problems:
        return None, _claim(no, "not enough evidence", f"analysis {name} unreadable: {ev.result_problems[name]}",
                            measure=cmd)
    res = ev.results.get(name)
    if res is None:
        return None, _not_measured(no, f"analysis/{name}.json is missing", cmd)
    if res.error:
        return None, _claim(no, "not enough evidence", f"analysis {name} failed: {res.error.strip()[-300:]}",
                            measure=cmd)
    auto = {v.id for v in ev.auto_runs()}
    if auto:  # claims 1-15 are about the fixed switch times: the per-run records of auto runs are claim 16's
        lists = {f.name: getattr(res, f.name) for f in dataclasses.fields(res) if f.name in _PER_RUN}
        res = dataclasses.replace(res, **{k: [r for r in v if getattr(r, "run", None) not in auto]
                                          for k, v in lists.items()})
    return res, None


_PER_RUN = ("points", "runs", "curves", "gain")  # the fields of analysis results that hold one record per run


def _efcn_analysis(ev: Evidence, no: int, name: str) -> tuple[Any, Claim | None]:
    """:func:`_analysis` for a claim about the eFCN runs: first, the verdict when the plan has none."""
    if not ev.of_kind("efcn"):
        return None, _not_measured(no, "the plan has no eFCN runs", _measure_efcn(ev))
    return _analysis(ev, no, name)


def _finals(runs: Sequence[RunView], key: str = "test_acc") -> dict[int, float]:
    """seed -> final value, for runs of one (kind, t_w): one run per seed."""
    return {v.seed: x for v in runs if (x := v.final(key)) is not None}


def _by_tw(runs: Sequence[RunView]) -> dict[float, list[RunView]]:
    out: dict[float, list[RunView]] = defaultdict(list)
    for v in runs:
        if v.t_w is not None:
            out[float(v.t_w)].append(v)
    return dict(sorted(out.items()))


def _gains(ev: Evidence, kind: str = "efcn") -> dict[float, dict[int, float]]:
    """t_w -> seed -> final test accuracy of the relaxed run minus that of the CNN it branched from."""
    out: dict[float, dict[int, float]] = {}
    for t, runs in _by_tw(ev.done_runs(kind)).items():
        g = {}
        for v in runs:
            cnn = ev.cnn_of(v)
            a, b = v.final("test_acc"), cnn.final("test_acc") if cnn is not None and cnn.done else None
            if a is not None and b is not None:
                g[v.seed] = a - b
        out[t] = g
    return out


def _planned_tws(ev: Evidence, kind: str = "efcn") -> list[float]:
    return sorted({float(v.t_w) for v in ev.of_kind(kind) if v.t_w is not None})


def _measure_efcn(ev: Evidence) -> str:
    return "add `fc` to `targets` (eFCN runs from the switch times)"


# ---- 1: no jump at the switch, the loss keeps decreasing ---------------------------------------------------------
def claim_1(ev: Evidence, th: ClaimThresholds) -> Claim:
    return _no_jump(ev, th, 1, PAPER_KINDS)


def _no_jump(ev: Evidence, th: ClaimThresholds, no: int, kinds: tuple[str, ...], what: str = "relaxed") -> Claim:
    """Claim ``no``: every finished run of ``kinds`` starts where its parent was and ends below its start."""
    planned = ev.of_kind(*kinds)
    if not planned:
        return _not_measured(no, f"the plan has no {what} runs",
                             _measure_efcn(ev) if no == 1 else "add `attn` to `targets`")
    jumps, ratios, no_ref, failures = {}, {}, [], []
    for v in planned:
        if v.status == "diverged":
            failures.append(f"{v.id} diverged (NaN/inf loss)")
    for v in ev.done_runs(*kinds):
        first, parent = v.first(), ev.parent(v)
        ref = parent.at(float(first.get("global_epoch", first["epoch"]))) if first and parent else None
        l0, lp, end = (finite(first.get("train_loss")) if first else None,
                       finite(ref.get("train_loss")) if ref else None, v.final("train_loss"))
        if l0 is None or lp is None or end is None:
            no_ref.append(v.id)
            continue
        jumps[v.id] = abs(l0 - lp) / max(lp, th.loss_floor)
        tol = th.jump_tol_bf16 if (v.run.config or {}).get("amp") else th.jump_tol
        if jumps[v.id] > tol:
            failures.append(f"{v.id}: train loss {l0:.6g} right after the switch vs {lp:.6g} for {parent.id} at "
                            f"the snapshot (relative jump {jumps[v.id]:.2g} > {tol:g}: the embedding is not exact)")
        ratios[v.id] = end / l0 if l0 > 0 else 0.0
        if end > l0:
            failures.append(f"{v.id} ends above its start (train loss {l0:.4g} at the switch, {end:.4g} at the end)")
    seeds = sorted({ev.run(r).seed for r in jumps})
    nums = {"jump": jumps, "final_over_switch_loss": ratios, "tolerance": th.jump_tol,
            "without_reference": no_ref}
    stat = "—"
    if jumps:
        stat = (f"largest relative train-loss jump at the switch {max(jumps.values()):.2g} (tolerance "
                f"{th.jump_tol:g}) over {len(jumps)} runs; final / switch train loss: median "
                f"{np.median(list(ratios.values())):.3g}, largest {max(ratios.values()):.3g}")
    if failures:
        return _claim(no, "contradicted", "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more"
                                                                     if len(failures) > 3 else ""),
                      stat, len(seeds), nums)
    if not jumps:
        if no_ref:
            return _claim(no, "not measured", f"{len(no_ref)} finished {what} run(s) but no evaluation of the "
                          "parent at the snapshot step (trained by an archrelax that evaluated only at eval_times)",
                          measure="retrain the CNNs with this archrelax, which evaluates at every snapshot step "
                          "(delete their run folders and `archrelax run` the experiment again)", numbers=nums)
        return _claim(no, "not enough evidence", f"no {what} run finished yet" + _unfinished(ev, *kinds),
                      numbers=nums)
    extra = f" ({len(no_ref)} run(s) without a parent evaluation at the switch not checked)" if no_ref else ""
    return _claim(no, "supported", f"all {len(jumps)} finished {what} runs: no jump beyond the tolerance and the "
                  f"train loss ends below its value at the switch{extra}", stat, len(seeds), nums)


# ---- 2: eFCN(t_w = 0) beats the vanilla FCN ---------------------------------------------------------------------
def claim_2(ev: Evidence, th: ClaimThresholds) -> Claim:
    e0 = [v for v in ev.of_kind("efcn") if v.t_w == 0]
    fcn = ev.of_kind("fcn")
    if not e0 or not fcn:
        todo = ([] if fcn else ["add `fcn` to `baselines`"]) + ([] if e0 else ["add `0` to `switch_times` (with "
                                                                               "`fc` in `targets`)"])
        return _not_measured(2, "the plan has no " + " and no ".join(
            (["vanilla FCN"] if not fcn else []) + (["eFCN at t_w = 0"] if not e0 else [])), " and ".join(todo))
    d = paired(_finals([v for v in e0 if v.done]), _finals(ev.done_runs("fcn")))
    verdict = _with(_directional(d, th, "greater"), _left(e0 + fcn, "efcn/fcn") if d.n < th.min_seeds else "")
    stat = (f"final test accuracy, eFCN(t_w=0) − FCN of the same seed: {_msd(d)}; one-sided paired t-test "
            f"{_p(d.p_greater)}")
    return _claim(2, *verdict, stat, d.n, {"diff": d.diffs, "mean": d.mean, "sd": d.sd, "p": d.p_greater})


# ---- 3: no overfitting after the switch -----------------------------------------------------------------------
def claim_3(ev: Evidence, th: ClaimThresholds) -> Claim:
    if not ev.of_kind("efcn"):
        return _not_measured(3, "the plan has no eFCN runs", _measure_efcn(ev))
    change: dict[float, dict[int, float]] = defaultdict(dict)
    falls = {}
    for v in ev.done_runs("efcn"):
        first, end = v.first(), v.final("test_acc")
        start = finite(first.get("test_acc")) if first else None
        if start is None or end is None or v.t_w is None:
            continue
        change[float(v.t_w)][v.seed] = end - start
        best = v.best("test_acc", max)
        falls[v.id] = best - end
    if not change:
        return _claim(3, "not enough evidence", "no eFCN run with an evaluation at its switch finished yet"
                      + _unfinished(ev, "efcn"))
    per_tw = {t: paired(c) for t, c in sorted(change.items())}
    tested = [t for t, d in per_tw.items() if d.n >= th.min_seeds]
    adj = dict(zip(tested, holm([per_tw[t].p_less for t in tested])))
    all_changes = [x for c in change.values() for x in c.values()]
    mean = float(np.mean(all_changes))
    worst = min(per_tw, key=lambda t: per_tw[t].mean)
    seeds = sorted({s for c in change.values() for s in c})
    stat = (f"final − switch test accuracy, mean over {len(all_changes)} eFCN runs {_pp(mean)} pp; lowest t_w="
            f"{_t(worst)}: {_msd(per_tw[worst])}" + (f", Holm-adjusted {_p(adj[worst])}" if worst in adj else "")
            + f"; largest fall from a run's best to its end {_pp(max(falls.values()), sign=False)} pp")
    nums = {"change": {t: c for t, c in change.items()}, "holm_p_less": adj, "mean": mean, "fall_from_best": falls}
    falling = [t for t, p in adj.items() if p < th.alpha]
    if falling:
        return _claim(3, "contradicted", "test accuracy falls significantly after the switch at t_w = "
                      + ", ".join(f"{_t(t)} (Holm {_p(adj[t])})" for t in falling), stat, len(seeds), nums)
    if not tested:
        return _claim(3, "not enough evidence", _few(th, max(d.n for d in per_tw.values())) + _unfinished(ev, "efcn"),
                      stat, len(seeds), nums)
    if mean < 0:
        return _claim(3, "not enough evidence", f"the mean change is negative ({_pp(mean)} pp) but no t_w falls "
                      "significantly", stat, len(seeds), nums)
    untested = [t for t in per_tw if t not in adj]
    note = f" (t_w = {', '.join(map(_t, untested))} with fewer than {th.min_seeds} seeds not tested)" if untested else ""
    return _claim(3, "supported", f"no t_w falls significantly (Holm, α={th.alpha:g}) and the mean change is ≥ 0{note}",
                  stat, len(seeds), nums)


# ---- 4: released late enough, the eFCN beats the CNN -----------------------------------------------------------------
def claim_4(ev: Evidence, th: ClaimThresholds) -> Claim:
    return _late_beats_cnn(ev, th, 4, "efcn", "eFCN")


def _late_beats_cnn(ev: Evidence, th: ClaimThresholds, no: int, kind: str, name: str) -> Claim:
    """Claim ``no``: some switch time's runs of ``kind`` (``name`` in words) beat their CNN, paired per seed."""
    if not ev.of_kind(kind):
        return _not_measured(no, f"the plan has no {name} runs",
                             _measure_efcn(ev) if kind == "efcn" else f"add `{kind}` to `targets`")
    per_tw = {t: paired(g) for t, g in _gains(ev, kind).items() if g}
    if not per_tw:
        return _claim(no, "not enough evidence", f"no {name} run and its CNN both finished yet"
                      + _unfinished(ev, kind, "cnn"))
    tested = [t for t, d in per_tw.items() if d.n >= th.min_seeds]
    adj = dict(zip(tested, holm([per_tw[t].p_greater for t in tested])))
    best = max(per_tw, key=lambda t: per_tw[t].mean)
    d = per_tw[best]
    seeds = sorted({s for x in per_tw.values() for s in x.diffs})
    stat = (f"gain = {name} − its CNN, final test accuracy; best t_w={_t(best)}: {_msd(d)}"
            + (f", Holm-adjusted {_p(adj[best])}" if best in adj else "")
            + "; mean gain per t_w: " + ", ".join(f"{_t(t)}: {_pp(x.mean)}" for t, x in per_tw.items()) + " pp")
    nums = {"gain": {t: x.diffs for t, x in per_tw.items()}, "holm_p_greater": adj, "best_t_w": best}
    winners = [t for t, p in adj.items() if p < th.alpha]
    if winners:
        return _claim(no, "supported", f"the {name} beats its CNN at t_w = " + ", ".join(
            f"{_t(t)} (Holm {_p(adj[t])})" for t in winners), stat, len(seeds), nums)
    if d.n >= th.min_seeds and d.p_less < th.alpha:
        return _claim(no, "contradicted", f"even the best t_w ({_t(best)}) loses to the CNN ({_p(d.p_less)})",
                      stat, len(seeds), nums)
    if not tested:
        return _claim(no, "not enough evidence", _few(th, d.n) + _unfinished(ev, kind, "cnn"), stat, len(seeds), nums)
    return _claim(no, "not enough evidence", f"no t_w's gain is significant after Holm's correction (best t_w "
                  f"{_t(best)}: {_p(adj.get(best, math.nan))})", stat, len(seeds), nums)


# ---- 5: the gain is largest at an intermediate t_w ----------------------------------------------------------------
def claim_5(ev: Evidence, th: ClaimThresholds) -> Claim:
    tws = _planned_tws(ev)
    if len(tws) < 3:
        return _not_measured(5, f"the plan has eFCN runs at {len(tws)} switch time(s); an intermediate one needs 3",
                             "list at least 3 `switch_times` (first, intermediate, last) with `fc` in `targets`")
    finals = {t: _finals(runs) for t, runs in _by_tw(ev.done_runs("efcn")).items()}
    gains = {t: g for t, g in _gains(ev).items() if g}
    if len(gains) < 3 or tws[0] not in gains or tws[-1] not in gains:  # the ends are the planned ones
        return _claim(5, "not enough evidence", f"gains at {len(gains)} switch time(s) so far (3 needed, the "
                      f"first and the last among them)" + _unfinished(ev, "efcn", "cnn"))
    order = sorted(gains)
    mean = {t: float(np.mean(list(gains[t].values()))) for t in order}
    best, first, last = max(order, key=mean.get), order[0], order[-1]
    interior = best not in (first, last)
    rivals = [first, last] if interior else [t for t in order[1:-1]]
    # the gain difference between two t_w of one seed is the difference of the eFCNs' finals (same CNN)
    diffs = {t: paired(finals[best], finals[t]) for t in rivals}
    tested = [t for t in rivals if diffs[t].n >= th.min_seeds]
    adj = dict(zip(tested, holm([diffs[t].p_greater for t in tested])))
    n = min((diffs[t].n for t in rivals), default=0)
    stat = (f"mean gain per t_w (pp): " + ", ".join(f"{_t(t)}: {_pp(mean[t])}" for t in order)
            + f"; largest at t_w={_t(best)} ({'intermediate' if interior else 'an endpoint'}); "
            + "; ".join(f"vs t_w={_t(t)}: {_msd(diffs[t])}" + (f", Holm {_p(adj[t])}" if t in adj else "")
                        for t in rivals))
    nums = {"mean_gain": mean, "best_t_w": best, "vs": {t: diffs[t].diffs for t in rivals}, "holm_p_greater": adj}
    seeds = n
    if n < th.min_seeds:
        return _claim(5, "not enough evidence", _few(th, n) + _unfinished(ev, "efcn", "cnn"), stat, seeds, nums)
    significant = len(adj) == len(rivals) and all(p < th.alpha for p in adj.values())
    if interior and significant:
        return _claim(5, "supported", f"t_w={_t(best)} is intermediate and beats both the first and the last "
                      "switch time (Holm)", stat, seeds, nums)
    if not interior and significant:
        return _claim(5, "contradicted", f"the largest gain is at the endpoint t_w={_t(best)}, significantly above "
                      "every intermediate switch time (Holm)", stat, seeds, nums)
    where = "intermediate" if interior else "an endpoint"
    return _claim(5, "not enough evidence", f"the largest mean gain is at {where} t_w={_t(best)} but not "
                  "significantly above " + ("both ends" if interior else "every intermediate t_w") + " (Holm)",
                  stat, seeds, nums)


def _converged(points: list[Any]) -> tuple[list[Any], list[str], str]:
    """The sharpness points whose λ_max converged, the others' "run@epoch", and a note naming them: an
    unconverged eigenvalue is no measurement, so it is left out, never read as a number."""
    kept = [p for p in points if p.lambda_max_converged and math.isfinite(p.lambda_max)]
    out = [f"{p.run}@{p.epoch:g}" for p in points if not (p.lambda_max_converged and math.isfinite(p.lambda_max))]
    note = (f"; λ_max not converged at {len(out)} point(s), left out as missing: {', '.join(out[:6])}"
            + (", ..." if len(out) > 6 else "")) if out else ""
    return kept, out, note


# ---- 6: largest gain where the CNN is sharpest --------------------------------------------------------------------
def _dense_curves(ev: Evidence) -> dict[int, RunView]:
    """seed -> its CNN, for the CNNs whose metrics rows carry λ_max along training (``sharpness_products``)."""
    return {v.seed: v for v in ev.of_kind("cnn") if any("lambda_max" in r for r in v.metrics)}


@dataclasses.dataclass(frozen=True)
class _CurvePoint:
    """A λ_max row of a CNN's log in the shape ``_converged`` reads."""

    run: str
    epoch: float
    lambda_max: float
    lambda_max_converged: bool


def _curve(v: RunView) -> list[_CurvePoint]:
    return [_CurvePoint(v.id, float(r.get("global_epoch", r.get("epoch", 0.0))), float(r["lambda_max"]),
                        bool(r.get("lambda_max_converged"))) for r in v.metrics if r.get("lambda_max") is not None]


def claim_6(ev: Evidence, th: ClaimThresholds) -> Claim:
    """ρ(gain(t_w), λ_max of the CNN at t_w) per seed. λ_max is read from the CNN's own rows along training when
    they carry it (every evaluation, the snapshots' included: the sharpest epoch is then the curve's peak, which
    may lie between two switch times), else from the sharpness analysis of its snapshots."""
    if len(_planned_tws(ev)) < 3:
        return _not_measured(6, "fewer than 3 eFCN switch times: no rank correlation over t_w",
                             "list at least 3 `switch_times` with `fc` in `targets`")
    dense = _dense_curves(ev)
    peak_of: dict[int, float] = {}  # seed -> epoch of its CNN's sharpest converged evaluation (dense curve)
    if dense:
        curves = {s: _curve(v) for s, v in dense.items()}
        kept, unconverged, note = _converged([p for c in curves.values() for p in c])
        ok = {id(p) for p in kept}
        at = {(s, p.epoch): p for s, c in curves.items() for p in c if id(p) in ok}
        for s, c in curves.items():
            good = [p for p in c if id(p) in ok]
            if good:
                peak_of[s] = max(good, key=lambda p: p.lambda_max).epoch

        def lam_at(v: RunView) -> float | None:
            p = at.get((v.seed, float(v.t_w)))
            return p.lambda_max if p is not None else None
        source = "along training"
    else:
        res, bad = _analysis(ev, 6, "sharpness")
        if bad:
            return bad
        kept, unconverged, note = _converged([p for p in res.points if p.kind == "cnn" and p.where == "snapshot"
                                              and p.eigenvalues])
        along = {p.file: p for p in kept}

        def lam_at(v: RunView) -> float | None:
            p = along.get(ev.snapshot_file(v) or "")
            return p.lambda_max if p is not None else None
        source = "snapshots"
    by_seed: dict[int, list[tuple[float, float, float]]] = defaultdict(list)  # seed -> (t_w, gain, λ_max)
    gains = _gains(ev)
    for v in ev.done_runs("efcn"):
        g = gains.get(float(v.t_w), {}).get(v.seed) if v.t_w is not None else None
        lam = lam_at(v) if v.t_w is not None else None
        if g is not None and lam is not None and math.isfinite(lam):
            by_seed[v.seed].append((float(v.t_w), g, lam))
    rho, dist, peaks = {}, {}, {}
    for s, rows in sorted(by_seed.items()):
        rows.sort()
        if len(rows) < 3:
            continue
        tw, g, lam = zip(*rows)
        r = spearman(g, lam)
        if math.isfinite(r):
            rho[s] = r
        best = int(np.argmax(g))
        if s in peak_of:  # the curve's peak, and the switch time nearest to it
            sharp = peak_of[s]
            dist[s] = abs(best - int(np.argmin([abs(t - sharp) for t in tw])))
        else:
            sharp = tw[int(np.argmax(lam))]
            dist[s] = abs(best - int(np.argmax(lam)))
        peaks[s] = (tw[best], sharp)
    d = paired(rho)
    if not dist:
        return _claim(6, "not enough evidence", "no seed has gains and CNN sharpness at 3 switch times yet"
                      + _unfinished(ev, "efcn", "cnn") + note, numbers={"unconverged": unconverged, "source": source})
    where = (f"; λ_max from the CNN's rows along training ({sum(len(c) for c in curves.values())} evaluations)"
             if dense else "")
    stat = (f"Spearman ρ(gain(t_w), λ_max of the CNN at t_w) per seed: mean {_msd(d, 1, '')}, "
            f"one-sided t-test {_p(d.p_greater)}; (best t_w, sharpest {'epoch' if dense else 't_w'}) per seed: "
            + ", ".join(f"s{s}: ({_t(a)}, {_t(b)})" for s, (a, b) in peaks.items())
            + f"; mean index distance {np.mean(list(dist.values())):.2g} switch times" + where + note)
    verdict = _with(_directional(d, th, "greater"),
                    (_unfinished(ev, "efcn", "cnn") if d.n < th.min_seeds else "") + note)
    return _claim(6, *verdict, stat, d.n, {"rho": rho, "index_distance": dist, "best_and_sharpest_t_w": peaks,
                                           "p": d.p_greater, "unconverged": unconverged, "source": source})


# ---- 7: wider basins at the end ----------------------------------------------------------------------------------
def claim_7(ev: Evidence, th: ClaimThresholds) -> Claim:
    res, bad = _efcn_analysis(ev, 7, "sharpness")
    if bad:
        return bad
    ends = [p for p in res.points if p.where == "final" and p.eigenvalues]
    converged, unconverged, note = _converged(ends)
    ok = {id(p) for p in converged}
    lam_e: dict[int, list[float]] = defaultdict(list)
    tr_e: dict[int, list[float]] = defaultdict(list)
    lam_c, tr_c = {}, {}
    for p in ends:  # a trace is an estimate with its standard error whether or not λ_max converged
        if p.kind == "efcn":
            tr_e[p.seed].append(p.trace)
            if id(p) in ok:
                lam_e[p.seed].append(p.lambda_max)
        elif p.kind == "cnn":
            tr_c[p.seed] = p.trace
            if id(p) in ok:
                lam_c[p.seed] = p.lambda_max
    d = paired({s: float(np.mean(v)) for s, v in lam_e.items()}, lam_c)
    dt = paired({s: float(np.mean(v)) for s, v in tr_e.items()}, tr_c)
    stat = (f"λ_max at the end, eFCN (mean over t_w) − CNN of the same seed: {_msd(d, 1, ' nats', '.3g')}, "
            f"one-sided {_p(d.p_less)}; trace likewise: {_msd(dt, 1, ' nats', '.3g')}, {_p(dt.p_less)}" + note)
    verdict = _with(_directional(d, th, "less"), (_unfinished(ev, "efcn", "cnn") if d.n < th.min_seeds else "") + note)
    if d.n == 0 and unconverged:
        verdict = ("not enough evidence", "no seed has a converged λ_max at both the CNN's end and an eFCN's end"
                   + _unfinished(ev, "efcn", "cnn") + note)
    return _claim(7, *verdict, stat, d.n, {"lambda_max_diff": d.diffs, "trace_diff": dt.diffs,
                                           "p_lambda": d.p_less, "p_trace": dt.p_less, "unconverged": unconverged})


# ---- 8: the earlier the release, the further the escape --------------------------------------------------------------
def claim_8(ev: Evidence, th: ClaimThresholds) -> Claim:
    if len(_planned_tws(ev)) < 3:
        return _not_measured(8, "fewer than 3 eFCN switch times: no rank correlation over t_w",
                             "list at least 3 `switch_times` with `fc` in `targets`")
    by_seed: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for v in ev.done_runs("efcn"):
        delta = v.final("offlocal_ratio")
        if delta is not None and v.t_w is not None:
            by_seed[v.seed].append((float(v.t_w), delta))
    rho = {}
    for s, rows in sorted(by_seed.items()):
        if len(rows) >= 3:
            r = spearman(*zip(*sorted(rows)))
            if math.isfinite(r):
                rho[s] = r
    d = paired(rho)
    if d.n == 0:
        return _claim(8, "not enough evidence", "no seed has a final δ at 3 switch times yet" + _unfinished(ev, "efcn"))
    stat = (f"Spearman ρ(t_w, final δ) per seed: mean {_msd(d, 1, '')}, one-sided t-test "
            f"{_p(d.p_less)}; final δ per t_w: " + ", ".join(
                f"{_t(t)}: {np.mean([x for s in by_seed.values() for tt, x in s if tt == t]):.3g}"
                for t in sorted({t for s in by_seed.values() for t, _ in s})))
    verdict = _with(_directional(d, th, "less"), _unfinished(ev, "efcn") if d.n < th.min_seeds else "")
    return _claim(8, *verdict, stat, d.n, {"rho": rho, "final_delta": {s: dict(r) for s, r in by_seed.items()},
                                           "p": d.p_less})


# ---- 9: off-local alone at chance; both parts beat local alone ------------------------------------------------------
def claim_9(ev: Evidence, th: ClaimThresholds) -> Claim:
    res, bad = _efcn_analysis(ev, 9, "ablation")
    if bad:
        return bad
    k = ev.num_classes()
    if k is None:
        return _not_measured(9, "the number of classes is unknown, so chance is unknown",
                             f"run `archrelax analyse {ev.exp.root} --only memory` (it records the model's classes)")
    recs = [r for r in res.runs if r.kind == "efcn"]
    if not recs:
        return _claim(9, "not enough evidence", "no eFCN ablated yet" + _unfinished(ev, "efcn"))
    chance = 1.0 / k
    off = [r.test_acc.offlocal for r in recs]
    gain: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        gain[r.seed].append(r.test_acc.both - r.test_acc.local)
    d = paired({s: float(np.mean(v)) for s, v in gain.items()})
    at_chance = float(np.mean(off)) <= chance + th.chance_margin
    stat = (f"off-local part alone: mean test accuracy {_pp(float(np.mean(off)), sign=False)} % over {len(off)} eFCN "
            f"runs (largest {_pp(max(off), sign=False)} %; chance {_pp(chance, sign=False)} %, margin "
            f"{_pp(th.chance_margin, sign=False)} pp); both − local only, per seed (mean over t_w): {_msd(d)}, "
            f"one-sided {_p(d.p_greater)}")
    nums = {"offlocal_acc": {r.run: r.test_acc.offlocal for r in recs}, "chance": chance,
            "both_minus_local": d.diffs, "p": d.p_greater}
    if not at_chance:
        return _claim(9, "contradicted", f"the off-local part alone is above chance + {_pp(th.chance_margin, False)} pp",
                      stat, d.n, nums)
    verdict, reason = _directional(d, th, "greater")
    if verdict == "supported":
        reason = "off-local part alone at chance, and both parts beat the local part alone: " + reason
    elif verdict == "contradicted":
        reason = "the local part alone beats both parts together: " + reason
    else:
        reason = "off-local part alone at chance, but both − local: " + reason
    return _claim(9, verdict, reason, stat, d.n, nums)


# ---- 10: the local blocks hardly change ---------------------------------------------------------------------------
def claim_10(ev: Evidence, th: ClaimThresholds) -> Claim:
    if not [v for v in ev.of_kind("efcn") if v.t_w]:
        return _not_measured(10, "the plan has no eFCN run released after t_w = 0",
                             "add a switch time > 0 with `fc` in `targets`")
    res, bad = _analysis(ev, 10, "ablation")
    if bad:
        return bad
    # at t_w = 0 the local blocks are the random initialisation: nothing learnt to keep, so not part of the claim
    late = {r.run: max(r.local_change.values()) for r in res.runs if r.kind == "efcn" and r.t_w and r.local_change}
    at0 = {r.run: max(r.local_change.values()) for r in res.runs if r.kind == "efcn" and not r.t_w and r.local_change}
    seeds = sorted({r.seed for r in res.runs if r.run in late})
    if not late:
        return _claim(10, "not enough evidence", "no eFCN released after t_w = 0 has a local_change yet"
                      + _unfinished(ev, "efcn"), numbers={"at_t_w_0": at0})
    vals = list(late.values())
    stat = (f"largest relative change of a layer's local blocks since the switch, over {len(vals)} eFCN runs with "
            f"t_w > 0: median {np.median(vals):.3g}, mean {np.mean(vals):.3g}, largest {max(vals):.3g} "
            f"(threshold {th.local_change_max:g})" + (f"; t_w = 0 (not counted): {max(at0.values()):.3g}" if at0 else ""))
    nums = {"largest_change": late, "at_t_w_0": at0, "threshold": th.local_change_max}
    above = [r for r, x in late.items() if x > th.local_change_max]
    if not above:
        return _claim(10, "supported", f"every run's local blocks changed by at most {th.local_change_max:.0%}",
                      stat, len(seeds), nums)
    if float(np.mean(vals)) > th.local_change_max:
        return _claim(10, "contradicted", f"the mean change {np.mean(vals):.3g} exceeds {th.local_change_max:g}",
                      stat, len(seeds), nums)
    return _claim(10, "not enough evidence", f"{len(above)} of {len(vals)} runs exceed {th.local_change_max:g} but "
                  "the mean does not", stat, len(seeds), nums)


# ---- 11: interpolation: an intermediate point beats both ends ----------------------------------------------------------
def claim_11(ev: Evidence, th: ClaimThresholds) -> Claim:
    res, bad = _efcn_analysis(ev, 11, "interpolation")
    if bad:
        return bad
    alphas = np.asarray(res.alphas, dtype=float)
    inner = (alphas > 0) & (alphas < 1)
    curves = [c for c in res.curves if c.method == "linear" and c.kind == "efcn" and len(c.test_acc) == len(alphas)]
    if not curves or not inner.any():
        return _claim(11, "not enough evidence", "no linear interpolation curve of an eFCN yet"
                      + _unfinished(ev, "efcn"))
    per_run, per_seed = {}, defaultdict(list)
    for c in curves:
        acc = np.asarray(c.test_acc, dtype=float)
        per_run[c.run] = float(acc[inner].max() - max(acc[0], acc[-1]))
        per_seed[c.seed].append(per_run[c.run])
    d = paired({s: float(np.mean(v)) for s, v in per_seed.items()})
    ends = sorted({f"{c.start.label} → {c.end.label}" for c in curves})
    stat = (f"linear path {', '.join(ends)}: best interior-α test accuracy − the better end, per seed (mean over "
            f"its eFCNs): {_msd(d)}, one-sided {_p(d.p_greater)}; {sum(x > 0 for x in per_run.values())} of "
            f"{len(per_run)} curves have an interior point above both ends")
    verdict = _with(_directional(d, th, "greater"), _unfinished(ev, "efcn") if d.n < th.min_seeds else "")
    return _claim(11, *verdict, stat, d.n, {"per_run": per_run, "per_seed": d.diffs, "endpoints": ends,
                                            "p": d.p_greater})


# ---- 12: eLCN: a similar gain at about 10x less memory -----------------------------------------------------------------
def claim_12(ev: Evidence, th: ClaimThresholds) -> Claim:
    if not ev.of_kind("elcn") or not ev.of_kind("efcn"):
        return _not_measured(12, "the plan lacks " + " and ".join(
            k for k, x in (("eLCN runs", ev.of_kind("elcn")), ("eFCN runs", ev.of_kind("efcn"))) if not x),
            "put both `fc` and `lc` in `targets` (eFCN and eLCN from the same switch times)")
    res, bad = _analysis(ev, 12, "memory")
    if bad:
        return bad
    mem = {r.form: r.param_bytes for r in res.rows}
    if not mem.get("lc") or not mem.get("fc"):
        return _claim(12, "not enough evidence", "the memory analysis has no eLCN/eFCN rows")
    ratio = mem["fc"] / mem["lc"]
    e, l = _by_tw(ev.done_runs("efcn")), _by_tw(ev.done_runs("elcn"))
    per_seed: dict[int, list[float]] = defaultdict(list)
    for t in sorted(set(e) & set(l)):
        for s, x in paired(_finals(l[t]), _finals(e[t])).diffs.items():
            per_seed[s].append(x)
    d = paired({s: float(np.mean(v)) for s, v in per_seed.items()})
    lo, hi = t_interval(d, th.equivalence_level)
    m = th.equivalence_margin
    stat = (f"parameter memory eFCN / eLCN = {ratio:.1f}× (needs ≥ {th.memory_ratio_min:g}); gain difference "
            f"eLCN − eFCN at the same t_w, per seed (mean over t_w): {_msd(d)}, {th.equivalence_level:.0%} CI "
            f"[{_pp(lo)}, {_pp(hi)}] pp (similar: within ± {_pp(m, False)} pp)")
    nums = {"memory_ratio": ratio, "diff": d.diffs, "ci": [lo, hi], "margin": m}
    if ratio < th.memory_ratio_min:
        return _claim(12, "contradicted", f"the eLCN saves only {ratio:.1f}× memory", stat, d.n, nums)
    if d.n == 0:
        return _claim(12, "not enough evidence", "no seed has an eLCN and an eFCN finished at the same t_w"
                      + _unfinished(ev, "efcn", "elcn"), stat, 0, nums)
    if d.n < th.min_seeds:
        return _claim(12, "not enough evidence", _few(th, d.n) + _unfinished(ev, "efcn", "elcn"), stat, d.n, nums)
    if -m < lo and hi < m:
        return _claim(12, "supported", f"{ratio:.1f}× less memory and the gains are equivalent within ± "
                      f"{_pp(m, False)} pp ({th.equivalence_level:.0%} CI)", stat, d.n, nums)
    if lo > m or hi < -m:
        return _claim(12, "contradicted", f"the gains differ by more than {_pp(m, False)} pp (the whole "
                      f"{th.equivalence_level:.0%} CI lies outside the margin)", stat, d.n, nums)
    return _claim(12, "not enough evidence", f"the {th.equivalence_level:.0%} CI of the difference straddles the "
                  f"± {_pp(m, False)} pp margin", stat, d.n, nums)


# ---- 13: hierarchical relaxation beats the best single one --------------------------------------------------------------
def claim_13(ev: Evidence, th: ClaimThresholds) -> Claim:
    if not ev.of_kind("hier"):
        return _not_measured(13, "the plan has no hierarchical runs",
                             "add `lc>fc` to `targets` (the grid `hierarchical.t_w1` × `t_w2`)")
    best_h: dict[int, float] = {}
    best_s: dict[int, float] = {}
    for v in ev.done_runs("hier"):
        if (x := v.final("test_acc")) is not None:
            best_h[v.seed] = max(best_h.get(v.seed, -1.0), x)
    for v in ev.done_runs("efcn", "elcn"):
        if (x := v.final("test_acc")) is not None:
            best_s[v.seed] = max(best_s.get(v.seed, -1.0), x)
    d = paired(best_h, best_s)
    stat = (f"best hierarchical − best single relaxation (eFCN or eLCN over t_w), final test accuracy per seed: "
            f"{_msd(d)}, one-sided {_p(d.p_greater)}")
    verdict = _with(_directional(d, th, "greater"), _unfinished(ev, "hier", "efcn", "elcn") if d.n < th.min_seeds else "")
    return _claim(13, *verdict, stat, d.n, {"diff": d.diffs, "p": d.p_greater})


# ---- 14, 15: claims 1 and 4 for the attention runs (asked only of a plan that has them) ---------------------------
def claim_14(ev: Evidence, th: ClaimThresholds) -> Claim:
    return _no_jump(ev, th, 14, ("attn",), "attention")


def claim_15(ev: Evidence, th: ClaimThresholds) -> Claim:
    return _late_beats_cnn(ev, th, 15, "attn", "attention")


# ---- 16: the automatic switch time is not worse than the best fixed one (asked only of a plan with auto runs) ------
def claim_16(ev: Evidence, th: ClaimThresholds) -> Claim:
    auto = ev.auto_runs("efcn")
    if not auto:
        return _not_measured(16, "the plan's automatic switch times have no eFCN runs", _measure_efcn(ev))
    fixed = _by_tw(ev.done_runs("efcn"))
    if not ev.of_kind("efcn"):
        return _not_measured(16, "the plan has no eFCN runs at fixed switch times to compare with",
                             "list fixed switch times beside `auto` in `switch_times`")
    rule = auto[0].auto  # the first rule in plan order; another rule's runs are left out (named in the statistic)
    others = sorted({v.auto for v in auto} - {rule})
    mine = _finals([v for v in auto if v.auto == rule and v.done])
    chosen = {v.seed: v.t_w for v in auto if v.auto == rule and v.t_w is not None}
    means = {t: float(np.mean(list(f.values()))) for t, runs in fixed.items() if (f := _finals(runs))}
    if not mine or not means:
        return _claim(16, "not enough evidence", "no automatic-t_w eFCN and fixed-t_w eFCN finished yet"
                      + _left(auto, "automatic-t_w efcn") + _unfinished(ev, "efcn"))
    best = max(means, key=means.get)  # chosen on these very runs: favours the fixed side, so a pass is conservative
    d = paired(mine, _finals(fixed[best]))
    lo, hi = t_interval(d, th.equivalence_level)
    m = th.equivalence_margin
    per_seed = ", ".join(f"s{s}: {_t(t)}" for s, t in sorted(chosen.items()))
    stat = (f"eFCN at t_w = auto ({rule}; chosen per seed: {per_seed}) − eFCN at the best fixed t_w ({_t(best)}, by "
            f"mean final test accuracy over seeds), final test accuracy per seed: {_msd(d)}, "
            f"{th.equivalence_level:.0%} CI [{_pp(lo)}, {_pp(hi)}] pp (not worse: lower end above −{_pp(m, False)} pp)"
            + (f"; rules left out: {', '.join(others)}" if others else ""))
    nums = {"rule": rule, "chosen_t_w": chosen, "best_fixed_t_w": best, "diff": d.diffs, "ci": [lo, hi], "margin": m}
    if d.n == 0:
        return _claim(16, "not enough evidence", f"no seed has both the automatic-t_w eFCN and the eFCN at t_w = "
                      f"{_t(best)} finished" + _left(auto, "automatic-t_w efcn"), stat, 0, nums)
    if d.n < th.min_seeds:
        return _claim(16, "not enough evidence", _few(th, d.n) + _left(auto, "automatic-t_w efcn")
                      + _unfinished(ev, "efcn"), stat, d.n, nums)
    if lo > -m:
        return _claim(16, "supported", f"not worse than the best fixed t_w ({_t(best)}) by more than "
                      f"{_pp(m, False)} pp ({th.equivalence_level:.0%} CI)", stat, d.n, nums)
    if hi < -m:
        return _claim(16, "contradicted", f"worse than the best fixed t_w ({_t(best)}) by more than {_pp(m, False)} pp "
                      f"(the whole {th.equivalence_level:.0%} CI below −{_pp(m, False)} pp)", stat, d.n, nums)
    return _claim(16, "not enough evidence", f"the {th.equivalence_level:.0%} CI of the difference reaches below "
                  f"−{_pp(m, False)} pp", stat, d.n, nums)


RULES: dict[int, Callable[[Evidence, ClaimThresholds], Claim]] = {
    1: claim_1, 2: claim_2, 3: claim_3, 4: claim_4, 5: claim_5, 6: claim_6, 7: claim_7, 8: claim_8, 9: claim_9,
    10: claim_10, 11: claim_11, 12: claim_12, 13: claim_13, 14: claim_14, 15: claim_15, 16: claim_16,
}
