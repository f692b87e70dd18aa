"""The report's sections: each turns the experiment's files into figures and tables, or says what is missing.

Every builder takes the experiment's :class:`~archrelax.store.ExperimentView` and a :class:`Ctx` (where figures
go) and returns a :class:`~archrelax.report.html.Section`; none of them raises on missing data. A section drawn
from one analysis result is declared with :func:`_from_analysis`, which fetches the result and says when it
is missing.
"""
from __future__ import annotations

import functools
import math
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Callable

import numpy as np

from archrelax.store import STATES, ExperimentView, RunView
from archrelax.store import results as R
from archrelax.store.plan import LATTICE_KINDS, PAPER_KINDS

from . import figures as F
from .html import Section, figure, fmt, pre, table

NAME = F.REF_NAME


@dataclass
class Ctx:
    exp: ExperimentView
    fig_dir: Path  # report/fig
    written: list[Path] = field(default_factory=list)

    def figure(self, sec: Section, name: str, caption: str, draw: Callable[[Path], Path]) -> None:
        """Draw one figure into report/fig/<name>.png and add it to the section; a failure becomes a note."""
        path = self.fig_dir / f"{name}.png"
        try:
            draw(path)
        except Exception as e:  # a figure must never take the whole report down
            sec.notes.append(f"figure {name!r} could not be drawn: {type(e).__name__}: {e}")
            return
        self.written.append(path)
        sec.body.append(figure(f"fig/{path.name}", caption))


def _tw_text(r: RunView) -> str | None:
    """A run's switch time as the tables show it: "4", or "auto=4" where a rule chose it ("auto=?" until then)."""
    if getattr(r, "auto", None):
        return f"auto={r.t_w:g}" if r.t_w is not None else "auto=?"
    return None if r.t_w is None else f"{r.t_w:g}"


def _label(r: RunView | R.RunTag, seed: bool = True) -> str:
    """"eFCN t_w=4 s0" ("t_w=auto=4" where a switch rule chose it): a run of the plan or a per-run record of an
    analysis (both carry these attributes)."""
    text = NAME.get(r.kind, str(r.kind))
    if r.t_w is not None:
        tw = _tw_text(r) if isinstance(r, RunView) else f"{r.t_w:g}"
        text += f" t_w={tw}" + (f",{r.t_w2:g}" if r.t_w2 is not None else "")
    return text + (f" s{r.seed}" if seed and r.seed is not None else "")


def _not_done(exp: ExperimentView, *kinds: str) -> list[str]:
    """One line per planned run of these kinds that has not finished, with its state or error."""
    out = []
    for r in exp.runs:
        if r.kind in kinds and r.status != "done":
            why = f": {str(r.error).strip().splitlines()[-1][:160]}" if r.error else ""
            out.append(f"{_label(r)} ({r.id}) is {r.status}{why}")
    return out


def _analysis(exp: ExperimentView, name: str, sec: Section) -> Any:
    """The cached analysis result, its skipped runs added to the section's notes; None (and a note) if absent."""
    data = exp.results.get(name)
    if data is None:
        sec.notes.append(f"analysis/{name}.json is missing: run `archrelax analyse {exp.path}` or "
                         "`archrelax report` without --no-analyse")
        return None
    if data.error:  # the analysis failed as a whole; its file says why
        sec.notes.append(f"{name} analysis failed: {data.error.strip()[-400:]}")
    for m in data.missing:
        sec.notes.append(f"{name}: skipped run {m.run}: {m.reason}")
    return data


def _intro(draw: Callable[..., None]) -> str:
    """A builder's docstring as its section's intro: one paragraph."""
    return " ".join((draw.__doc__ or "").split())


def _section(sid: str, title: str) -> Callable[[Callable[..., None]], Callable[..., Section]]:
    """Declares a section builder: ``draw(exp, ctx, sec, *args)`` fills the section ``sid`` made here (its
    docstring is the section's intro); the builder, called ``(exp, ctx, *args)``, returns it."""
    def wrap(draw: Callable[..., None]) -> Callable[..., Section]:
        @functools.wraps(draw)
        def build(exp: ExperimentView, ctx: Ctx, *args: Any) -> Section:
            sec = Section(sid, title, _intro(draw))
            draw(exp, ctx, sec, *args)
            return sec
        return build
    return wrap


def _from_analysis(title: str) -> Callable[[Callable[..., None]], Callable[[ExperimentView, Ctx], Section]]:
    """Declares the section of the analysis a builder is named after: ``draw(exp, ctx, sec, result)`` fills
    it; the result is fetched first (its skipped runs noted), and a missing one leaves the section with a note
    saying how to compute it."""
    def wrap(draw: Callable[..., None]) -> Callable[[ExperimentView, Ctx], Section]:
        @_section(draw.__name__, title)
        @functools.wraps(draw)
        def fill(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
            data = _analysis(exp, draw.__name__, sec)
            if data is not None:
                draw(exp, ctx, sec, data)
        return fill
    return wrap


def problems(exp: ExperimentView) -> list[str]:
    """What the page cannot show, in words: a missing spec, the runs' unreadable files, unreadable analyses."""
    out = ([] if exp.spec_text is not None else ["spec.yaml is missing"]) + exp.problems
    return out + [f"analysis/{name}.json: unreadable ({e})" for name, e in exp.result_problems.items()]


def _curve(r: RunView, keys: tuple[str, ...]) -> F.Curve | None:
    epoch, vals = None, {}
    for k in keys:
        x, y = r.series(k)
        if epoch is None or len(x) == len(epoch):
            epoch, vals[k] = epoch or x, y
    if not epoch:
        return None
    return F.Curve(kind=r.kind, seed=r.seed, t_w=r.switch if r.kind in PAPER_KINDS else None,
                   epoch=epoch, values=vals)


# --------------------------------------------------------------------------------------------- sections
@_section("overview", "Overview")
def overview(exp: ExperimentView, ctx: Ctx, sec: Section, analysis_note: str) -> None:
    """What this experiment holds so far, by kind of run and state."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in exp.runs:
        counts[r.kind][r.status] += 1
    present = {s for c in counts.values() for s in c}
    states = [s for s in STATES if s in present] + sorted(present - set(STATES))  # e.g. "corrupt" last
    rows = [[NAME.get(k, k)] + [c.get(s, 0) for s in states] + [sum(c.values())] for k, c in counts.items()]
    if rows:
        sec.body.append(table(["kind"] + states + ["total"], rows))
    sec.body.append(f'<p>Analyses: {escape(analysis_note)}</p>')
    sec.notes += problems(exp)
    if not exp.runs:
        sec.notes.append("no runs found in plan.json or runs/")


def training(exp: ExperimentView, ctx: Ctx, relaxed: str = "efcn") -> Section:
    refs = ("cnn", "fcn") if relaxed == "efcn" else ("cnn", "lcn")
    name = NAME[relaxed]
    kinds = {r.kind for r in exp.runs}
    # the title names what the plan holds: no "vanilla FCN" on a page whose spec asked for no baseline
    parts = ["CNN"] + [f"vanilla {name[1:]}" for k in refs[1:] if k in kinds] + ([f"{name}(t_w)"] if relaxed in kinds
                                                                              else [])
    title = "Training curves: " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    sec = Section(f"curves-{relaxed}", title,
                  "Training loss and test accuracy against time" + (
                      f". Each {name}(t_w) starts from the CNN's snapshot at t_w (marked ●) on the CNN's clock"
                      if relaxed in kinds else "") + "; one line per seed.")
    curves, none = [], []
    for r in exp.runs:
        if r.kind in refs + (relaxed,):
            c = _curve(r, ("train_loss", "test_acc"))
            (curves.append(c) if c else none.append(f"{_label(r)} ({r.id}): no metrics yet ({r.status})"))
    if any(c.kind == "cnn" for c in curves) or any(c.t_w is not None for c in curves):
        ctx.figure(sec, f"curves_{relaxed}", f"training loss (nats) and test accuracy (%) against epochs, "
                   f"{name} coloured by switch time", lambda p: F.training_curves(
                       curves, p, title=f"CNN, vanilla {name[1:]} and {name}(t_w)", relaxed_kind=relaxed))
    sec.notes += none
    if not any(r.kind == "cnn" for r in exp.runs):
        sec.notes.append("the plan has no CNN run")
    return sec


def final_vs_tw(exp: ExperimentView, ctx: Ctx, relaxed: str = "efcn") -> Section:
    name = NAME[relaxed]
    refs = ("cnn", "fcn") if relaxed == "efcn" else ("cnn", "lcn", "fcn")
    sec = Section(f"final-{relaxed}", f"Final test accuracy of {name}(t_w) against the switch time",
                  "Mean ± std over seeds of the final test accuracy; reference runs as horizontal lines "
                  "with their ± std band; a switch time chosen by a rule during the CNN's training "
                  "(switch_times: auto) as a star per seed at the time it chose. Finished runs only.")
    points: dict[float, list[float]] = defaultdict(list)
    auto: dict[str, list[tuple[float, float]]] = defaultdict(list)  # rule -> [(chosen t_w, final test acc)]
    for r in exp.done_runs(relaxed):
        if r.t_w is not None and r.final("test_acc") is not None:
            if r.auto:
                auto[r.auto].append((r.t_w, r.final("test_acc")))
            else:
                points[r.t_w].append(r.final("test_acc"))
    ref_vals = {k: [v for r in exp.done_runs(k) if (v := r.final("test_acc")) is not None]
                for k in refs}
    if points or auto or any(ref_vals.values()):
        ctx.figure(sec, f"final_{relaxed}", f"final test accuracy (%) against t_w (epochs) for {name}"
                   + ("; ★ = the switch time chosen by the rule" if auto else ""),
                   lambda p: F.final_vs_tw(points, ref_vals, p, title=f"final test accuracy: {name}(t_w)",
                                           label=f"{name}(t_w)", auto=auto))
        cnn = ref_vals.get("cnn") or []
        base = float(np.mean(cnn)) if cnn else None
        gain = lambda v: f"{v.mean() - 100 * base:+.2f}" if base is not None else None  # noqa: E731
        rows = []
        for t in sorted(points):
            v = 100 * np.asarray(points[t])
            rows.append([f"{t:g}", len(v), _mean_std(v), gain(v)])
        for rule, pts in auto.items():
            v = 100 * np.asarray([a for _, a in pts])
            chosen = ", ".join(f"{t:g}" for t in sorted({t for t, _ in pts}))
            rows.append([f"auto={chosen} ({rule})", len(v), _mean_std(v), gain(v)])
        for k, vals in ref_vals.items():
            if vals:
                v = 100 * np.asarray(vals)
                rows.append([NAME[k], len(v), _mean_std(v), gain(v)])
        sec.body.append(table(["t_w (epochs) / run", "seeds", "final test accuracy (%): mean ± std over seeds",
                               "gain over CNN (% points)"], rows))
    sec.notes += _not_done(exp, relaxed, *refs)
    return sec


@_section("hierarchical", "Hierarchical relaxation: (t_w1, t_w2) heatmap")
def hierarchical(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """CNN → eLCN at t_w1, then eLCN → eFCN at t_w2; cell = mean final test accuracy over seeds."""
    cells: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in exp.done_runs("hier"):
        if r.t_w is not None and r.t_w2 is not None and (v := r.final("test_acc")) is not None:
            cells[(r.t_w, r.t_w2)].append(v)
    if cells:
        tw1 = sorted({a for a, _ in cells} | {r.t_w for r in exp.of_kind("hier") if r.t_w is not None})
        tw2 = sorted({b for _, b in cells} | {r.t_w2 for r in exp.of_kind("hier") if r.t_w2 is not None})
        acc = np.full((len(tw1), len(tw2)), np.nan)
        for (a, b), v in cells.items():
            acc[tw1.index(a), tw2.index(b)] = float(np.mean(v))
        cnn = [v for r in exp.done_runs("cnn") if (v := r.final("test_acc")) is not None]
        ctx.figure(sec, "hierarchical", "mean final test accuracy (%) of hierarchical runs over (t_w1, t_w2)",
                   lambda p: F.heatmap(tw1, tw2, acc, p, title="CNN→eLCN→eFCN final test accuracy",
                                       cnn_acc=float(np.mean(cnn)) if cnn else None))
    sec.notes += _not_done(exp, "hier")


@_from_analysis("Distance from the CNN subspace: δ(t) and gain against δ")
def distance(exp: ExperimentView, ctx: Ctx, sec: Section, data: R.DistanceResult) -> None:
    """δ = ‖off-local weights‖ / ‖all weights‖ (0 on the CNN subspace; always 0 for an eLCN). CNN distance = ‖θ −
    P_CNN θ‖ / ‖θ‖, which also counts local weights that stopped being shared. Gain = final test accuracy minus
    that of the CNN the run branched from."""
    curves = [F.Curve(kind=c.kind, seed=c.seed, t_w=c.switch, epoch=c.epoch,
                      values={"offlocal_ratio": c.offlocal_ratio, "cnn_distance": c.cnn_distance})
              for c in data.curves if c.epoch]
    gains = [g for g in data.gain if g.gain is not None]
    if curves or gains:
        ctx.figure(sec, "distance", "δ(t) and CNN distance against epochs per run; gain (% points) against "
                   "each final distance",
                   lambda p: F.distance_figure(curves, gains, p, title="escape from the CNN subspace"))
    if gains:
        sec.body.append(table(["run", "t_w", "seed", "final δ", "final CNN distance", "gain (% points)"],
                              [[_label(g), g.t_w, g.seed, g.final_offlocal_ratio, g.final_cnn_distance,
                                f"{100 * g.gain:+.2f}"] for g in gains]))
    else:
        sec.notes.append("no finished relaxed run with a final δ yet")


def _dense_sharpness(exp: ExperimentView) -> list[RunView]:
    """The CNNs whose metrics rows carry λ_max along training (``sharpness_products``)."""
    return [r for r in exp.runs if r.kind == "cnn" and any("lambda_max" in m for m in r.metrics)]


@_section("sharpness", "Sharpness: along the CNN and at the end of every run")
def sharpness(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """Top eigenvalue of the training-loss Hessian (Lanczos on Hessian-vector products; each with its residual
    bound ‖Hv − λv‖, within which H has an eigenvalue) and an estimate of its trace (Hutchinson off the Lanczos
    basis) with its standard error, on a fixed training subset. A value that did not reach the tolerance is drawn
    hollow and left out of the means and the claims. The loss is the mean cross-entropy in nats, so both are
    curvatures in nats per squared unit of parameter (nats/param²): they compare runs of one parametrisation.
    A CNN trained with ``sharpness_products`` also has λ_max at every evaluation (a few products warm-started
    from the previous evaluation's eigenvector), drawn first."""
    dense = _dense_sharpness(exp)
    if dense:
        _sharpness_curve(exp, ctx, sec, dense, exp.results.get("sharpness"))
    data = _analysis(exp, "sharpness", sec)
    if data is not None:
        _sharpness_points(exp, ctx, sec, data)


def _sharpness_curve(exp: ExperimentView, ctx: Ctx, sec: Section, dense: list[RunView],
                     data: R.SharpnessResult | None) -> None:
    curves = []
    for r in dense:
        rows = [m for m in r.metrics if m.get("lambda_max") is not None]
        ep = [float(m.get("global_epoch", m.get("epoch", 0.0))) for m in rows]
        curves.append((r.seed, ep, [float(m["lambda_max"]) for m in rows],
                       [bool(m.get("lambda_max_converged")) and math.isfinite(m["lambda_max"]) for m in rows]))
        bad = [fmt(e) for e, ok in zip(ep, curves[-1][3]) if not ok]
        if bad:
            sec.notes.append(f"{_label(r)}: λ_max along training not converged at {len(bad)} of {len(ep)} "
                             f"evaluations (epochs {', '.join(bad[:8])}{', ...' if len(bad) > 8 else ''})")
    cfg = _config(dense[0])
    snaps = None
    if data is not None:
        along: dict[float, list[float]] = defaultdict(list)
        for p in data.points:
            if p.kind == "cnn" and p.where == "snapshot" and p.eigenvalues and p.lambda_max_converged:
                along[p.epoch].append(p.lambda_max)
        snaps = (sorted(along), [float(np.mean(along[e])) for e in sorted(along)])
    switches = sorted({r.t_w for r in exp.runs if r.kind in ("efcn", "elcn") and r.t_w is not None})
    how = (f", from {cfg['sharpness_products']} Hessian-vector products on {cfg['sharpness_samples']} training "
           "images (a fixed subset)" if cfg.get("sharpness_products") and cfg.get("sharpness_samples") else "")
    caption = (f"λ_max ({CURVATURE}) of the CNN at every evaluation{how}; dotted lines: switch times; hollow: not "
               "converged" + ("; squares: the snapshot analysis" if snaps and snaps[0] else ""))
    ctx.figure(sec, "sharpness_cnn_dense", caption, lambda p: F.sharpness_curve(
        curves, switches, p, title="sharpness along the CNN's training", snapshots=snaps))


def _sharpness_points(exp: ExperimentView, ctx: Ctx, sec: Section, data: R.SharpnessResult) -> None:
    sec.body.append(f"<p>{escape(_subset(data.params, 'sharpness_samples', 'training'))}.</p>")
    pts = [p for p in data.points if p.eigenvalues]
    for p in pts:
        if not p.lambda_max_converged:
            sec.notes.append(f"{_label(p)} at epoch {fmt(p.epoch)}: eigenvalue not converged "
                             f"(residual {fmt((p.eig_residual or [None])[0])})")
    along: dict[float, list[R.SharpnessPoint]] = defaultdict(list)
    for p in pts:
        if p.kind == "cnn":
            along[p.epoch].append(p)
    if along:
        ep = sorted(along)
        eig, eig_err, eig_ok = [], [], []
        for e in ep:
            good = [p for p in along[e] if p.lambda_max_converged]
            use = good or along[e]
            eig.append(float(np.mean([p.lambda_max for p in use])))
            # seeds' spread when there are several, else the value's own residual bound
            eig_err.append(float(np.std([p.lambda_max for p in use])) if len(use) > 1
                           else float(np.nan_to_num(_bound(use[0]))))
            eig_ok.append(bool(good))
        tr = [float(np.mean([p.trace for p in along[e]])) for e in ep]
        # seeds' spread when there are several, else the estimator's own standard error
        err = [float(np.std([p.trace for p in along[e]])) if len(along[e]) > 1
               else float(np.nan_to_num(along[e][0].trace_stderr)) for e in ep]
        switches = sorted({r.t_w for r in exp.runs if r.kind in ("efcn", "elcn") and r.t_w is not None})
        ctx.figure(sec, "sharpness_cnn", f"λ_max and Hessian trace ({CURVATURE}) along the CNN's trajectory; "
                   "dotted lines: switch times; hollow: not converged", lambda p: F.sharpness_along(
                       ep, eig, tr, err, switches, p, title="sharpness along the CNN (mean over seeds)",
                       eig_err=eig_err, eig_ok=eig_ok))
    else:
        sec.notes.append("no CNN sharpness points (no CNN snapshots analysed yet)")
    ends = [p for p in pts if p.where == "final"]
    auto_ids = {r.id for r in exp.runs if r.auto}
    relaxed: dict[str, dict[float, list[R.SharpnessPoint]]] = defaultdict(lambda: defaultdict(list))
    refs: dict[str, list[R.SharpnessPoint]] = defaultdict(list)
    for p in ends:
        if p.kind in ("efcn", "elcn") and p.t_w is not None:
            if p.run not in auto_ids:  # a fixed t_w's runs: an automatic one is the final-accuracy section's star
                relaxed[p.kind][p.t_w].append(p)
        elif p.kind in ("cnn", "fcn", "lcn"):
            refs[p.kind].append(p)
    if relaxed or refs:
        for key, lab in (("eig", f"top Hessian eigenvalue λ_max ({CURVATURE})"), ("trace", f"Hessian trace ({CURVATURE})")):
            val = (lambda p: p.lambda_max) if key == "eig" else (lambda p: p.trace)
            ok = (lambda p: p.lambda_max_converged) if key == "eig" else (lambda p: True)
            ctx.figure(sec, f"sharpness_end_{key}", f"{lab} at the end of each run against t_w"
                       + ("; hollow: not converged, left out" if key == "eig" else ""),
                       lambda path, val=val, lab=lab, ok=ok: F.sharpness_ends(
                           {k: {t: [val(p) for p in v if ok(p)] for t, v in d.items()} for k, d in relaxed.items()},
                           {k: [val(p) for p in v if ok(p)] for k, v in refs.items()}, path,
                           title=f"{lab.split(' (')[0]} at the end of training", ylabel=lab,
                           unconverged={k: [(t, val(p)) for t, v in d.items() for p in v if not ok(p)]
                                        for k, d in relaxed.items()}))
        sec.body.append(table(["run", "epoch", "train loss on the subset (nats)", f"λ_max ({CURVATURE})",
                               f"± bound ({CURVATURE})", f"trace ({CURVATURE})", f"± stderr ({CURVATURE})", "converged"],
                              [[_label(p), p.epoch, p.loss, p.lambda_max, _bound(p), p.trace, p.trace_stderr,
                                p.lambda_max_converged] for p in ends]))
    else:
        sec.notes.append("no end-of-run sharpness points yet")
    blocks = [(p, b) for p in pts for b in p.blocks]
    if blocks:
        sec.body.append(table(["run", "epoch", "layer", "parameters", f"λ_max of the layer's block ({CURVATURE})",
                               "relative residual", "converged"],
                              [[_label(p), p.epoch, b.layer, b.params, b.eigenvalue, b.residual, b.converged]
                               for p, b in blocks]))


def _bound(p: R.SharpnessPoint) -> float | None:
    """The top eigenvalue's residual bound (nats/param²): stored, or from the relative residual of older records."""
    if p.eig_bound:
        return p.eig_bound[0]
    return abs(p.lambda_max) * p.eig_residual[0] if p.eig_residual else None


@_from_analysis("Local versus off-local ablation")
def ablation(exp: ExperimentView, ctx: Ctx, sec: Section, data: R.AblationResult) -> None:
    """Test accuracy of each final relaxed network with both parts, with the local part only (its CNN-subspace
    projection's support) and with the off-local part only; and the relative change of the local blocks since the
    switch."""
    runs = data.runs
    if not runs:
        sec.notes.append("no finished relaxed run ablated yet")
        return
    groups: dict[str, list[R.AblationRecord]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r.kind, r.t_w or 0.0, r.t_w2 or 0.0)):
        groups[_label(r, seed=False)].append(r)
    parts = ("both", "local", "offlocal")
    acc = {p: [float(np.mean([getattr(r.test_acc, p) for r in g])) for g in groups.values()] for p in parts}
    err = {p: [float(np.std([getattr(r.test_acc, p) for r in g])) for g in groups.values()] for p in parts}
    where = _subset(data.params, "eval_test_samples", "test")
    sec.body.append(f"<p>{escape(where)}: \"both parts\" is the final network itself, so it differs from the "
                    "run's final test accuracy (the whole test set, last column) by the subset alone.</p>")
    seeds = max(len(g) for g in groups.values())
    ctx.figure(sec, "ablation", f"test accuracy (%) of both / local-only / off-local-only parts, "
               f"{'mean ± std over seeds' if seeds > 1 else 'one seed'}; {where}",
               lambda p: F.ablation_bars(list(groups), acc, err, p, title="ablation of the final relaxed networks"))
    final = {v.id: v.final("test_acc") for v in exp.runs}
    rows = [[_label(r)] + [100 * getattr(r.test_acc, p) for p in parts]
            + [None if final.get(r.run) is None else 100 * final[r.run]]
            + ["; ".join(f"{k}: {v:.3g}" for k, v in r.local_change.items()) or "—"] for r in runs]
    sec.body.append(table(["run", "both (%, subset)", "local only (%, subset)", "off-local only (%, subset)",
                           "final test accuracy (%, whole test set)", "local-block change since switch (relative)"],
                          rows))


@_from_analysis("What the off-local weights learn: templates")
def templates(exp: ExperimentView, ctx: Ctx, sec: Section, data: R.TemplatesResult) -> None:
    """Weights of chosen hidden units of the first relaxed layer to the input, shown as images (min-max normalised
    per unit): off-local weights of eFCNs next to the same units of the vanilla FCN."""
    npz = exp.path / "analysis" / (data.arrays or "templates.npz")
    entries = data.runs
    if not entries:
        sec.notes.append("no run with templates yet")
        return
    if not npz.is_file():
        sec.notes.append(f"analysis/{npz.name} is missing")
        return
    order = {"efcn": 0, "hier": 1, "elcn": 2, "fcn": 3}
    entries = sorted(entries, key=lambda e: (order.get(e.kind, 9), e.t_w or 0.0))
    rows = []
    with np.load(npz, allow_pickle=False) as arrays:
        for e in entries:
            if e.key in arrays.files:
                rows.append((_label(e), arrays[e.key], e.units))
            else:
                sec.notes.append(f"{npz.name} has no array {e.key!r} for {_label(e)}")
    layer = data.layer or "?"
    if rows:
        ctx.figure(sec, "templates", f"unit templates of layer {layer} (rows: runs; columns: units)",
                   lambda p: F.template_grid(rows[:8], p, title=f"templates of layer {layer}"))
        if len(rows) > 8:
            sec.notes.append(f"{len(rows) - 8} more template rows not shown")


@_from_analysis("Interpolation between the embedded CNN and the eFCN")
def interpolation(exp: ExperimentView, ctx: Ctx, sec: Section, data: R.InterpolationResult) -> None:
    """Loss and accuracy along α from the start point (α = 0) to the end point (α = 1): linear and norm-preserving
    (curvilinear) in weight space, and mixing of softmax outputs."""
    alphas = data.alphas
    curves = [{"label": f"{_label(c)}: {c.start.label}→{c.end.label}", "method": c.method,
               "train_loss": c.train_loss, "train_acc": c.train_acc, "test_loss": c.test_loss, "test_acc": c.test_acc}
              for c in data.curves]
    labels = list(dict.fromkeys(c["label"] for c in curves))
    if len(labels) > 10:
        sec.notes.append(f"{len(labels) - 10} more interpolation curves not drawn")
        curves = [c for c in curves if c["label"] in labels[:10]]
    if curves and alphas:
        sizes = (f"{_subset(data.params, 'eval_train_samples', 'training')}; "
                 f"{_subset(data.params, 'eval_test_samples', 'test')}")
        ctx.figure(sec, "interpolation", f"loss (nats) and accuracy (%) along α; train solid, test dashed. {sizes}",
                   lambda p: F.interpolation_figure(alphas, curves, p, title="interpolation in weight and output space"))
    else:
        sec.notes.append("no interpolation curves yet")


# λ_max and the trace are second derivatives of the mean cross-entropy (nats) in the parameters
CURVATURE = "nats/param²"


def _subset(params: dict[str, Any], key: str, split: str) -> str:
    """"on 500 test images at most (a fixed subset, eval_test_samples, seed 0)", from an analysis result's params."""
    n = params.get(key)
    if not isinstance(n, int):
        return f"on a fixed subset of the {split} images (its size was not recorded)"
    seed = params.get("seed")
    return (f"on {n:,} {split} images at most (a fixed subset: {key}" + (f", seed {seed}" if seed is not None else "")
            + ")")


def _bytes(n: Any) -> str:
    return f"{n / 2**20:,.2f} MiB" if isinstance(n, (int, float)) else fmt(n)


@_from_analysis("Memory: CNN, eLCN and eFCN")
def memory(exp: ExperimentView, ctx: Ctx, sec: Section, data: R.MemoryResult) -> None:
    """Parameters and optimiser state of the experiment's model in each form (1 MiB = 2^20 bytes)."""
    rows = data.rows
    if not rows:
        sec.notes.append("memory.json has no rows")
        return
    opts = list(dict.fromkeys(k for r in rows for k in r.optimizer_bytes))
    names = {"cnn": "CNN", "lc": "eLCN", "fc": "eFCN", "fc_ref": "eFCN as in the paper's code (padding columns kept)"}
    sec.body.append(f"<p>model: <code>{escape(str(data.model or '?'))}</code>, input shape "
                    f"{escape(str(data.input_shape or '?'))}</p>")
    sec.body.append(table(["form", "parameters", "parameter memory"] + [f"{o} state" for o in opts],
                          [[names.get(r.form, r.form), f"{r.params:,}", _bytes(r.param_bytes)]
                           + [_bytes(r.optimizer_bytes.get(o)) for o in opts] for r in rows]))


@_section("runs", "Runs: status")
def runs_table(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """Every planned run, its state, last epoch and final metrics; errors of failed runs below the table."""
    rows, errors = [], []
    for r in exp.runs:
        cls = escape(r.status)
        acc = r.final("test_acc")
        rows.append([r.id, NAME.get(r.kind, r.kind), r.seed, _tw_text(r), r.t_w2,
                     f'<span class="status-{cls}">{cls}</span>', r.epoch, r.final("train_loss"),
                     None if acc is None else 100 * acc])
        if r.error:
            errors.append(f"<details><summary>{escape(r.id)}: {escape(str(r.error).strip().splitlines()[-1][:200])}"
                          f"</summary>{pre(str(r.error))}</details>")
    if rows:
        sec.body.append(table(["id", "kind", "seed", "t_w", "t_w2", "status", "epoch",
                               "final train loss (nats)", "final test accuracy (%)"], rows, raw=(5,)))
    sec.body += errors
    if not rows:
        sec.notes.append("no runs found")


def spec(exp: ExperimentView, ctx: Ctx) -> Section:
    sec = Section("spec", "Experiment spec", f"The resolved spec.yaml of {exp.path}.")
    if exp.spec_text is not None:
        sec.body.append(pre(exp.spec_text))
    else:
        sec.notes.append("spec.yaml is missing")
    return sec


def analysis_error(exc: BaseException) -> str:
    """Short text for a failed analysis pass, with the innermost frames."""
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(tb[-3:]).strip()


# ---- the lattice: the corners between the CNN and the eFCN, and the soft releases ---------------------------


def _config(r: RunView) -> dict[str, Any]:
    """The run's config: the plan's (for a run folder plan.json does not list, its config.json, or {})."""
    return dict(r.run.config)


def _soft_label(cfg: dict[str, Any]) -> str:
    toward = cfg.get("soft_toward", "cnn")
    return (f"λ={float(cfg.get('soft_lambda') or 0):g} {cfg.get('soft_schedule', 'const')}"
            + (f" toward {toward}" if toward != "cnn" else ""))


def _corner(exp: ExperimentView, r: RunView) -> tuple[tuple, str, str | None] | None:
    """(sort key, label, memory form) of a run at a corner of the lattice (or a soft run); None otherwise."""
    if r.kind not in LATTICE_KINDS:
        return None
    cfg = _config(r)
    relax = cfg.get("relax") or {"elcn": "lc", "efcn": "fc", "cont": "cnn"}.get(r.kind)  # None: target unknown
    soft = float(cfg.get("soft_lambda") or 0) > 0
    if r.kind == "soft":
        return (5, str(relax), _soft_label(cfg)), f"soft {relax or ''}: {_soft_label(cfg)}", relax
    key, label, form = {
        "cont": ((0, ""), "CNN continued", "cnn"),
        "wide": ((1, str(relax)), f"locality released ({relax or 'wide'})", relax),
        "elcn": ((2, ""), "sharing released (eLCN)", "lc"),
        "tiled": ((3, str(relax)), f"sharing released in tiles ({relax or 'tiled'})", relax),
        "efcn": ((4, ""), "both released (eFCN)", "fc"),
        "attn": ((6, str(relax)), f"offsets released ({relax or 'attn'})", relax),
    }[r.kind]
    return ((*key, _soft_label(cfg)), f"{label}, soft {_soft_label(cfg)}", form) if soft else (key, label, form)


def _lattice_points(exp: ExperimentView
                    ) -> tuple[list[str], dict[str, dict[float, list[float]]], dict[str, str | None]]:
    """Corner labels in lattice order, {label: {t_w: [final test acc of finished runs]}}, {label: memory form}."""
    keyed: dict[str, tuple] = {}
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    forms: dict[str, str | None] = {}
    for r in exp.runs:
        c = _corner(exp, r)
        if c is None or r.t_w is None or r.auto:  # fixed times only: an auto run would count as one more seed
            continue
        key, label, form = c
        keyed[label], forms[label] = key, form
        if r.status == "done" and (v := r.final("test_acc")) is not None:
            points[label][r.t_w].append(v)
    labels = sorted(keyed, key=lambda k: keyed[k])
    return labels, points, forms


def _mean_std(v: np.ndarray) -> str:
    """"66.00 ± 0.35" over several seeds; one seed's value alone (a spread of one value is no spread)."""
    return f"{v[0]:.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std():.2f}"


def _cell(vals: list[float] | None, scale: float = 100.0) -> str:
    """"66.00 ± 0.35 (2)": mean ± std over seeds (number of seeds); "81.10 (1 seed)" for one."""
    if not vals:
        return "—"
    v = scale * np.asarray(vals)
    return f"{_mean_std(v)} ({len(v)})" if len(v) > 1 else f"{_mean_std(v)} (1 seed)"


@_section("lattice", "The lattice: every corner at every switch time")
def lattice(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """Final test accuracy (%) of each corner continued from the CNN's snapshot at t_w: the CNN itself, locality
    released (wide conv), sharing released (eLCN; in tiles: tiled conv), both released (eFCN), and the soft
    releases; mean ± std over seeds (number of seeds). Finished runs only. Last row: the parameter memory of each
    corner (memory analysis; 1 MiB = 2^20 bytes)."""
    labels, points, forms = _lattice_points(exp)
    if not labels:
        sec.notes.append("the plan has no lattice runs (spec targets cnn, wide:K, wide:full, lc, tiled:T, fc, or a "
                         "soft section)")
        return
    mem_rows = {}
    data: R.MemoryResult | None = exp.results.get("memory")
    if data is None:
        sec.notes.append("memory: analysis/memory.json is missing (add 'memory' to the spec's analyses, or run "
                         f"`archrelax analyse {exp.path}`)")
    else:
        mem_rows = {row.form: row.param_bytes for row in data.rows}
        for label in labels:
            if forms[label] is None:
                sec.notes.append(f"memory: the target of {label} is unknown (its config is not in plan.json)")
            elif forms[label] not in mem_rows:
                sec.notes.append(f"memory: {forms[label]!r} ({label}) not in analysis/memory.json; rerun the memory "
                                 "analysis")
    memory = {label: mem_rows.get(forms[label]) for label in labels}
    tws = sorted({t for d in points.values() for t in d} | {r.t_w for r in exp.runs if _corner(exp, r) and
                                                              r.t_w is not None})
    rows = [[f"{t:g}"] + [_cell(points[label].get(t)) for label in labels] for t in tws]
    rows.append(["parameter memory"] + [_bytes(memory[label]) if memory[label] else "not measured"
                                        for label in labels])
    cnn = [v for r in exp.done_runs("cnn") if (v := r.final("test_acc")) is not None]
    if any(points.values()) or cnn:
        ctx.figure(sec, "lattice", "final test accuracy (%) of each corner against t_w (mean ± std over seeds; "
                   "dotted: the CNN at its end) and each corner's parameter memory (MiB)",
                   lambda p: F.lattice_figure(labels, points, memory, p, title="the lattice between the CNN and the "
                                              "eFCN", cnn_final=cnn))
    sec.body.append(table(["t_w (epochs)"] + labels, rows))
    if cnn:
        sec.body.append(f"<p>The CNN trained to its end: {escape(_cell(cnn))} % test accuracy.</p>")
    sec.notes += _not_done(exp, *LATTICE_KINDS)


@_section("soft", "Soft release: accuracy against the λ schedule")
def soft_schedules(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """Runs trained with the penalty λ(t)·‖θ − Pθ‖², grouped by target, λ(0) and schedule: final test accuracy (%) at
    each switch time, mean ± std over seeds (number of seeds), beside the hard relaxation of the same target (λ =
    0) and the CNN continued from the same snapshot (the λ → ∞ limit). Left figure: λ(t) as the runs recorded it."""
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    lam: dict[str, tuple[list[float], list[float]]] = {}
    targets: set[str] = set()
    soft_runs = []
    for r in exp.runs:
        cfg = _config(r)
        if float(cfg.get("soft_lambda") or 0) <= 0 or r.t_w is None or r.auto:
            continue
        soft_runs.append(r)
        target = cfg.get("relax") or "?"
        targets.add(target)
        g = f"{target} {_soft_label(cfg)}"
        groups.setdefault(g, defaultdict(list))
        if r.status == "done" and (v := r.final("test_acc")) is not None:
            groups[g][r.t_w].append(v)
        if g not in lam:
            x = [float(m["epoch"]) for m in r.metrics if isinstance(m.get("soft_lambda"), (int, float))]
            if x:
                lam[g] = (x, [float(m["soft_lambda"]) for m in r.metrics if isinstance(m.get("soft_lambda"), (int, float))])
    if not soft_runs:
        sec.notes.append("the plan has no soft runs (the spec's soft section, or relaxed.soft_lambda > 0)")
        return
    refs: dict[str, dict[float, list[float]]] = {}
    for target in sorted(targets):
        hard: dict[float, list[float]] = defaultdict(list)
        for r in exp.runs:
            cfg = _config(r)
            if (cfg.get("relax") == target and float(cfg.get("soft_lambda") or 0) == 0 and r.t_w2 is None
                    and not r.auto and r.kind in LATTICE_KINDS and r.status == "done" and (v := r.final("test_acc")) is not None):
                hard[r.t_w].append(v)
        refs[f"{target} hard (λ = 0)"] = hard
    cont: dict[float, list[float]] = defaultdict(list)
    for r in exp.done_runs("cont"):
        if r.t_w is not None and not r.auto and (v := r.final("test_acc")) is not None:
            cont[r.t_w].append(v)
    refs["CNN continued (λ → ∞)"] = cont
    names = sorted(groups)
    tws = sorted({r.t_w for r in soft_runs} | {t for d in refs.values() for t in d})
    rows = [[g] + [_cell(groups[g].get(t)) for t in tws] for g in names]
    rows += [[name] + [_cell(d.get(t)) for t in tws] for name, d in refs.items()]
    ctx.figure(sec, "soft", "λ(t) of each soft schedule, and final test accuracy (%) against t_w per schedule with "
               "the hard relaxation and the CNN continued",
               lambda p: F.soft_figure(names, groups, lam, refs, p, title="soft release: accuracy against the schedule"))
    sec.body.append(table(["run (target λ(0) schedule)"] + [f"t_w = {t:g}" for t in tws], rows))
    for name, d in refs.items():
        if not d:
            sec.notes.append(f"no finished {name} run to compare with")
    sec.notes += [line for line in _not_done(exp, *{r.kind for r in soft_runs}) if any(r.id in line for r in soft_runs)]


@_section("lattice-distance", "Distances per corner: δ(t) and off-sharing(t)")
def lattice_distance(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """δ = ‖off-local weights‖ / ‖θ‖ (how far locality is released) and off-sharing = ‖local weights − their shared
    projection‖ / ‖θ‖ (how far sharing is released), as each run recorded them in metrics.jsonl. On the CNN
    subspace both are 0; a wide conv has off-sharing 0, an eLCN or tiled conv δ = 0. With zero padding
    off-sharing² = cnn_distance² − δ² (P_CNN projects into the local subspace)."""
    corners: dict[str, list] = defaultdict(list)
    order: dict[str, tuple] = {}
    finals: dict[tuple[str, float], list[tuple[float, float | None]]] = defaultdict(list)
    recorded = False
    for r in exp.runs:
        c = _corner(exp, r)
        if c is None or r.kind in ("cont", "attn"):  # attention: δ is 0 by construction; its own section measures it
            continue
        key, label, _ = c
        x, d = r.series("offlocal_ratio")
        if not x:
            continue
        xo, o = r.series("offsharing_ratio")
        off = dict(zip(xo, o))
        aligned = [off.get(t) for t in x]
        has = all(v is not None for v in aligned)
        recorded |= has
        order[label] = key
        corners[label].append((x, d, aligned if has else None))
        if r.status == "done" and r.t_w is not None and not r.auto:
            finals[(label, r.t_w)].append((d[-1], aligned[-1] if has else None))
    if not corners:
        sec.notes.append("no relaxed lattice run has recorded δ yet")
        return
    labels = [c for c in _lattice_points(exp)[0] if c in corners]  # the lattice's order (and colours)
    every = _lattice_points(exp)[0]
    if not recorded:
        sec.notes.append("offsharing_ratio not recorded in these runs' metrics.jsonl (the trainer records it together "
                         "with δ and cnn_distance once it has subspace_distances): the off-sharing curves are empty")
    ctx.figure(sec, "lattice_distance", "δ(t) and off-sharing(t) of every run, coloured by corner, against epochs on "
               "the CNN's clock", lambda p: F.corner_distance_figure(every, corners, p, title="distances per corner"))
    rows = []
    for (label, t), vals in sorted(finals.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        d = [a for a, _ in vals]
        o = [b for _, b in vals if b is not None]
        rows.append([label, f"{t:g}", len(vals), f"{np.mean(d):.4g}", f"{np.mean(o):.4g}" if o else "not recorded"])
    if rows:
        sec.body.append(table(["corner", "t_w (epochs)", "seeds", "final δ (mean)", "final off-sharing (mean)"], rows))


# ---- attention: the convs made self-attention, and how far they moved from them -------------------------------
_ATTN_FINALS = (("attn_offtarget", "off-target share", ".2g"), ("attn_content_share", "content share", ".2g"),
                ("attn_mean_distance", "mean distance (px)", ".3f"), ("attn_alpha_mean", "α mean", ".4g"),
                ("attn_alpha_min", "α min", ".4g"), ("attn_offset_max", "‖offset‖ max (px)", ".2g"))


@_section("attention", "Attention runs: how far each moved from its conv")
def attention(exp: ExperimentView, ctx: Ctx, sec: Section) -> None:
    """Runs that made convs positional self-attention (targets attn, attn:alpha=A,dk=K: one head per tap, exact at
    the switch up to a leak e^(−α/2)), measured at every evaluation on a fixed probe batch of test images: the
    off-target share (attention mass away from the conv's tap, δ-like: 0 on the conv), the content share
    (½‖A − A_pos‖₁), the mean distance of the attention (ConViT's nonlocality, input pixels; the conv's own at
    the switch), α and the offsets' lengths. Table: final test accuracy (%) beside the CNN continued from the
    same snapshot, and the final measures, means over seeds (number of seeds)."""
    runs = exp.of_kind("attn")
    if not runs:
        sec.notes.append("the plan has no attention runs (spec target attn, see docs/protocol.md)")
        return
    curves: dict[str, list[F.Curve]] = defaultdict(list)
    finals: dict[tuple[str, float], list[RunView]] = defaultdict(list)
    for r in runs:
        target = _config(r).get("relax") or "attn"
        x, _ = r.series("attn_offtarget")
        if x:
            vals = {k: r.series(k)[1] for k in ("attn_offtarget", "attn_content_share", "attn_mean_distance",
                                                "attn_alpha_mean", "attn_alpha_min", "attn_alpha_max",
                                                "attn_offset_mean", "attn_offset_max")}
            curves[target].append(F.Curve(kind=r.kind, seed=r.seed, t_w=r.t_w, epoch=x, values=vals))
        if r.done and r.t_w is not None and not r.auto:
            finals[(target, r.t_w)].append(r)
    labels = sorted({_config(r).get("relax") or "attn" for r in runs})
    if curves:
        ctx.figure(sec, "attention", "the attention runs' measures against epochs on the CNN's clock, coloured by "
                   "target (● = the switch)", lambda p: F.attention_figure(labels, curves, p,
                                                                          title="attention: distance from the conv"))
    else:
        sec.notes.append("no attention run has recorded its measures yet (attn_* in metrics.jsonl)")
    cont: dict[float, list[float]] = defaultdict(list)
    for r in exp.done_runs("cont"):
        if r.t_w is not None and not r.auto and (v := r.final("test_acc")) is not None:
            cont[r.t_w].append(v)
    rows = []
    for (target, t), done in sorted(finals.items()):
        acc = [v for r in done if (v := r.final("test_acc")) is not None]
        row = [target, f"{t:g}", _cell(acc), _cell(cont.get(t))]
        for key, _, spec in _ATTN_FINALS:
            vals = [v for r in done if (v := r.final(key)) is not None]
            row.append(format(float(np.mean(vals)), spec) if vals else "not recorded")
        rows.append(row)
    if rows:
        sec.body.append(table(["target", "t_w (epochs)", "final test acc (%)", "CNN continued (%)"]
                              + [name for _, name, _ in _ATTN_FINALS], rows))
    sec.notes += _not_done(exp, "attn")


# ---- the claims -------------------------------------------------------------------------------------------


def claims(exp: ExperimentView, ctx: Ctx, titles: dict[str, str]) -> Section:
    """The paper's claims, one row each, with the statistic measured here, its seeds and the verdict, the
    verdict linking to the section it is read from (``titles``: section id -> title of this page)."""
    from archrelax.analysis.claims import THRESHOLDS, evaluate_claims

    th = THRESHOLDS
    sec = Section("claims", "Claims of the paper, tested on this experiment",
                  f"Each finding of d'Ascoli et al. with the statistic that tests it on this experiment. Paired "
                  f"comparisons use the same seed's runs (mean ± sd of the per-seed differences, one-sided t-test, "
                  f"α = {th.alpha:g}, Holm-corrected where several switch times are tried); a statistical verdict "
                  f"needs {th.min_seeds} seeds. Accuracies in percentage points (pp). The rules: docs/claims.md.")
    if not exp.plan:
        sec.notes.append("no plan.json: there is no experiment to test the claims on yet")
        return sec
    try:
        found = evaluate_claims(exp.path, th)
    except Exception as e:  # the page must still render; say why the claims are absent
        sec.notes.append(f"the claims could not be evaluated: {type(e).__name__}: {e}")
        return sec
    rows = []
    for c in found:
        shown = [a for a in c.anchors if a in titles]  # a section the spec did not ask for is not on the page
        links = [f'<a href="#{escape(a)}">{escape(titles[a])}</a>' for a in shown]
        cls = "verdict-" + c.verdict.replace(" ", "-")
        word = f'<a class="verdict {cls}" href="#{escape(shown[0])}">{escape(c.verdict)}</a>' if shown \
            else f'<span class="verdict {cls}">{escape(c.verdict)}</span>'
        why = escape(c.reason) + (f"<br><em>to measure:</em> {escape(c.measure)}" if c.measure else "")
        rows.append(f'<tr id="claim-{c.number}"><td class="num">{c.number}</td><td>{escape(c.text)}</td>'
                    f'<td>{escape(c.statistic)}</td><td class="num">{c.n_seeds}</td>'
                    f'<td>{word}<div class="why">{why}</div></td><td>{"<br>".join(links) or "—"}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("#", "claim", "statistic on this experiment", "seeds",
                                             "verdict", "read from"))
    sec.body.append(f'<div class="tablewrap"><table class="claims"><thead><tr>{head}</tr></thead>'
                    f'<tbody>{"".join(rows)}</tbody></table></div>')
    counts = {v: sum(c.verdict == v for c in found) for v in ("supported", "contradicted", "not enough evidence",
                                                               "not measured")}
    sec.body.append("<p>" + escape(", ".join(f"{n} {v}" for v, n in counts.items() if n)) + "</p>")
    return sec


def requested_analyses(exp: ExperimentView) -> list[str]:
    """The analyses the page has sections for: the spec's ``analyses``, and any other whose result is in
    analysis/ (computed by hand: ``archrelax analyse --only``), in the order of the analyses' registry."""
    from archrelax.store.results import RESULT_TYPES

    listed = exp.spec.get("analyses") or []
    have = set(exp.results) | set(exp.result_problems)
    return [n for n in RESULT_TYPES if n in listed or n in have]


# kinds of run that make the lattice's sections (beyond the paper's eFCN and eLCN, which have their own)
_LATTICE_ONLY = tuple(k for k in LATTICE_KINDS if k not in PAPER_KINDS)


def build_all(exp: ExperimentView, ctx: Ctx, analysis_note: str) -> list[Section]:
    """The sections this experiment asks for: those of the kinds of run its plan holds and of the analyses its
    spec lists (or that were computed); the overview, the runs and the spec always. A section for something the
    spec never asked for would be a box of "missing" notes that are not missing."""
    kinds = {r.kind for r in exp.runs}
    analyses = requested_analyses(exp)
    by_analysis = {"distance": distance, "sharpness": sharpness, "ablation": ablation, "templates": templates,
                   "interpolation": interpolation, "memory": memory}
    secs = [overview(exp, ctx, analysis_note)]
    if kinds & {"efcn", "fcn"} or "elcn" not in kinds:  # the CNN's curves are always on the page
        secs.append(training(exp, ctx, "efcn"))
    if "elcn" in kinds:  # eLCN curves beside the eFCN ones when the plan has them
        secs.append(training(exp, ctx, "elcn"))
    secs += [final_vs_tw(exp, ctx, k) for k in ("efcn", "elcn") if k in kinds]
    if "hier" in kinds:
        secs.append(hierarchical(exp, ctx))
    if _dense_sharpness(exp):  # the CNN's rows carry λ_max: its section, whether or not the analysis is listed
        analyses = [*analyses, "sharpness"]
    secs += [by_analysis[n](exp, ctx) for n in by_analysis if n in analyses]
    secs += [runs_table(exp, ctx), spec(exp, ctx)]
    if kinds & set(_LATTICE_ONLY):
        secs.append(lattice(exp, ctx))
    if any(float(_config(r).get("soft_lambda") or 0) > 0 for r in exp.runs):
        secs.append(soft_schedules(exp, ctx))
    if kinds & set(_LATTICE_ONLY):
        secs.append(lattice_distance(exp, ctx))
    if "attn" in kinds:  # the attention runs' own measures
        secs.append(attention(exp, ctx))
    # first on the page, built last: its verdicts link to the sections above by their titles
    return [claims(exp, ctx, {s.id: s.title for s in secs})] + secs
